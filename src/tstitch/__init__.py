# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""tstitch: trajectory stitching (T-Stitch) for diffusion sampling.

A small model runs the first, noisy fraction of the denoising steps and the large model the rest::

    import tstitch
    tstitch.stitch(pipe, small, 0.4)   # any diffusers pipeline, any scheduler
    tstitch.enable_cache(pipe, "first-block:0.05")   # feature caching on the large model (tstitch.caching)
    tstitch.unstitch(pipe)
"""

from .plan import Plan
from .planfile import load_plan, save_plan

__version__ = "0.1.0"

# Loaded on first use: they import torch or diffusers, which ``import tstitch`` (and ``tstitch --help`` or a
# missing-checkpoint error) does not need.
_LAZY = {
    **{name: "stitcher" for name in ("StitchedDenoiser", "StitchRecord", "get_record", "get_stitch", "stitch",
                                     "unstitch")},
    "SampleOutput": "sampling",
    "sample": "sampling",
    "save_stitch": "stitchfile",
    "load_stitch": "stitchfile",
    "load_dit": "models.checkpoints",
    "sample_official": "sampling.official",
    "load_preset": "models.loading",
    "HybridDenoiser": "regions",
    **{name: "caching" for name in ("enable_cache", "disable_cache", "get_cache_record")},
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "stitch",
    "unstitch",
    "get_record",
    "get_stitch",
    "save_plan",
    "load_plan",
    "save_stitch",
    "load_stitch",
    "sample",
    "SampleOutput",
    "Plan",
    "StitchedDenoiser",
    "StitchRecord",
    "load_dit",
    "sample_official",
    "load_preset",
    "enable_cache",
    "disable_cache",
    "get_cache_record",
    "HybridDenoiser",
]
