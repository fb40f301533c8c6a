# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Which model runs at which denoising step: pure Python, no torch.

A plan is one of two kinds, over ``N`` models numbered by use (smallest first, the large model last):

* **fractions** (the default and the published convention): one share per model, the last being the
  remainder ``1 - sum(others)``, resolved for any step count. With ``n`` scheduler steps and cumulative
  fractions ``c_0 = 0, c_1, ...``, model ``i`` covers the steps ``[floor(c_i * n + 1e-6), floor(c_{i+1} * n + 1e-6))``,
  so 0.4 of 10 steps is 4 steps and 0.29 of 100 steps is 29 steps.
* **a per-step sequence**: the model index of every step, for one fixed step count, in any order
  (``S > XL > B``, large-first, ...). Build it with :meth:`Plan.from_sequence`, :meth:`Plan.from_segments`
  or :meth:`Plan.parse` (its text form).

Plans print compactly (``0.4 -> 0.6`` or ``0x8 > 1x12``, ``S8 > XL12`` with names); :mod:`tstitch.planfile`
saves them as a small JSON file. :meth:`Plan.coerce` is the one way a plan, a fraction or a list of fractions
becomes a plan.

The published DiT and LDM samplers decide by timestep instead (:meth:`Plan.model_at_timestep`); both rules
agree for evenly spaced timesteps in the common cases.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .adaptive import AdaptiveRule

__all__ = ["Plan", "check_count"]

_EPS = 1e-6


def _is_scalar(value: object) -> bool:
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


def check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Plan:
    """Which model runs each scheduler step: shares of the steps (``fractions``), a per-step ``sequence``, or
    an ``adaptive`` rule that picks each sample's switch step during the run (:mod:`tstitch.adaptive`).

    Build it with :meth:`from_small_fractions` (the small models' shares; the last, large model takes what
    remains), :meth:`from_sequence`, :meth:`from_segments` or ``Plan(adaptive=AdaptiveRule(...))``. ``names``
    (optional, one per model) only label it.
    """

    fractions: tuple[float, ...] | None = None
    sequence: tuple[int, ...] | None = None
    model_count: int | None = None
    names: tuple[str, ...] | None = None
    adaptive: AdaptiveRule | None = None

    def __post_init__(self) -> None:
        if sum(kind is not None for kind in (self.fractions, self.sequence, self.adaptive)) != 1:
            raise ValueError("a plan needs either fractions or a sequence, not both or neither (or an adaptive rule "
                             "alone)")
        if self.adaptive is not None:
            if not isinstance(self.adaptive, AdaptiveRule):
                raise ValueError(f"adaptive must be an AdaptiveRule, got {self.adaptive!r}")
            if self.model_count not in (None, 2):
                raise ValueError(f"an adaptive plan switches between 2 models (small, large), not {self.model_count}")
            object.__setattr__(self, "model_count", 2)
        elif self.fractions is not None:
            if len(self.fractions) < 1:
                raise ValueError("fractions must not be empty: a plan needs at least one model")
            checked = tuple(_check_fraction(f, f"fractions[{i}]") for i, f in enumerate(self.fractions))
            if abs(sum(checked) - 1.0) > 1e-6:
                raise ValueError(f"fractions must sum to 1, got {checked} (sum {sum(checked):.6g})")
            if self.model_count is not None and self.model_count != len(checked):
                raise ValueError(f"num_models is {self.model_count} but there are {len(checked)} fractions")
            object.__setattr__(self, "fractions", checked)
            object.__setattr__(self, "model_count", len(checked))
        else:
            if isinstance(self.sequence, (str, bytes)) or not isinstance(self.sequence, Sequence):
                raise ValueError(f"sequence must be a list of model indices, got {self.sequence!r}")
            if len(self.sequence) < 1:
                raise ValueError("sequence must not be empty: give the model index of every step")
            for i, index in enumerate(self.sequence):
                if isinstance(index, bool) or not isinstance(index, numbers.Integral):
                    raise ValueError(f"sequence[{i}] must be a model index (an integer), got {index!r}")
            count = self.model_count
            if count is None:
                count = max(int(i) for i in self.sequence) + 1
            count = check_count(count, "num_models", 1)
            for i, index in enumerate(self.sequence):
                if not 0 <= index < count:
                    raise ValueError(
                        f"sequence[{i}] is {index}, not a model index: the plan has {count} models (0..{count - 1})"
                    )
            object.__setattr__(self, "sequence", tuple(int(i) for i in self.sequence))
            object.__setattr__(self, "model_count", count)
        if self.names is not None:
            names = tuple(self.names)
            if len(names) != self.model_count or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"names must be {self.model_count} non-empty strings (one per model), got {names!r}")
            object.__setattr__(self, "names", names)

    # -- constructors ----------------------------------------------------------------------------------
    @classmethod
    def from_small_fractions(cls, small_fractions: float | Sequence[float], names: Sequence[str] | None = None) -> Plan:
        """Plan from the shares of the small models (a float or one per small model)."""
        if _is_scalar(small_fractions):
            small_fractions = [small_fractions]
        small = [_check_fraction(f, f"fractions[{i}]") for i, f in enumerate(small_fractions)]
        total = sum(small)
        if total > 1.0 + _EPS:
            raise ValueError(f"fractions {tuple(small)} sum to {total:.6g}, more than 1")
        return cls((*small, max(0.0, 1.0 - total)), names=None if names is None else tuple(names))

    @classmethod
    def coerce(cls, value: Plan | float | Sequence[float] | None, num_models: int) -> Plan:
        """The plan for ``num_models`` models from a plan, the small models' fractions (a float for two
        models, else one per small model), every model's fractions (summing to 1), or ``None`` for one model."""
        if isinstance(value, Plan):
            if value.num_models != num_models:
                raise ValueError(f"{num_models} models but the plan {value} is for {value.num_models} models")
            return value
        if value is None or (num_models == 1 and not _is_scalar(value) and len(value) == 0):
            if num_models != 1:
                raise ValueError(f"no fractions given for {num_models} models")
            return cls((1.0,))
        if _is_scalar(value):
            if num_models == 1 and float(value) == 0.0:
                return cls((1.0,))
            if num_models != 2:
                raise ValueError(f"{num_models} models but a single fraction; give one fraction per small model")
            return cls.from_small_fractions(value)
        values = list(value)
        if len(values) == num_models:
            return cls(tuple(values))
        if len(values) != num_models - 1:
            raise ValueError(f"{num_models} models but {len(values)} fractions; give one per small model "
                             "(or one per model, summing to 1)")
        return cls.from_small_fractions(values)

    @classmethod
    def from_sequence(
        cls, sequence: Sequence[int], num_models: int | None = None, names: Sequence[str] | None = None
    ) -> Plan:
        """Plan that runs model ``sequence[k]`` at step ``k`` (for exactly ``len(sequence)`` steps).

        ``num_models`` defaults to the largest index plus one (give it when the large model is unused).
        """
        if hasattr(sequence, "tolist"):  # numpy arrays, torch tensors
            sequence = sequence.tolist()
        return cls(sequence=sequence, model_count=num_models, names=None if names is None else tuple(names))

    @classmethod
    def from_segments(
        cls, segments: Sequence[tuple[int, int]], num_models: int | None = None, names: Sequence[str] | None = None
    ) -> Plan:
        """Per-step plan from ``(model_index, num_steps)`` pairs in order, e.g. ``[(0, 8), (2, 4), (1, 8)]``."""
        sequence: list[int] = []
        for i, segment in enumerate(segments):
            if not isinstance(segment, (tuple, list)) or len(segment) != 2:
                raise ValueError(f"segments[{i}] must be a (model_index, num_steps) pair, got {segment!r}")
            check_count(segment[1], f"segments[{i}] step count", 0)
            sequence += [segment[0]] * int(segment[1])
        return cls.from_sequence(sequence, num_models, names)

    @classmethod
    def parse(cls, text: str, names: Sequence[str] | None = None) -> Plan:
        """Per-step plan from its text form: ``S8 > XL12`` with ``names`` (any case), or ``0x8 > 1x12``; or an
        adaptive plan: ``adaptive(small-first, x0-change>0.15, 0.2..0.6)`` (:class:`AdaptiveRule`)."""
        if str(text).strip().startswith("adaptive"):
            return cls(adaptive=AdaptiveRule.parse(text), names=None if names is None else tuple(names))
        sequence: list[int] = []
        upper = None if names is None else [n.upper() for n in names]
        for part in str(text).split(">"):
            part = part.strip()
            if upper is None:
                match = re.fullmatch(r"(\d+)x(\d+)", part)
                index = None if match is None else int(match.group(1))
            else:
                match = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*?)(\d+)", part)
                index = upper.index(match.group(1).upper()) if match and match.group(1).upper() in upper else None
            if index is None:
                models = "model indices" if names is None else ", ".join(names)
                raise ValueError(f"plan {text!r}: cannot read segment {part!r} (models: {models})")
            sequence += [index] * int(match.group(2))
        if not sequence:
            raise ValueError(f"plan {text!r} has no steps")
        return cls.from_sequence(sequence, None if names is None else len(names), names)

    # -- reading the plan --------------------------------------------------------------------------------
    @property
    def num_models(self) -> int:
        return self.model_count

    @property
    def is_sequence(self) -> bool:
        """Whether this is a per-step plan (fixed step count) rather than fractions."""
        return self.sequence is not None

    @property
    def num_steps(self) -> int | None:
        """The step count of a per-step plan; ``None`` for fractions (any step count)."""
        return None if self.sequence is None else len(self.sequence)

    @property
    def small_fractions(self) -> tuple[float, ...]:
        """The shares of every model but the last (fraction plans only)."""
        return self._fractions()[:-1]

    def _fractions(self) -> tuple[float, ...]:
        if self.fractions is None:
            kind = "a per-step sequence" if self.sequence is not None else "adaptive"
            raise ValueError(f"plan {self} is {kind} and has no fractions")
        return self.fractions

    def _check_steps(self, num_steps: int) -> None:
        if self.adaptive is not None:
            raise ValueError(f"plan {self} picks each sample's model during the run; its record says which ran "
                             "(StitchRecord.model_per_step_per_sample)")
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if self.sequence is not None and num_steps != len(self.sequence):
            raise ValueError(
                f"this plan gives the model of {len(self.sequence)} steps, but the run has num_steps={num_steps}; "
                f"use a plan made for {num_steps} steps (or a fraction plan)"
            )

    def boundaries(self, num_steps: int) -> list[int]:
        """First step of each model, plus ``num_steps`` at the end (fraction plans only)."""
        self._check_steps(num_steps)
        bounds = [0]
        cumulative = 0.0
        for fraction in self.small_fractions:
            cumulative += fraction
            bounds.append(min(num_steps, math.floor(cumulative * num_steps + _EPS)))
        bounds.append(num_steps)
        return bounds

    def assignment(self, num_steps: int) -> list[int]:
        """The model index of every step, in order."""
        self._check_steps(num_steps)
        if self.sequence is not None:
            return list(self.sequence)
        bounds = self.boundaries(num_steps)
        return [i for i in range(self.num_models) for _ in range(bounds[i + 1] - bounds[i])]

    def model_index(self, step: int, num_steps: int) -> int:
        """Index of the model that runs scheduler step ``step`` (0-based) of ``num_steps``."""
        return self.assignment(num_steps)[min(max(step, 0), num_steps - 1)]

    def model_at_timestep(self, t: int, num_train_timesteps: int, *, strict: bool = False) -> int:
        """The published samplers' rule: model by training timestep ``t`` rather than by step count.

        Model ``i`` is the first whose cumulative fraction ``c_i`` has ``t / T >= 1 - c_i`` (DiT / T-Stitch;
        for two models "the small model runs while ``t / T >= 1 - r``"), or ``t / T > 1 - c_i`` with
        ``strict`` (the LDM scripts); the last model otherwise. Fraction plans only.
        """
        ratio = t / num_train_timesteps
        cumulative = 0.0
        for index, fraction in enumerate(self._fractions()[:-1]):
            cumulative += fraction
            if ratio > 1.0 - cumulative or (not strict and ratio == 1.0 - cumulative):
                return index
        return self.num_models - 1

    def steps_per_model(self, num_steps: int) -> list[int]:
        assignment = self.assignment(num_steps)
        return [assignment.count(i) for i in range(self.num_models)]

    def segments(self, num_steps: int | None = None) -> list[tuple[int, int]]:
        """``(model_index, num_steps)`` runs of consecutive steps, in order."""
        if num_steps is None:
            if self.sequence is None:
                raise ValueError("a fraction plan needs num_steps to list its segments")
            num_steps = len(self.sequence)
        runs: list[tuple[int, int]] = []
        for index in self.assignment(num_steps):
            if runs and runs[-1][0] == index:
                runs[-1] = (index, runs[-1][1] + 1)
            else:
                runs.append((index, 1))
        return runs

    def __str__(self) -> str:
        if self.adaptive is not None:
            return str(self.adaptive)
        if self.fractions is not None:
            return " -> ".join(f"{f:g}" for f in self.fractions)
        if self.names is not None:
            return " > ".join(f"{self.names[i]}{n}" for i, n in self.segments())
        return " > ".join(f"{i}x{n}" for i, n in self.segments())

