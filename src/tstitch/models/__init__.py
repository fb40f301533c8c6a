# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Models: the family registry, checkpoints and hub access, the preset registry, loading, fast paths."""

from .families import FAMILIES, Family
from .presets import PRESETS, Preset

__all__ = ["FAMILIES", "Family", "PRESETS", "Preset"]
