# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Per-step plans for the search: which model runs at each step, as a sequence of model indices.

:class:`SequencePlan` is a small stand-in with the interface :class:`~tstitch.stitcher.StitchedDenoiser`
uses (``num_models``, ``model_index``, ``assignment``, ``steps_per_model``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SequencePlan", "segments", "short_names", "plan_label", "parse_label", "single_fraction"]


# replaced by tstitch.plan.Plan.from_sequence at merge
@dataclass(frozen=True)
class SequencePlan:
    """The model index of every step, in order (its length is the step count)."""

    sequence: tuple[int, ...]
    num_models: int

    def __post_init__(self) -> None:
        if not self.sequence:
            raise ValueError("a plan needs at least one step")
        if any(not 0 <= i < self.num_models for i in self.sequence):
            raise ValueError(f"model indices must be in [0, {self.num_models}), got {list(self.sequence)}")

    @classmethod
    def from_sequence(cls, sequence: Sequence[int], num_models: int | None = None) -> SequencePlan:
        sequence = tuple(int(i) for i in sequence)
        return cls(sequence, max(sequence, default=0) + 1 if num_models is None else num_models)

    def _check(self, num_steps: int) -> None:
        if num_steps != len(self.sequence):
            raise ValueError(f"this plan has {len(self.sequence)} steps, the run has {num_steps}")

    def model_index(self, step: int, num_steps: int) -> int:
        self._check(num_steps)
        return self.sequence[min(step, len(self.sequence) - 1)]

    def assignment(self, num_steps: int) -> list[int]:
        self._check(num_steps)
        return list(self.sequence)

    def steps_per_model(self, num_steps: int) -> list[int]:
        self._check(num_steps)
        return [self.sequence.count(i) for i in range(self.num_models)]


def segments(sequence: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of one model: ``(model_index, start, stop)`` in order."""
    runs: list[tuple[int, int, int]] = []
    for step, index in enumerate(sequence):
        if runs and runs[-1][0] == index:
            runs[-1] = (index, runs[-1][1], step + 1)
        else:
            runs.append((index, step, step + 1))
    return runs


def short_names(names: Sequence[str]) -> list[str]:
    """Short labels of models: the part after the last '-' in capitals (``digits-xl`` -> ``XL``) when these
    are distinct, else ``M0, M1, ...``."""
    short = [name.rsplit("-", 1)[-1].upper() for name in names]
    ok = len(set(short)) == len(short) and all(
        s[:1].isalpha() and s.isalnum() and not s[-1].isdigit() for s in short)
    return short if ok else [f"M{i}" for i in range(len(names))]


def plan_label(sequence: Sequence[int], names: Sequence[str]) -> str:
    """``S8 > B2 > XL8 > B2`` style label (``names``: short model names)."""
    return " > ".join(f"{names[m]}{stop - start}" for m, start, stop in segments(sequence))


def parse_label(label: str, names: Sequence[str]) -> tuple[int, ...]:
    """The sequence of a label written by :func:`plan_label`."""
    sequence: list[int] = []
    for part in label.split(">"):
        match = re.fullmatch(r"\s*([A-Za-z][A-Za-z0-9]*?)(\d+)\s*", part)
        if not match or match.group(1).upper() not in [n.upper() for n in names]:
            raise ValueError(f"plan {label!r}: cannot read segment {part.strip()!r} (models: {', '.join(names)})")
        index = [n.upper() for n in names].index(match.group(1).upper())
        sequence += [index] * int(match.group(2))
    if not sequence:
        raise ValueError(f"plan {label!r} has no steps")
    return tuple(sequence)


def single_fraction(small_steps: int, num_steps: int, small: int = 0, large: int = -1,
                    num_models: int = 2) -> tuple[int, ...]:
    """T-Stitch's plan: ``small_steps`` of the small model, then the large one."""
    large = large % num_models
    return (small,) * small_steps + (large,) * (num_steps - small_steps)
