# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""A :class:`~tstitch.plan.Plan` given to ``tstitch sample`` (``--plan FILE``): checked in two halves (against
the request when it is made, against the models once they are loaded), shown by its text form, and read as
every model's share of the steps."""

from __future__ import annotations

from collections.abc import Sequence

from ..plan import Plan

__all__ = ["HYBRID", "check_plan", "check_plan_request", "check_plan_models", "named_plan", "plan_names", "plan_text",
           "step_shares"]

#: The name of the hybrid model (:class:`tstitch.regions.HybridDenoiser`) ``tstitch sample --region`` adds; ``H`` in
#: plans.
HYBRID = "hybrid"


def check_plan(plan: Plan | None, fractions: Sequence[float] | None, num_steps: int | None,
               names: Sequence[str] | None = None) -> Plan | None:
    """``plan``, checked: :func:`check_plan_request`, then :func:`check_plan_models` when ``names`` are given."""
    if plan is None:
        return None
    check_plan_request(plan, fractions, num_steps)
    if names is not None:
        check_plan_models(plan, names)
    return plan


def check_plan_request(plan: Plan, fractions: Sequence[float] | None, num_steps: int | None) -> None:
    """The checks that need no models: a :class:`Plan`, not with ``fractions``, and a per-step plan's step
    count ``num_steps`` (``None``: the plan's)."""
    if not isinstance(plan, Plan):
        raise ValueError(f"plan must be a tstitch.plan.Plan, got {type(plan).__name__}")
    if fractions is not None:
        raise ValueError(f"give a plan or fractions, not both (got plan {plan} and fractions {list(fractions)})")
    if plan.is_sequence and num_steps is not None and num_steps != plan.num_steps:
        raise ValueError(f"the plan {plan} gives the model of {plan.num_steps} steps, but the run has "
                         f"{num_steps} steps (--steps): use --steps {plan.num_steps} or a plan made for "
                         f"{num_steps} steps")


def check_plan_models(plan: Plan, names: Sequence[str]) -> None:
    """The plan is for as many models as there are ``names``."""
    if plan.num_models != len(names):
        raise ValueError(f"the plan {plan} is for {plan.num_models} models, but there are {len(names)} "
                         f"({', '.join(names)})")


def plan_names(names: Sequence[str]) -> list[str]:
    """The models' short names in plan texts: the part after the last '-' in capitals (``digits-xl`` -> ``XL``),
    ``H`` for the hybrid model, when these are distinct; else ``M0, M1, ...``."""
    short = ["H" if name == HYBRID else name.rsplit("-", 1)[-1].upper() for name in names]
    ok = len(set(short)) == len(short) and all(s[:1].isalpha() and s.isalnum() and not s[-1].isdigit() for s in short)
    return short if ok else [f"M{i}" for i in range(len(names))]


def named_plan(text: str, names: Sequence[str]) -> Plan:
    """A per-step plan's text over the models' short names (:func:`plan_names`: ``S8 > XL12``)."""
    try:
        return Plan.parse(text, plan_names(names))
    except ValueError as error:
        raise ValueError(f"--plan {text!r}: {error}") from None


def plan_text(plan: Plan | None, names: Sequence[str]) -> str | None:
    """A per-step plan's text form, with its own model labels or else the models' names; an adaptive plan's rule."""
    if plan is not None and plan.adaptive is not None:
        return str(plan)
    if plan is None or not plan.is_sequence:
        return None
    return str(plan if plan.names else Plan.from_sequence(plan.sequence, plan.num_models, names))


def step_shares(plan: Plan, per_sample: Sequence[Sequence[int]] | None = None) -> tuple[float | None, ...]:
    """Every model's share of the steps: a fraction plan's fractions, or a per-step plan's steps per model
    over its step count; an adaptive plan's mean share over the samples of ``per_sample`` (each sample's model
    of every step; without it: ``None`` per model, known only once it ran)."""
    if plan.fractions is not None:
        return plan.fractions
    if plan.adaptive is not None:
        if not per_sample:
            return (None,) * plan.num_models
        steps = [row.count(i) for row in per_sample for i in range(plan.num_models)]
        total = sum(len(row) for row in per_sample)
        return tuple(sum(steps[i::plan.num_models]) / total for i in range(plan.num_models))
    return tuple(n / plan.num_steps for n in plan.steps_per_model(plan.num_steps))
