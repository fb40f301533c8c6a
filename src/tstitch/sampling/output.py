# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What every sampler returns: the final latents and the :class:`~tstitch.stepcount.StitchRecord` of the run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..stepcount import StitchRecord, model_name

__all__ = ["SampleOutput", "published_record"]


@dataclass
class SampleOutput:
    """The final latents and the record of the run (which model ran each step, and for how long)."""

    latents: torch.Tensor
    record: StitchRecord


def published_record(models: Sequence[Any], timesteps: Sequence[int]) -> StitchRecord:
    """An empty record for a published sampler's run over ``timesteps`` (one model call per step, in order)."""
    record = StitchRecord([model_name(m, i) for i, m in enumerate(models)])
    record.reset(len(timesteps), list(timesteps))
    return record
