# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Times that can be compared: every schedule generated in chunks, in round-robin order over the schedules.

Chunk 1 of every schedule runs, then chunk 2 of every schedule, and so on. Each schedule's time then has one
repetition per chunk, taken at moments interleaved with the other schedules' repetitions, so a slow spell of a
shared machine hits all schedules alike instead of the few that happened to run during it; and it costs
nothing beyond the samples the quality measurement needs anyway. A time is reported as the median over the
chunks with their spread (the lowest and highest chunk), and a ratio to the reference schedule as the median
of the per-chunk ratios (chunk ``c`` of a schedule over chunk ``c`` of the reference, run moments apart).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from tqdm.auto import tqdm

__all__ = ["chunk_bounds", "round_robin", "ChunkedRun", "Spread", "run_interleaved", "spread", "ratio_spread"]

S = TypeVar("S")

#: ``run_chunk(schedule, start, stop) -> (latents, seconds, model index per step)`` for samples ``start:stop``.
RunChunk = Callable[[S, int, int], tuple[torch.Tensor, float, list[int]]]


def chunk_bounds(num_samples: int, chunks: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``chunks`` consecutive parts of ``num_samples`` samples, sizes differing by at most 1."""
    if chunks < 1 or num_samples < chunks:
        raise ValueError(f"chunks must be in [1, num_samples={num_samples}], got {chunks}")
    edges = [round(i * num_samples / chunks) for i in range(chunks + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def round_robin(num_schedules: int, chunks: int) -> list[tuple[int, int]]:
    """The order of the work, as ``(chunk, schedule)`` pairs: chunk 0 of every schedule, then chunk 1, ..."""
    return [(chunk, schedule) for chunk in range(chunks) for schedule in range(num_schedules)]


@dataclass
class ChunkedRun(Generic[S]):
    """One schedule's samples (in sample order) and the seconds of each of its chunks."""

    schedule: S
    bounds: list[tuple[int, int]]
    seconds: list[float] = field(default_factory=list)
    parts: list[torch.Tensor] = field(default_factory=list)
    model_per_step: list[int] = field(default_factory=list)

    @property
    def latents(self) -> torch.Tensor:
        return torch.cat(self.parts)

    @property
    def seconds_per_image(self) -> list[float]:
        """Each chunk's seconds over its number of samples."""
        return [s / (stop - start) for s, (start, stop) in zip(self.seconds, self.bounds, strict=True)]


def run_interleaved(schedules: Sequence[S], run_chunk: RunChunk, num_samples: int, chunks: int, *,
                    progress: bool = False, desc: str = "schedules x chunks") -> list[ChunkedRun[S]]:
    """Generate ``num_samples`` samples of every schedule in ``chunks`` chunks, in :func:`round_robin` order."""
    bounds = chunk_bounds(num_samples, chunks)
    runs = [ChunkedRun(schedule, bounds) for schedule in schedules]
    for chunk, index in tqdm(round_robin(len(schedules), chunks), desc=desc, disable=not progress):
        start, stop = bounds[chunk]
        latents, seconds, per_step = run_chunk(runs[index].schedule, start, stop)
        runs[index].parts.append(latents)
        runs[index].seconds.append(seconds)
        runs[index].model_per_step = per_step
    return runs


@dataclass(frozen=True)
class Spread:
    """The median of some repetitions and their lowest and highest value."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.4g} [{self.low:.4g}, {self.high:.4g}]"


def spread(values: Sequence[float]) -> Spread:
    """Median, lowest and highest of ``values`` (at least one)."""
    if not values:
        raise ValueError("values is empty")
    return Spread(statistics.median(values), min(values), max(values))


def ratio_spread(values: Sequence[float], reference: Sequence[float]) -> Spread:
    """:func:`spread` of the paired ratios ``values[c] / reference[c]`` (repetition ``c`` of each, run
    moments apart)."""
    if len(values) != len(reference):
        raise ValueError(f"paired repetitions must be as many, got {len(values)} and {len(reference)}")
    return spread([v / r for v, r in zip(values, reference, strict=True)])
