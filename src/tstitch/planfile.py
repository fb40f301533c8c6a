# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""A :class:`~tstitch.plan.Plan` as a small JSON file: its dict form, :func:`save_plan` and :func:`load_plan`.

The file is what ``tstitch tune --out`` writes (``plan.json``) and what every command's ``--plan`` reads::

    {"version": 1, "num_models": 2, "names": ["S", "XL"], "sequence": [0, 0, 1, 1]}
    {"version": 1, "num_models": 2, "fractions": [0.4, 0.6]}
    {"version": 1, "num_models": 2, "adaptive": {"direction": "small-first", "threshold": 0.15,
                                                 "min_switch": 0.2, "max_switch": 0.6, "signal": "x0-change"}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .adaptive import AdaptiveRule
from .plan import Plan, check_count
from .utils import atomic_write

__all__ = ["plan_to_dict", "plan_from_dict", "plan_from_json", "save_plan", "load_plan", "PLAN_VERSION"]

PLAN_VERSION = 1
_FIELDS = {"version", "num_models", "names", "fractions", "sequence", "adaptive"}


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The JSON-ready form of ``plan``."""
    data: dict[str, Any] = {"version": PLAN_VERSION, "num_models": plan.num_models}
    if plan.names is not None:
        data["names"] = list(plan.names)
    if plan.adaptive is not None:
        data["adaptive"] = plan.adaptive.to_dict()
    elif plan.fractions is not None:
        data["fractions"] = list(plan.fractions)
    else:
        data["sequence"] = list(plan.sequence)
    return data


def plan_from_dict(data: Any, num_steps: int | None = None) -> Plan:
    """The plan of :func:`plan_to_dict`'s form; ``num_steps`` also checks a per-step plan's length."""
    if not isinstance(data, dict):
        raise ValueError(f"a plan must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown plan field(s) {unknown}")
    if data.get("version") != PLAN_VERSION:
        raise ValueError(f"version must be {PLAN_VERSION}, got {data.get('version')!r}")
    num_models = check_count(data.get("num_models"), "num_models", 1)
    names = data.get("names")
    if names is not None and not isinstance(names, list):
        raise ValueError(f"names must be a list of strings, got {names!r}")
    if sum(key in data for key in ("fractions", "sequence", "adaptive")) != 1:
        raise ValueError("a plan needs exactly one of the fields fractions and sequence (or adaptive)")
    if "adaptive" in data:
        plan = Plan(adaptive=AdaptiveRule.from_dict(data["adaptive"]), model_count=num_models, names=names)
    elif "fractions" in data:
        fractions = data["fractions"]
        if not isinstance(fractions, list) or len(fractions) != num_models:
            raise ValueError(f"fractions must be a list of {num_models} numbers (num_models), got {fractions!r}")
        if any(isinstance(f, (bool, str)) for f in fractions):
            raise ValueError(f"fractions must be numbers, got {fractions!r}")
        plan = Plan(tuple(fractions), names=names)
    else:
        sequence = data["sequence"]
        if not isinstance(sequence, list):
            raise ValueError(f"sequence must be a list of model indices, got {sequence!r}")
        plan = Plan.from_sequence(sequence, num_models, names)
    if num_steps is not None and plan.sequence is not None and len(plan.sequence) != num_steps:
        raise ValueError(f"sequence has {len(plan.sequence)} steps, but num_steps is {num_steps}")
    return plan


def plan_from_json(text: str, num_steps: int | None = None) -> Plan:
    """The plan of a JSON text (``ValueError`` for text that is not a plan)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"plan is not valid JSON: {error}") from None
    return plan_from_dict(data, num_steps)


def save_plan(plan: Plan, path: str | os.PathLike) -> Path:
    """Write ``plan`` as JSON to ``path`` (atomically; an existing file is never overwritten)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"path {path} exists; not overwriting it")
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(plan_to_dict(plan), indent=2) + "\n"))


#: The most steps a per-step plan may have: what every command's --steps allows (and the schedulers' 1,000
#: training timesteps).
MAX_PLAN_STEPS = 1000
#: The largest plan file read: a plan of 1,000 steps is under 10 KB.
MAX_PLAN_BYTES = 1_000_000


def _plan_file(path: Path) -> Path:
    """``path``, or the ``plan.json`` of a folder, once it is a plain file of a plan's size: a FIFO (which would
    block the reader), a device, a loop of links or a name too long are refused by name, without opening it."""
    from .outputs import path_problem

    problem = path_problem(path)
    if problem is not None:
        raise ValueError(f"plan file {problem}")
    if path.is_dir():
        if not (path / "plan.json").is_file():
            raise FileNotFoundError(f"{path} is a folder without plan.json; give a plan file")
        path = path / "plan.json"
    if not path.exists():
        raise FileNotFoundError(f"plan file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"plan file {path} is not a plain file (a FIFO, a device ...)")
    size = path.stat().st_size
    if size > MAX_PLAN_BYTES:
        raise ValueError(f"plan file {path} is {size:,} bytes, more than any plan ({MAX_PLAN_BYTES:,} at most)")
    return path


def load_plan(path: str | os.PathLike, num_steps: int | None = None) -> Plan:
    """Read a plan written by :func:`save_plan` (``num_steps`` also checks a per-step plan's length). A folder
    means its ``plan.json`` (what ``tstitch tune --out`` writes). Refused (``ValueError``, naming the file):
    anything but a plain file under 1 MB, JSON nested too deeply, a per-step plan of more than 1,000 steps."""
    path = _plan_file(Path(path))
    try:
        plan = plan_from_json(path.read_text(), num_steps)
    except RecursionError:
        raise ValueError(f"{path}: not a plan (JSON nested too deeply)") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a plan (not UTF-8 text: {error.reason})") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if plan.sequence is not None and len(plan.sequence) > MAX_PLAN_STEPS:
        raise ValueError(f"{path}: sequence has {len(plan.sequence):,} steps; a plan has at most {MAX_PLAN_STEPS:,} "
                         "(the most steps a command runs)")
    return plan
