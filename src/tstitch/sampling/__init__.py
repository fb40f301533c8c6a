# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Sampling: the one loop (:func:`denoise`, :func:`sample`), classifier-free guidance, the scheduler
registry, timing, the published DiT and LDM samplers (:mod:`tstitch.sampling.official`,
:mod:`tstitch.sampling.ldm_official`) and the LDM model wrappers (:mod:`tstitch.sampling.ldm_models`)."""

from .guidance import Guidance, guided_output, num_classes_of, unwrap_output
from .ldm_models import ClassConditionedUNet, ClassEmbedder
from .loop import StepCallback, denoise, sample
from .output import SampleOutput
from .schedulers import SCHEDULERS, SchedulerKind, make_scheduler, scheduler_factory, scheduler_name
from .timing import Stopwatch, synchronize, timed

__all__ = [
    "denoise",
    "sample",
    "SampleOutput",
    "StepCallback",
    "Guidance",
    "guided_output",
    "num_classes_of",
    "unwrap_output",
    "SCHEDULERS",
    "SchedulerKind",
    "make_scheduler",
    "scheduler_factory",
    "scheduler_name",
    "Stopwatch",
    "synchronize",
    "timed",
    "ClassConditionedUNet",
    "ClassEmbedder",
]
