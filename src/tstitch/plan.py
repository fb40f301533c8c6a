# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Which model runs at which denoising step: pure Python, no torch.

A schedule is a tuple of fractions, one per model, ordered by use (smallest model first, the large model
last). The last fraction is always the remainder ``1 - sum(others)``.

Step counting follows the published T-Stitch code: with ``N`` scheduler steps and cumulative fractions
``c_0 = 0, c_1, c_2, ...``, model ``i`` covers the steps
``[floor(c_i * N + 1e-6), floor(c_{i+1} * N + 1e-6))``.
So 0.4 of 10 steps is 4 steps and 0.29 of 100 steps is 29 steps; the large model always finishes the
trajectory.

The published DiT sampler instead decides by timestep (:func:`model_index_for_timestep`); both rules agree
for evenly spaced timesteps in the common cases.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Plan", "model_index_for_timestep"]

_EPS = 1e-6


def is_scalar(value: object) -> bool:
    """Whether ``value`` is one fraction (a number, a numpy or 0-d torch scalar), not a list of them."""
    return isinstance(value, (numbers.Real, str)) or getattr(value, "ndim", None) == 0


def _check_fraction(value: float, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


@dataclass(frozen=True)
class Plan:
    """Shares of the denoising steps, one per model, smallest model first.

    Build it with :meth:`from_small_fractions` from the shares of the small models; the last (large)
    model takes what remains.
    """

    fractions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.fractions) < 1:
            raise ValueError("a schedule needs at least one model")
        checked = tuple(_check_fraction(f, f"fractions[{i}]") for i, f in enumerate(self.fractions))
        if abs(sum(checked) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {checked} (sum {sum(checked):.6g})")
        object.__setattr__(self, "fractions", checked)

    @classmethod
    def from_small_fractions(cls, small_fractions: float | Sequence[float]) -> Plan:
        """Allocation from the shares of the small models (a float or one per small model)."""
        if is_scalar(small_fractions):
            small_fractions = [small_fractions]
        small = [_check_fraction(f, f"fractions[{i}]") for i, f in enumerate(small_fractions)]
        total = sum(small)
        if total > 1.0 + _EPS:
            raise ValueError(f"fractions {tuple(small)} sum to {total:.6g}, more than 1")
        return cls((*small, max(0.0, 1.0 - total)))

    @property
    def num_models(self) -> int:
        return len(self.fractions)

    @property
    def small_fractions(self) -> tuple[float, ...]:
        """The shares of every model but the last."""
        return self.fractions[:-1]

    def boundaries(self, num_steps: int) -> list[int]:
        """First step of each model, plus ``num_steps`` at the end (length ``num_models + 1``)."""
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        bounds = [0]
        cumulative = 0.0
        for fraction in self.small_fractions:
            cumulative += fraction
            bounds.append(min(num_steps, math.floor(cumulative * num_steps + _EPS)))
        bounds.append(num_steps)
        return bounds

    def model_index(self, step: int, num_steps: int) -> int:
        """Index of the model that runs scheduler step ``step`` (0-based) of ``num_steps``."""
        bounds = self.boundaries(num_steps)
        for index in range(self.num_models - 1, -1, -1):
            if step >= bounds[index]:
                return index
        return 0

    def assignment(self, num_steps: int) -> list[int]:
        """The model index of every step, in order."""
        bounds = self.boundaries(num_steps)
        return [i for i in range(self.num_models) for _ in range(bounds[i + 1] - bounds[i])]

    def steps_per_model(self, num_steps: int) -> list[int]:
        bounds = self.boundaries(num_steps)
        return [bounds[i + 1] - bounds[i] for i in range(self.num_models)]

    def __str__(self) -> str:
        return " -> ".join(f"{f:g}" for f in self.fractions)


def model_index_for_timestep(fractions: Sequence[float], t: int, num_train_timesteps: int) -> int:
    """The published DiT/T-Stitch rule: model by training timestep ``t`` rather than by step count.

    With progress ``p = 1 - t / T``, the model used is the first ``i`` whose cumulative fraction is at
    least ``p``. For two models this is "the small model runs while ``t / T >= 1 - r``".
    """
    if len(fractions) == 2:  # written as the published two-model rule, so float ties resolve the same way
        return 0 if t / num_train_timesteps >= 1.0 - fractions[0] else 1
    progress = 1.0 - t / num_train_timesteps
    cumulative = 0.0
    for index, fraction in enumerate(fractions):
        cumulative += fraction
        if cumulative >= progress:
            return index
    return len(fractions) - 1
