# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Stable import path of what ``tstitch sample`` runs: :mod:`tstitch.experiments.generate` and the loaded
models of :mod:`tstitch.models.loaded` (no code here)."""

from .experiments.generate import GenerateResult, RunResult, SampleOptions, generate, save_images
from .models.loaded import (
    MODES,
    ClassConditionalModels,
    LoadedModels,
    SamplingDefaults,
    StitchedPipeline,
    check_controlnet_layout,
)
from .sampling.schedulers import SCHEDULERS, make_scheduler, scheduler_name

__all__ = [
    "SCHEDULERS",
    "make_scheduler",
    "scheduler_name",
    "MODES",
    "SamplingDefaults",
    "SampleOptions",
    "ClassConditionalModels",
    "StitchedPipeline",
    "LoadedModels",
    "RunResult",
    "GenerateResult",
    "generate",
    "save_images",
    "check_controlnet_layout",
]
