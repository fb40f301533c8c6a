# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The ``tstitch serve`` page's request, checked: every field the page or its HTTP API hands over is read and
bounded here (``ValueError`` naming the field and the value, before any work), without torch or the models.
:mod:`tstitch.serve.runs` samples a checked :class:`PageRequest`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tstitch.experiments.sample_plans import check_plan, plan_text
from tstitch.plan import Plan
from tstitch.sampling.schedulers import SCHEDULERS

__all__ = ["MAX_GUIDANCE", "MAX_IMAGES", "MAX_SEED", "MAX_STEPS", "MAX_WORK", "PageRequest", "Schedule",
           "parse_allocation", "parse_request", "scheduler_names"]

MAX_IMAGES = 64
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1  # a seed is a signed 64-bit number in torch
MAX_GUIDANCE = 100.0
#: The most work one request may ask for: steps x images x runs (each run is timed ``REPETITIONS`` times).
MAX_WORK = 20_000


def scheduler_names() -> list[str]:
    """The schedulers the page offers (the ``--scheduler`` table of :mod:`tstitch.sampling.schedulers`)."""
    return list(SCHEDULERS)


@dataclass(frozen=True)
class Schedule:
    """One run of a request: the large model alone (``allocation`` all zeros, the reference), the small
    models' shares ``allocation``, or a per-step ``plan`` (``allocation`` ``None``)."""

    allocation: tuple[float, ...] | None
    plan: Plan | None = None
    #: For a plan: where it came from (an uploaded file's name or a tune folder).
    source: str | None = None

    @property
    def is_reference(self) -> bool:
        return self.plan is None and self.allocation is not None and not any(self.allocation)

    def label(self, names: Sequence[str]) -> str:
        """``r 0.4`` (the small models' shares), ``r 0 (digits-xl alone)`` or ``plan S8 > XL12``."""
        if self.plan is not None:
            return f"plan {plan_text(self.plan, names) or self.plan}"
        shares = ",".join(f"{f:g}" for f in self.allocation)
        return f"r {shares} ({names[-1]} alone)" if self.is_reference else f"r {shares}"


@dataclass(frozen=True)
class PageRequest:
    """One press of *Generate*, checked. ``allocations``: the small models' shares of each stitched run (the
    reference, all zeros, is not among them: it always runs)."""

    model: str
    allocations: tuple[tuple[float, ...], ...]
    steps: int
    scheduler: str | None
    guidance: float
    seed: int
    num_images: int
    class_labels: tuple[int, ...] | None = None
    prompt: str | None = None
    #: A per-step plan (``tstitch tune``'s plan.json), sampled as one more run; ``plan_source`` names it.
    plan: Plan | None = None
    plan_source: str | None = None
    num_models: int = 2

    def schedules(self) -> list[Schedule]:
        """The runs, the reference (the large model alone) first."""
        runs = [Schedule((0.0,) * (self.num_models - 1))] + [Schedule(a) for a in self.allocations]
        if self.plan is not None:
            runs.append(Schedule(None, self.plan, self.plan_source))
        return runs

    @property
    def num_runs(self) -> int:
        return 1 + len(self.allocations) + (self.plan is not None)

    @property
    def work(self) -> int:
        """Steps x images x runs: what :data:`MAX_WORK` caps."""
        return self.steps * self.num_images * self.num_runs


def _whole(value: Any, name: str, low: int, high: int, shown_high: str | None = None) -> int:
    """``value`` (a number or its text) as an int in ``[low, high]``; ``ValueError`` naming ``name``."""
    bounds = f"in [{low}, {shown_high or high}]"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty: give a whole number {bounds}")
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}")
    number: int | float
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text)  # exact for long digit strings ("18446744073709551616")
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}") from None
    if isinstance(number, float) and (not math.isfinite(number) or number != int(number)):
        raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}")
    return int(number)


def _real(value: Any, name: str, low: float, high: float) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty: give a number in [{low:g}, {high:g}]")
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):  # NaN fails too
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return number


def parse_allocation(text: Any, num_models: int) -> tuple[float, ...]:
    """``"0.4"`` (two models) or ``"0.4,0.2"`` (three): the shares of the small models, smallest first."""
    try:
        shares = tuple(float(part) for part in str(text).replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"fractions: {text!r} is not a number (or comma-separated numbers)") from None
    if len(shares) != num_models - 1:
        raise ValueError(f"fractions: {num_models} models take {num_models - 1} comma-separated shares, "
                         f"got {text!r}")
    if any(not 0.0 <= s <= 1.0 for s in shares) or sum(shares) > 1.0 + 1e-6:  # NaN fails the first test
        raise ValueError(f"fractions must be in [0, 1] and sum to at most 1, got {text!r}")
    return shares


def _labels(text: Any, num_classes: int | None) -> tuple[int, ...] | None:
    if text is None or not str(text).strip():
        return None
    parts = str(text).replace(",", " ").split()
    if len(parts) > MAX_IMAGES:
        raise ValueError(f"class labels: at most {MAX_IMAGES} (one per image), got {len(parts):,}")
    try:
        labels = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"class labels must be whole numbers separated by spaces, got {str(text)[:80]!r}") from None
    if num_classes is not None:
        bad = [y for y in labels if not 0 <= y < num_classes]
        if bad:
            raise ValueError(f"class labels must be in [0, {num_classes - 1}] for these models, got {bad}")
    return labels


def parse_request(model: str, fractions: Any, steps: Any, scheduler: Any, guidance: Any, seed: Any,
                  num_images: Any, labels: Any, prompt: Any, *, num_models: int, class_conditional: bool,
                  num_classes: int | None = None, plan: Plan | None = None, plan_source: str | None = None,
                  max_work: int = MAX_WORK) -> PageRequest:
    """Check the page's inputs: ``ValueError`` naming the field and the value, before any work.

    Numbers may come as numbers or as their text (the HTTP API); ``fractions`` are the small models' shares
    (``"0.4"``, ``"0.4,0.2"`` for three models); a fraction of 0 is the reference, which always runs.
    ``plan``: a per-step plan sampled as one more run. A request asking for more than ``max_work``
    steps x images x runs is refused, naming the three."""
    if fractions is None:
        fractions = []
    if isinstance(fractions, (str, int, float)):
        fractions = [fractions]
    if not isinstance(fractions, (list, tuple)) or len(fractions) > 100:
        raise ValueError(f"fractions must be a list of at most 100 fractions, got {str(fractions)[:80]}")
    allocations = tuple(dict.fromkeys(parse_allocation(f, num_models) for f in fractions))
    allocations = tuple(a for a in allocations if any(a))  # 0 is the reference
    if not fractions and plan is None:
        raise ValueError("fractions: choose at least one fraction (or a plan)")
    steps = _whole(steps, "steps", 1, MAX_STEPS)
    if plan is not None:
        try:
            check_plan(plan, None, steps, [f"model {i}" for i in range(num_models)])
        except ValueError as error:
            where = f"plan {plan_source}" if plan_source else "plan"
            raise ValueError(f"{where}: {str(error).replace('(--steps)', '(the steps field)')}") from None
    guidance = _real(guidance, "guidance", 0.0, MAX_GUIDANCE)
    if scheduler not in (None, "") and scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {str(scheduler)[:80]!r} is not offered; offered: {', '.join(SCHEDULERS)}")
    seed = _whole(seed, "seed", 0, MAX_SEED, shown_high="2**63 - 1")
    num_images = _whole(num_images, "images", 1, MAX_IMAGES)
    class_labels = _labels(labels, num_classes) if class_conditional else None
    if not class_conditional and not (prompt and str(prompt).strip()):
        raise ValueError("prompt is empty: give a prompt")
    request = PageRequest(model, allocations, steps, scheduler or None, guidance, seed, num_images, class_labels,
                          str(prompt).strip() if prompt and not class_conditional else None, plan, plan_source,
                          num_models)
    if request.work > max_work:
        raise ValueError(f"too much work for one request: steps x images x runs = {steps} x {num_images} x "
                         f"{request.num_runs} = {request.work:,}, more than {max_work:,}; ask for fewer steps, "
                         "images or fractions")
    return request

