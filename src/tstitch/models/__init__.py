# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Models: the family registry, checkpoints and hub access, the preset registry, loading, fast paths."""

from .presets import PRESETS, Preset

__all__ = ["FAMILIES", "Family", "PRESETS", "Preset"]


def __getattr__(name: str):
    if name in ("FAMILIES", "Family"):  # on first use: the families import torch, the presets table does not
        from . import families

        return getattr(families, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
