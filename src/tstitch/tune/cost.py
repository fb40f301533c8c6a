# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""A measured cost model: seconds per denoising step of each model on this device.

Each model's forward pass is timed at the run's batch size, precision and guidance (a doubled batch with
guidance), the models interleaved within every repetition so that a slow spell of a shared machine hits
all of them alike; the median of the repetitions is kept. A plan's predicted cost is the sum over its
steps, reported relative to the large model alone at the reference step count.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["CostModel", "measure_step_costs"]


@dataclass(frozen=True)
class CostModel:
    """Median seconds of one step of each model (smallest first), and what they were measured at."""

    seconds_per_step: tuple[float, ...]
    batch_size: int
    guidance_scale: float
    dtype: str
    device: str
    repetitions: int

    def plan_seconds(self, sequence: Sequence[int]) -> float:
        """Predicted seconds of one batch of the plan (model calls only)."""
        return sum(self.seconds_per_step[i] for i in sequence)

    def relative(self, sequence: Sequence[int], reference_steps: int) -> float:
        """Predicted time of the plan over the large model alone at ``reference_steps`` steps."""
        return self.plan_seconds(sequence) / (self.seconds_per_step[-1] * reference_steps)

    def switched(self, start_model: int, switch_steps: Sequence[int], num_steps: int, reference_steps: int) -> float:
        """Predicted relative time of an adaptive two-model run: each sample runs model ``start_model`` (0: the
        smallest, 1: the large one) for its switch step's count of steps and the other model for the rest; the
        mean over the samples, over the large model alone at ``reference_steps``."""
        first, other = (self.seconds_per_step[0], self.seconds_per_step[-1])[::1 if start_model == 0 else -1]
        mean_switch = sum(switch_steps) / len(switch_steps)
        seconds = mean_switch * first + (num_steps - mean_switch) * other
        return seconds / (self.seconds_per_step[-1] * reference_steps)

    def step_ratios(self) -> list[float]:
        """Each model's step time over the large model's."""
        return [s / self.seconds_per_step[-1] for s in self.seconds_per_step]

    def as_dict(self) -> dict:
        return {**asdict(self), "step_ratios": self.step_ratios()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_step_costs(models: Sequence[nn.Module], sample_shape: Sequence[int], *, batch_size: int,
                       num_classes: int | None = None, guidance_scale: float = 1.0, repetitions: int = 5,
                       device: str | torch.device = "cpu", progress: bool = False) -> CostModel:
    """Time one forward pass of each model at ``batch_size`` (doubled when ``guidance_scale > 1``),
    interleaved over ``repetitions`` after one warm-up round; keep each model's median."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    rows = batch_size * (2 if guidance_scale > 1 else 1)
    dtype = next(models[-1].parameters()).dtype
    x = torch.randn(rows, *sample_shape, device=device, dtype=dtype)
    timestep = torch.full((rows,), 500, device=device, dtype=torch.long)
    labels = None if not num_classes else torch.arange(rows, device=device) % num_classes
    kwargs = {"timestep": timestep} | ({"class_labels": labels} if labels is not None else {})
    times: list[list[float]] = [[] for _ in models]
    for repetition in tqdm(range(repetitions + 1), desc="timing models", disable=not progress, leave=False):
        for index, model in enumerate(models):
            _sync(device)
            begin = time.perf_counter()
            model(x, **kwargs)
            _sync(device)
            if repetition:  # the first round warms up
                times[index].append(time.perf_counter() - begin)
    medians = tuple(statistics.median(t) for t in times)
    logger.info("seconds per step at batch %d: %s", batch_size, ", ".join(f"{s:.4f}" for s in medians))
    return CostModel(medians, batch_size, guidance_scale, str(dtype).replace("torch.", ""), str(device),
                     repetitions)
