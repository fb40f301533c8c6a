# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Whether a preset's checkpoints can be had, checked without torch: ``tstitch sample`` / ``evaluate`` run
:func:`check_preset_available` before importing torch, so a missing file is reported within a second or two.

:func:`check_available` is also what :func:`tstitch.models.loading.load_preset` runs before loading anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .hub import CheckpointNotAvailableError, download_hint, hub_cached, offline_mode
from .presets import CHECKPOINT_DIR_ENV, DEFAULT_CHECKPOINT_DIRS, ModelSource, get_preset

__all__ = [
    "checkpoint_dirs", "find_file", "is_available", "missing_message", "check_available", "check_preset_available",
]


def checkpoint_dirs(checkpoint_dir: str | os.PathLike | None) -> list[Path]:
    """The folders searched for checkpoint files, in order."""
    dirs = [Path(checkpoint_dir).expanduser()] if checkpoint_dir else []
    if os.environ.get(CHECKPOINT_DIR_ENV):
        dirs.append(Path(os.environ[CHECKPOINT_DIR_ENV]).expanduser())
    dirs += [Path(d) for d in DEFAULT_CHECKPOINT_DIRS]
    return dirs


def find_file(source: ModelSource, dirs: list[Path]) -> Path | None:
    """The first of ``source.files`` found in ``dirs``, if any."""
    for folder in dirs:
        for name in source.files:
            if (folder / name).is_file():
                return folder / name
    return None


def is_available(source: ModelSource, dirs: list[Path], offline: bool) -> bool:
    """Whether ``source`` can be had: embedded, a file in ``dirs``, or a hub model (cached, or the hub is on)."""
    if source.zoo or find_file(source, dirs) is not None:
        return True
    return bool(source.hub) and (not offline or any(hub_cached(h) for h in source.hub))


def missing_message(source: ModelSource, dirs: list[Path], offline: bool, position: str) -> str:
    """What is missing of ``source`` and every way to provide it."""
    searched = ", ".join(str(d) for d in dirs)
    ways = []
    if source.hub:
        ids = " or ".join(repr(h) for h in source.hub)
        state = "not in the local Hugging Face cache, and the hub is off (HF_HUB_OFFLINE=1 or local_files_only)"
        ways.append(f"{ids} is {state}: download it once with network access ({download_hint(source.hub[0])})")
    if source.files:
        names = " / ".join(source.files)
        where = f" from {source.url}" if source.url else ""
        how = f"pass --checkpoint-dir DIR (or set {CHECKPOINT_DIR_ENV}; searched now: {searched})"
        if source.hub:
            ways.append(f"or download the file {names}{where} and {how}")
        else:
            note = f" ({source.note})" if source.note else ""
            ways.append(f"no file {names} was found{note}: download it{where} and {how}")
    if position == "--vae":
        ways.append("or pass a local VAE folder (or first-stage .ckpt file) with --vae PATH")
    else:
        ways.append("or give local copies of all the models with --model PATH, smallest first")
    return f"{source.label}: " + "; ".join(ways)


def check_available(sources: Sequence[tuple[ModelSource, str]], dirs: list[Path], offline: bool,
                     what: str) -> None:
    """Raise :class:`CheckpointNotAvailableError` naming every source that cannot be had, before loading."""
    missing = [missing_message(source, dirs, offline, position) for source, position in sources
               if not is_available(source, dirs, offline)]
    if missing:
        raise CheckpointNotAvailableError(f"{what} cannot be loaded:\n  - " + "\n  - ".join(missing))


def check_preset_available(name: str, *, checkpoint_dir: str | os.PathLike | None = None,
                           local_files_only: bool | None = None, vae: str | None = None) -> None:
    """Raise :class:`CheckpointNotAvailableError` naming every file or hub model of preset ``name`` that
    cannot be had (``ValueError`` for an unknown preset). Imports no torch."""
    preset = get_preset(name)
    offline = offline_mode(local_files_only)
    named = [(source, f"--model #{i + 1}") for i, source in enumerate(preset.models)]
    if vae is None and preset.vae is not None:
        named.append((preset.vae, "--vae"))
    label = f"preset {name!r}"
    check_available(named, checkpoint_dirs(checkpoint_dir), offline, f"{label} (offline)" if offline else label)
