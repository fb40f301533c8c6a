# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Stitched sampling of many samples in batches, timed: what the demo, ``tstitch evaluate`` and the benchmarks
run (each batch through :func:`tstitch.sample`, with the optional feature caches of :mod:`tstitch.caching`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..caching import cached
from ..plan import Plan
from ..sampling import Stopwatch, sample
from ..sampling.checks import check_noise, check_positive_int
from ..stitcher import StitchedDenoiser

__all__ = ["sample_batches"]


def sample_batches(
    models: Sequence[nn.Module],
    fractions: Sequence[float] | Plan,
    scheduler_factory: Callable[[], Any],
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int,
    guidance_scale: float,
    batch_size: int,
    progress: bool = False,
    generators: Sequence[torch.Generator] | None = None,
    cache: Any = None,
    switch_steps: list[int] | None = None,
    records: list[Any] | None = None,
) -> tuple[torch.Tensor, float, list[int]]:
    """Stitched sampling of all of ``noise`` in batches of ``batch_size``, timed (CUDA synchronised).

    ``generators``: one per sample, for stochastic schedulers (each sample's step noise then depends on
    its own generator only, not on the batch it is in). ``cache``: per-model caches, as
    :func:`tstitch.caching.enable_cache` takes them (applied for each batch, taken off after it).
    ``switch_steps``: an adaptive plan's switch step of every sample is appended to this list, in order.
    ``records``: each batch's :class:`~tstitch.stepcount.StitchRecord` is appended to this list, in order.

    Returns the latents, the wall-clock seconds of the sampling (model calls and scheduler steps), and
    the model index of each step.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    check_noise(noise)
    if len(labels) != len(noise):
        raise ValueError(f"got {len(labels)} labels for {len(noise)} noise samples")
    if generators is not None and len(generators) != len(noise):
        raise ValueError(f"got {len(generators)} generators for {len(noise)} noise samples (one per sample)")
    outputs, watch, per_step = [], Stopwatch(noise.device), []
    plan = fractions if isinstance(fractions, Plan) else list(fractions)
    for start in range(0, len(noise), batch_size):
        batch_noise, batch_labels = noise[start : start + batch_size], labels[start : start + batch_size]
        generator = None if generators is None else list(generators[start : start + batch_size])
        scheduler = scheduler_factory()
        with cached(StitchedDenoiser(list(models), plan), cache or {}) as denoiser, watch:
            result = sample(
                denoiser, plan, scheduler, noise=batch_noise, class_labels=batch_labels,
                num_inference_steps=num_steps, guidance_scale=guidance_scale, progress=progress,
                generator=generator,
            )
        outputs.append(result.latents)
        per_step = result.record.model_per_step()
        if switch_steps is not None and result.record.switch_steps is not None:
            switch_steps += result.record.switch_steps
        if records is not None:
            records.append(result.record)
    return torch.cat(outputs), watch.seconds, per_step
