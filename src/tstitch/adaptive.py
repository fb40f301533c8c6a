# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Per-sample adaptive switching: the rule an adaptive :class:`~tstitch.plan.Plan` carries. Pure Python.

An adaptive plan runs two models (the small one first in the list, the large one last) and lets each sample
of a batch switch from one to the other at its own step, when a cheap signal says so:

* ``small-first``: every sample starts on the small model and moves to the large one when the relative
  change of its clean-image prediction between consecutive steps rises above ``threshold`` (the small
  model's trajectory is leaving the large one's), or at the latest at ``max_switch`` of the steps.
* ``large-first`` (SRDiffusion's order: the large model sketches, the small one renders): every sample starts
  on the large model and moves to the small one when that change falls below ``threshold`` (the large model's
  prediction has settled), not before ``min_switch`` of the steps.

The signal (``x0-change``) of step ``k`` is ``||x0_k - x0_{k-1}|| / ||x0_{k-1}||`` per sample, with
``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` from the prediction the scheduler steps with (the guided one
under classifier-free guidance) and ``a_t`` the scheduler's ``alphas_cumprod``. Step ``k``'s signal decides
from step ``k + 1`` on, so the earliest switch the signal can cause is step 2. A switch is one-way.

Text form (``Plan.parse`` and ``str(plan)``)::

    adaptive(small-first, x0-change>0.15, 0.2..0.6)   # switch step in [0.2 N, 0.6 N]
    adaptive(large-first, x0-change<0.05, 0.3..1)     # 1: a sample that never settles stays on the large model

The bounds are fractions of the ``N`` steps, resolved as fraction plans are (``floor(f * N + 1e-6)``), and
the large model always runs at least one step of every sample: ``small-first`` needs ``max_switch < 1``,
``large-first`` needs ``min_switch > 0``, so that no rule runs a whole trajectory on the small model.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["AdaptiveRule", "DIRECTIONS", "SIGNALS", "switch_bounds"]

#: The two orders: the model a sample starts on, named by size.
DIRECTIONS = ("small-first", "large-first")
#: The signals a rule can watch (the only one so far: the relative change of the x0 prediction).
SIGNALS = ("x0-change",)

_EPS = 1e-6
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TEXT = re.compile(
    rf"adaptive\(\s*(?P<direction>[a-z-]+)\s*,\s*(?P<signal>[a-z0-9-]+)\s*(?P<op>[<>])\s*(?P<threshold>{_NUMBER})"
    rf"\s*,\s*(?P<low>{_NUMBER})\s*\.\.\s*(?P<high>{_NUMBER})\s*\)"
)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _text(value: float) -> str:
    """``value`` short (``0.15``, ``1e+09``) where that reads back exactly, else in full."""
    return f"{value:g}" if float(f"{value:g}") == value else repr(value)


@dataclass(frozen=True)
class AdaptiveRule:
    """When each sample of an adaptive plan switches model (see the module's docstring).

    Args:
        direction: ``"small-first"`` (switch to the large model when the signal rises above ``threshold``) or
            ``"large-first"`` (switch to the small model when it falls below).
        threshold: the signal's threshold, a finite number >= 0.
        min_switch, max_switch: the earliest and latest switch step as fractions of the steps,
            ``0 <= min_switch <= max_switch <= 1``; ``max_switch < 1`` for small-first, ``min_switch > 0`` for
            large-first. Not given: ``0..0.5`` for small-first, ``0.1..1`` for large-first.
        signal: what is watched; only ``"x0-change"``.
    """

    direction: str
    threshold: float
    min_switch: float | None = None
    max_switch: float | None = None
    signal: str = "x0-change"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        threshold = _number(self.threshold, "threshold")
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 (a relative change), got {threshold!r}")
        default_low, default_high = (0.0, 0.5) if self.direction == "small-first" else (0.1, 1.0)
        low = _number(default_low if self.min_switch is None else self.min_switch, "min_switch")
        high = _number(default_high if self.max_switch is None else self.max_switch, "max_switch")
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"the switch bounds must have 0 <= min_switch <= max_switch <= 1, got {low!r}..{high!r}")
        if self.direction == "small-first" and high >= 1.0:
            raise ValueError(f"small-first needs max_switch < 1 (the large model must run), got {high!r}")
        if self.direction == "large-first" and low <= 0.0:
            raise ValueError(f"large-first needs min_switch > 0 (the large model must run), got {low!r}")
        for name, value in (("threshold", threshold), ("min_switch", low), ("max_switch", high)):
            object.__setattr__(self, name, value)

    # -- which model ------------------------------------------------------------------------------------
    @property
    def start_model(self) -> int:
        """The model index every sample starts on (0: small, 1: large)."""
        return 0 if self.direction == "small-first" else 1

    @property
    def end_model(self) -> int:
        """The model index a sample switches to."""
        return 1 - self.start_model

    def crosses(self, value: float) -> bool:
        """Whether a signal ``value`` asks for the switch (``False`` for NaN: no signal yet)."""
        return value > self.threshold if self.direction == "small-first" else value < self.threshold

    # -- text and dict forms -------------------------------------------------------------------------------
    def __str__(self) -> str:
        op = ">" if self.direction == "small-first" else "<"
        low, high = _text(self.min_switch), _text(self.max_switch)
        return f"adaptive({self.direction}, {self.signal}{op}{_text(self.threshold)}, {low}..{high})"

    @classmethod
    def parse(cls, text: str) -> AdaptiveRule:
        """The rule of its text form, e.g. ``adaptive(small-first, x0-change>0.15, 0.2..0.6)``."""
        match = _TEXT.fullmatch(str(text).strip())
        if match is None:
            raise ValueError(f"plan {text!r}: an adaptive plan reads 'adaptive(small-first, x0-change>0.15, 0.2..0.6)' "
                             "or 'adaptive(large-first, x0-change<0.05, 0.3..1)'")
        direction, op = match.group("direction"), match.group("op")
        expected = ">" if direction == "small-first" else "<"
        if direction in DIRECTIONS and op != expected:
            raise ValueError(f"plan {text!r}: {direction} switches when the signal is {expected} the threshold, "
                             f"write {match.group('signal')}{expected}{match.group('threshold')}")
        return cls(direction, float(match.group("threshold")), float(match.group("low")),
                   float(match.group("high")), match.group("signal"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (the ``adaptive`` field of a plan file)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> AdaptiveRule:
        """The rule of :meth:`to_dict`'s form (``ValueError`` naming a missing or unknown field)."""
        if not isinstance(data, dict):
            raise ValueError(f"adaptive must be a JSON object, got {type(data).__name__}")
        fields = {"direction", "threshold", "min_switch", "max_switch", "signal"}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown adaptive field(s) {unknown}")
        missing = sorted({"direction", "threshold"} - set(data))
        if missing:
            raise ValueError(f"adaptive needs the field(s) {missing}")
        return cls(**data)


def switch_bounds(rule: AdaptiveRule, num_steps: int) -> tuple[int, int]:
    """``(earliest, latest)`` switch step of ``rule`` in a run of ``num_steps`` steps; a latest step of
    ``num_steps`` means "may never switch". The large model keeps at least one step of every sample."""
    low = min(num_steps, math.floor(rule.min_switch * num_steps + _EPS))
    high = min(num_steps, math.floor(rule.max_switch * num_steps + _EPS))
    if rule.direction == "small-first":
        high = max(0, min(high, num_steps - 1))
        return min(low, high), high
    low = min(num_steps, max(low, 1))
    return low, max(high, low)
