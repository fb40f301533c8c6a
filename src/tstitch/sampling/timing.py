# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Wall-clock timing with CUDA synchronised, and the warm-up plan: written once for every runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["synchronize", "timed", "Stopwatch", "warm_up", "warmup_fractions"]

T = TypeVar("T")


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (CUDA only; a no-op elsewhere)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device | str | None) -> tuple[float, T]:
    """``(seconds, fn())``: the wall-clock time of ``fn`` with ``device`` synchronised before and after."""
    with Stopwatch(device) as watch:
        output = fn()
    return watch.seconds, output


class Stopwatch:
    """``with Stopwatch(device) as w: ...`` adds the block's synchronised wall-clock time to ``w.seconds``."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start


def warm_up(run: Callable[[], Any], device: torch.device | str | None = None, passes: int = 1) -> list[float]:
    """Untimed warm-up: ``run()`` ``passes`` times (one-off costs such as allocation, kernel selection and
    compilation stay out of the timings that follow). Returns each pass's synchronised seconds (with
    ``torch.compile`` on, the first pass minus the second is the compile time)."""
    return [timed(run, device)[0] for _ in range(passes)]


def warmup_fractions(num_models: int) -> tuple[float, ...]:
    """All models' shares for a warm-up run of ``max(num_models, 2)`` steps in which every model takes one
    step (by step count, and by timestep for the published sampler, whose DDPM needs two steps)."""
    k = num_models
    return (1.0 / k,) * (k - 1) + (1.0 - (k - 1) / k,)
