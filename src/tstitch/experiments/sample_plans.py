# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""A :class:`~tstitch.plan.Plan` given to ``tstitch sample`` (``--plan FILE``): checked against the models and
the step count before any work, carried in the run's settings, and shown by its text form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..plan import Plan
from ..planfile import plan_from_dict

__all__ = ["check_plan", "run_plan", "plan_text"]


def check_plan(plan: Plan | None, fractions: Sequence[float] | None, num_steps: int | None,
               names: Sequence[str] | None = None) -> Plan | None:
    """``plan``, checked: not with ``fractions``, one model per name (when given), ``num_steps`` steps (a
    per-step plan; ``None``: the plan's)."""
    if plan is None:
        return None
    if not isinstance(plan, Plan):
        raise ValueError(f"plan must be a tstitch.plan.Plan, got {type(plan).__name__}")
    if fractions is not None:
        raise ValueError(f"give a plan or fractions, not both (got plan {plan} and fractions {list(fractions)})")
    if names is not None and plan.num_models != len(names):
        raise ValueError(f"the plan {plan} is for {plan.num_models} models, but there are {len(names)} "
                         f"({', '.join(names)})")
    if plan.is_sequence and num_steps is not None and num_steps != plan.num_steps:
        raise ValueError(f"the plan {plan} gives the model of {plan.num_steps} steps, but the run has "
                         f"{num_steps} steps (--steps): use --steps {plan.num_steps} or a plan made for "
                         f"{num_steps} steps")
    return plan


def run_plan(settings: dict[str, Any]) -> Plan | None:
    """The plan of a run's settings (stored as :meth:`Plan.to_dict`), or ``None``."""
    return None if settings.get("plan") is None else plan_from_dict(settings["plan"])


def plan_text(plan: Plan | None, names: Sequence[str]) -> str | None:
    """A per-step plan's text form, with its own model labels or else the models' names."""
    if plan is None or not plan.is_sequence:
        return None
    return str(plan if plan.names else Plan.from_sequence(plan.sequence, plan.num_models, names))
