# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Stable import path of the presets: the table (:mod:`tstitch.models.presets`) and loading
(:mod:`tstitch.models.loading`); no code here."""

from .models.hub import CheckpointNotAvailableError
from .models.loading import detect_kind, load_models, load_preset
from .models.presets import DIT_LATENT_SCALE, DIT_VAE, PRESETS, ModelSource, Preset, describe_presets, get_preset

__all__ = [
    "ModelSource",
    "Preset",
    "PRESETS",
    "get_preset",
    "load_preset",
    "load_models",
    "detect_kind",
    "describe_presets",
    "CheckpointNotAvailableError",
    "DIT_VAE",
    "DIT_LATENT_SCALE",
]
