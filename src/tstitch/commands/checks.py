# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""argparse types shared by the subcommands: every value is checked while parsing, so a bad flag ends with
exit code 2 and a message naming it (``argument --steps: must be an integer >= 1, got 0``) before any work."""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["integer", "real", "text", "SEED", "SEED_MAX", "device", "out_folder", "existing_folder", "existing_file",
           "existing_path", "plan_file", "unknown_name", "one_of", "Unique", "add_overwrite"]

#: Seeds are 63-bit non-negative integers (torch generators take 64 bits; seed + 1 must still fit).
SEED_MAX = 2**63 - 1


def integer(low: int, high: int | None = None, *, shown: str | None = None) -> Callable[[str], int]:
    """An int in ``[low, high]`` (``shown``: how the message writes ``high``)."""
    allowed = f">= {low}" if high is None else f"in [{low}, {shown or high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def real(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in ``[low, high]`` (``(low, high]`` with ``low_open``): NaN and infinities refused."""
    allowed = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {allowed}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number in {allowed}, got {text}")
        if value < low or value > high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"must be in {allowed}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


SEED = integer(0, SEED_MAX, shown="2**63 - 1")


def device(*, allow_auto: bool = False) -> Callable[[str], str]:
    """A torch device name that this machine has (``cuda`` on a machine without CUDA is refused)."""

    def parse(text: str) -> str:
        if text == "cpu" or (allow_auto and text == "auto"):
            return text  # every machine has a CPU: no need to import torch to say so
        import torch

        try:
            parsed = torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps ...)") from None
        if parsed.type == "cuda":
            if not torch.cuda.is_available():
                raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine; use --device cpu")
            if parsed.index is not None and parsed.index >= torch.cuda.device_count():
                raise argparse.ArgumentTypeError(
                    f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        elif parsed.type == "mps" and not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine; use --device cpu")
        elif parsed.type not in ("cpu", "cuda", "mps"):
            raise argparse.ArgumentTypeError(f"{text}: tstitch runs on cpu, cuda or mps")
        return text

    parse.__name__ = "device"
    return parse


def _path(text: str) -> Path:
    """``Path(text)``, once the system can look it up: a path too long or a loop of links is refused by name
    (``Path.exists`` would raise, or call a loop missing)."""
    from ..outputs import path_problem

    problem = path_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def out_folder(text: str) -> str:
    """An output folder: not empty, not an existing file, a UTF-8 name that leaves room for the files inside."""
    from ..outputs import output_path_problem

    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name a folder (e.g. outputs/run); '.' for this folder")
    problem = output_path_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    if _path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def text(value: str) -> str:
    """A non-empty text (a prompt)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty")
    return value


def existing_folder(text: str) -> str:
    path = _path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give the folder that holds it")
    return text


def existing_file(text: str) -> str:
    path = _path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a plain file (a FIFO, a device ...)"
        raise argparse.ArgumentTypeError(f"{text} is {kind}; give a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{text} cannot be read ({error.strerror})") from None
    return text


def existing_path(text: str) -> str:
    """A file or a folder that exists and can be read."""
    path = _path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return existing_file(text) if path.is_file() else text


def plan_file(text: str) -> Any:
    """A :class:`tstitch.plan.Plan` read from a JSON file, or from the ``plan.json`` of a folder
    (``tstitch tune --out``'s)."""
    from ..planfile import load_plan

    if not _path(text).is_dir():
        existing_file(text)
    try:
        return load_plan(text)
    except FileNotFoundError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a tstitch plan: {error}") from None


#: A per-step plan's text form with model names, read once the models' short names are known: ``XL8 > H8 > S9``.
_PLAN_TEXT = re.compile(r"\s*[A-Za-z][A-Za-z0-9]*?\d+(\s*>\s*[A-Za-z][A-Za-z0-9]*?\d+)*\s*")


def plan_option(text: str) -> Any:
    """``--plan``: an adaptive plan's text (a :class:`tstitch.plan.Plan`), a per-step plan's text with the models'
    short names (``XL8 > H8 > S9``, kept as text until the models are known), or a plan file (:func:`plan_file`)."""
    from ..plan import Plan

    if text.strip().startswith("adaptive("):
        try:
            return Plan.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"not an adaptive plan: {error}") from None
    if _PLAN_TEXT.fullmatch(text) and not _path(text).exists():
        return text.strip()
    return plan_file(text)


def cache_option(text: str) -> str:
    """``--cache [MODEL=]SPEC``: the spec checked while parsing (``argument --cache: 'bogus' is not one of ...``);
    the model name is checked once the models are loaded."""
    from ..caching import parse_cache_spec

    try:
        parse_cache_spec(text.split("=", 1)[-1])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("cache spec ")) from None
    return text


def unknown_name(what: str, value: str, known: Iterable[str]) -> str:
    """``unknown scheduler 'ddmi' (did you mean 'ddim'?); known: ...``."""
    known = list(known)
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {value!r}{hint}; known: {', '.join(known)}"


def one_of(what: str, known: Sequence[str], normalize: Callable[[str], str] | None = None) -> Callable[[str], str]:
    """A name from ``known`` (``normalize`` maps aliases to it, raising ``ValueError`` when unknown)."""

    def parse(text: str) -> str:
        if normalize is not None:
            try:
                return normalize(text)
            except ValueError:
                pass
        elif text in known:
            return text
        raise argparse.ArgumentTypeError(unknown_name(what, text, known))

    parse.__name__ = what
    return parse


class Unique(argparse.Action):
    """A list flag (``nargs="+"``) whose values must all differ."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen: list = []
        for value in values:
            if value in seen:
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                parser.error(f"argument {option_string}: {shown} is given more than once")
            seen.append(value)
        setattr(namespace, self.dest, values)


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out that tstitch did not write (default: refuse them before any work; "
                        "see docs/refused-inputs.md)")
