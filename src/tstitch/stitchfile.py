# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Saving a stitch (its small models and its plan) and putting it back on a pipeline.

``pipe.save_pretrained`` on a stitched pipeline writes the large model's pipeline only (the small models are
not part of it); :func:`save_stitch` writes the rest into a folder of its own::

    stitch.json      {"version": 1, "plan": {...}, "models": [{"path": "model_0", "class": "DiTTransformer2DModel",
                      "name": "DiT-S"}, ...]}
    model_0/         the first small model, as written by its save_pretrained (safetensors)

:func:`load_stitch` reads it back (diffusers model classes only) and stitches a pipeline with it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .planfile import plan_from_dict, plan_to_dict
from .stitcher import get_stitch, stitch

__all__ = ["save_stitch", "load_stitch", "STITCH_FILE"]

STITCH_FILE = "stitch.json"
_VERSION = 1


def save_stitch(pipe_or_denoiser: Any, directory: str | os.PathLike) -> Path:
    """Write the small models and the plan of a stitched pipeline into ``directory`` (a new folder)."""
    denoiser = get_stitch(pipe_or_denoiser)
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"directory {directory} exists; not overwriting it (give a new folder)")
    smalls = list(denoiser.models)[:-1]
    for i, model in enumerate(smalls):
        if not hasattr(model, "save_pretrained"):
            raise ValueError(
                f"models[{i}] ({type(model).__name__}) has no save_pretrained: only diffusers models can be saved"
            )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        entries = []
        for i, model in enumerate(smalls):
            model.save_pretrained(tmp / f"model_{i}", safe_serialization=True)
            name = denoiser.record.model_names[i]
            entries.append({"path": f"model_{i}", "class": type(model).__name__, "name": name})
        data = {"version": _VERSION, "plan": plan_to_dict(denoiser.plan), "models": entries}
        (tmp / STITCH_FILE).write_text(json.dumps(data, indent=2) + "\n")
        os.rename(tmp, directory)  # the folder appears complete or not at all
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def load_stitch(pipe: Any, directory: str | os.PathLike, *, sync_timing: bool = False) -> Any:
    """Stitch ``pipe`` with the small models and plan saved by :func:`save_stitch`; returns ``pipe``."""
    import diffusers

    directory = Path(directory)
    path = directory / STITCH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {directory} is not a folder written by save_stitch")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    version = data.get("version") if isinstance(data, dict) else None
    if version != _VERSION:
        raise ValueError(f"{path}: version must be {_VERSION}, got {version!r}")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: models must be a non-empty list, got {entries!r}")
    plan = plan_from_dict(data.get("plan"))
    models = []
    for i, entry in enumerate(entries):
        cls = getattr(diffusers, str(entry.get("class")), None) if isinstance(entry, dict) else None
        if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
            raise ValueError(f"{path}: models[{i}].class must name a diffusers model class, got {entry!r}")
        model_dir = (directory / str(entry.get("path"))).resolve()
        if directory.resolve() not in model_dir.parents or not model_dir.is_dir():
            raise ValueError(f"{path}: models[{i}].path must be a folder inside {directory}, got {entry.get('path')!r}")
        model = cls.from_pretrained(model_dir)
        if entry.get("name") and entry["name"] != f"{cls.__name__}[{i}]":
            model._tstitch_name = entry["name"]
        models.append(model.eval())
    return stitch(pipe, models, plan, sync_timing=sync_timing)
