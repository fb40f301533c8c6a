# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Region candidates for the tuner (a small and a large DiT): hybrid steps after the chosen plan's small steps.

After the search has chosen its fixed per-step plan, and when that plan starts with ``k`` steps of the small
model and then the large model (``S k > XL n-k``, or with a tail such as the segment search's ``S8 > XL11 > S1``),
:func:`region_candidates` builds one candidate per mask fraction (:data:`MASK_FRACTIONS`): the first ``h`` large
steps become hybrid steps, ``S k > H h > XL n-k-h`` (the tail kept: ``S8 > H4 > XL7 > S1``), where ``H`` is the
hybrid model
(:class:`~tstitch.regions.HybridDenoiser`: the small DiT on every token, the large DiT on ``mask_fraction`` of
them with the other tokens' keys and values from its cache of the large model's last full step) and
``h = max(2, round(HYBRID_SHARE * n))``. This is the small-first hybrid order. A candidate needs ``h`` large
steps after the leading small ones and at least one large step after the hybrid ones; a plan of another shape
(no leading small step), or one too short, gets none.

**Verification** (:func:`verify_regions`): the held-out noise and labels of the same seed as the fixed plans'
verification, in a *separate* :func:`~tstitch.tune.verify.verify_plans` call, whose models are the small DiT,
one hybrid model per mask fraction (all on the same large DiT) and the large DiT: verify_plans takes one model
list for all its plans. That call recomputes the reference (the large model alone: the same samples, so the same
features) and re-verifies the fixed plan, so the candidates' quality is paired with the same reference and
their measured cost is timed in the same interleaved rotation as the fixed plan they must beat. Region plans run
as whole loops, batch by batch, each with the hybrid model's cache emptied (its keys and values belong to one
batch's run); they are not in the search's prefix-sharing sampler.

**Predicted cost** (a model; the measured cost of the verification is the real one): each small step costs the
cost model's small-model step, each large step its large-model step; in the small-first order no full large
step precedes the hybrid steps, so the first hybrid step finds no cache and runs the large model on every token
(one large step, ``mode="fallback"``); each further hybrid step costs a small step plus ``mask_fraction`` of a
large step. That underrates a region step's fixed costs (the patch embedding of every token, attention over all
keys, the mask and merge): ``docs/regions.md`` measured 0.178 of a full DiT-XL/2 step for the large model's
share at mask 0.1.

**Choice**: the adaptive candidates' rule (:func:`~tstitch.tune.adaptive_plans.pick_adaptive`): the target met,
quality no worse than the re-verified fixed plan, a lower predicted and a lower measured cost. ``tune`` writes a
winner to ``plan.json`` as a per-step plan over three models named ``S, H, XL`` (run it with ``tstitch sample
--plan FILE --region MASK``, which adds the hybrid model between the two).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..compat import check_compatible
from ..plan import Plan
from ..regions.dit import check_dit
from ..regions.hybrid import HybridDenoiser
from .adaptive_plans import leading_small_steps, pick_adaptive
from .cost import CostModel
from .plans import label
from .verify import meets, verify_plans
from .workload import Workload

logger = logging.getLogger(__name__)

__all__ = ["MASK_FRACTIONS", "HYBRID_SHARE", "COST_MODEL", "RegionCandidate", "region_candidates", "skip_reason",
           "predicted_cost", "verify_regions", "pick_region", "prepare"]

#: Shares of the tokens the large model computes at a hybrid step.
MASK_FRACTIONS = (0.1, 0.3, 0.5)
#: Hybrid steps as a share of the step count (at least two: the first hybrid step is a full large step).
HYBRID_SHARE = 0.2
#: The predicted cost's model, as the report states it.
COST_MODEL = ("small step + mask_fraction x large step per hybrid step, except the first hybrid step: a full "
              "large step (no large step precedes it, so it finds no cache)")

pick_region = pick_adaptive  # the same rule as the adaptive candidates'


@dataclass(frozen=True)
class RegionCandidate:
    """``S small_steps > H hybrid_steps``, then the fixed plan's ``tail`` (its model indices after the hybrid
    steps, 0 small and 1 large), at ``mask_fraction``."""

    small_steps: int
    hybrid_steps: int
    mask_fraction: float
    tail: tuple[int, ...]

    @property
    def sequence(self) -> tuple[int, ...]:
        """Model indices over ``(small, hybrid, large)``."""
        return (0,) * self.small_steps + (1,) * self.hybrid_steps + tuple(2 if model else 0 for model in self.tail)

    @property
    def large_steps(self) -> int:
        return self.sequence.count(2)

    def plan(self, names: Sequence[str] = ("S", "H", "XL")) -> Plan:
        """The per-step :class:`~tstitch.plan.Plan` over the three models named ``names``."""
        return Plan.from_sequence(self.sequence, 3, names)

    def as_dict(self) -> dict[str, Any]:
        return {"plan": str(self.plan()), "sequence": list(self.sequence), "mask_fraction": self.mask_fraction,
                "small_steps": self.small_steps, "hybrid_steps": self.hybrid_steps, "large_steps": self.large_steps}


def _leading_small(sequence: Sequence[int]) -> int | None:
    """``k >= 1`` when ``sequence`` starts with ``k`` steps of model 0 and then model 1, else None."""
    k = leading_small_steps(sequence)
    return k if 0 < k < len(sequence) else None


def region_candidates(sequence: Sequence[int], *, mask_fractions: Sequence[float] = MASK_FRACTIONS,
                      share: float = HYBRID_SHARE) -> list[RegionCandidate]:
    """One small-first hybrid candidate per mask fraction around the fixed two-model plan ``sequence`` (see the
    module's docstring); none for a plan without leading small steps, or too short."""
    small = _leading_small(sequence)
    hybrid = max(2, round(share * len(sequence)))
    if small is None:
        return []
    replaced, tail = tuple(sequence[small:small + hybrid]), tuple(sequence[small + hybrid:])
    if len(replaced) < hybrid or any(model != 1 for model in replaced) or 1 not in tail:
        return []
    return [RegionCandidate(small, hybrid, float(mask), tail) for mask in dict.fromkeys(mask_fractions)]


def skip_reason(workload: Workload, sequence: Sequence[int], verify_samples: int) -> str | None:
    """Why the workload and the chosen plan get no region candidates (None: they get some)."""
    if len(workload.models) != 2:
        return f"region plans take two models (a small and a large DiT), the workload has {len(workload.models)}"
    try:
        check_dit(workload.models[-1])
        check_compatible(workload.models[-1], workload.models[0], "small")
    except (TypeError, ValueError) as error:
        return f"region plans need a DiT pair: {error}"
    if not verify_samples:
        return "region candidates are chosen on held-out verification: give verify_samples"
    if _leading_small(sequence) is None:
        return "region candidates follow a plan that starts with small steps, then large ones; the chosen plan does not"
    if not region_candidates(sequence):
        hybrid = max(2, round(HYBRID_SHARE * len(sequence)))
        return (f"no region candidate fits: the chosen plan has {_leading_small(sequence)} small steps of "
                f"{len(sequence)}, and a candidate needs {hybrid} large steps after them to make hybrid and a "
                "large step after those")
    return None


def predicted_cost(costs: CostModel, candidate: RegionCandidate, reference_steps: int) -> float:
    """The candidate's predicted time over the large model alone at ``reference_steps`` (:data:`COST_MODEL`)."""
    small, large = costs.seconds_per_step[0], costs.seconds_per_step[-1]
    hybrid = large + (candidate.hybrid_steps - 1) * (small + candidate.mask_fraction * large)
    seconds = candidate.sequence.count(0) * small + hybrid + candidate.large_steps * large
    return seconds / (large * reference_steps)


def verify_regions(workload: Workload, fixed: Sequence[int], candidates: Sequence[RegionCandidate], *, seed: int,
                   num_samples: int, reference_steps: int, batch_size: int, guidance_scale: float, costs: CostModel,
                   timing_repetitions: int = 3, progress: bool = True) -> dict[str, Any]:
    """The held-out verification of the region ``candidates`` beside the fixed two-model plan ``fixed`` (see the
    module's docstring). Rows: the reference, the fixed plan, then one per candidate (``kind: "region"``, its
    ``mask_fraction``, its three-model ``sequence`` and label, its predicted cost by :data:`COST_MODEL`)."""
    small, large = workload.models[0], workload.models[-1]
    masks = list(dict.fromkeys(c.mask_fraction for c in candidates))
    hybrids = [HybridDenoiser(small, large, mask_fraction=mask) for mask in masks]
    try:
        names = [workload.names[0], *(f"hybrid@{mask:g}" for mask in masks), workload.names[-1]]
        regions = dataclasses.replace(workload, models=[small, *hybrids, large], names=names)
        last = len(regions.models) - 1
        plans: list[Any] = [tuple(last if model else 0 for model in fixed)]
        for candidate in candidates:
            hybrid = 1 + masks.index(candidate.mask_fraction)
            plans.append(Plan.from_sequence([(0, hybrid, last)[i] for i in candidate.sequence], len(regions.models)))
        verification = verify_plans(regions, plans, seed=seed, num_samples=num_samples,
                                    reference_steps=reference_steps, batch_size=batch_size,
                                    guidance_scale=guidance_scale, costs=None, timing_repetitions=timing_repetitions,
                                    progress=progress)
    finally:
        for hybrid in hybrids:
            hybrid.remove()
    reference, fixed_row, *rows = verification["rows"]
    verification["reference"] = reference["plan"] = label((1,) * reference_steps, workload.short)
    reference["sequence"] = [1] * reference_steps
    reference["predicted_cost"] = costs.relative((1,) * reference_steps, reference_steps)
    fixed_row.update(plan=label(fixed, workload.short), sequence=list(fixed),
                     predicted_cost=costs.relative(fixed, reference_steps))
    names = region_names(workload.short)
    for row, candidate in zip(rows, candidates, strict=True):
        row.update(kind="region", plan=str(candidate.plan(names)), sequence=list(candidate.sequence),
                   mask_fraction=candidate.mask_fraction, hybrid_steps=candidate.hybrid_steps,
                   predicted_cost=predicted_cost(costs, candidate, reference_steps))
    return verification


def region_names(short: Sequence[str]) -> tuple[str, str, str]:
    """The three models' names in a region plan: the small model's short name, ``H``, the large model's."""
    return (short[0], "H", short[-1]) if "H" not in (short[0], short[-1]) else ("M0", "M1", "M2")


def prepare(workload: Workload, sequence: Sequence[int], *, verify_samples: int) -> tuple[list[RegionCandidate],
                                                                                         dict[str, Any]]:
    """The region candidates around the fixed ``sequence`` and the report's start (``frontier.json["regions"]``):
    ``{"candidates": [], "chosen": None, "skipped": reason or None, ...}``."""
    reason = skip_reason(workload, sequence, verify_samples)
    report: dict[str, Any] = {"candidates": [], "chosen": None, "skipped": reason, "fixed": None, "reference": None,
                              "mask_fractions": list(MASK_FRACTIONS), "hybrid_share": HYBRID_SHARE,
                              "cost_model": COST_MODEL}
    if reason:
        logger.info("no region candidates: %s", reason)
        return [], report
    return region_candidates(sequence), report


def choose(report: dict[str, Any], verification: dict[str, Any], *, budget: float | None,
           tolerance: float | None) -> dict[str, Any] | None:
    """Fill the report from the region ``verification`` (:func:`verify_regions`) and return the winning row."""
    reference, fixed, *rows = verification["rows"]
    for row in verification["rows"]:
        if tolerance is not None and "fid_ratio" in row:
            row["meets_tolerance"] = meets(row, tolerance)
    winner = pick_region(rows, fixed, budget=budget, tolerance=tolerance)
    report.update(candidates=rows, fixed=fixed, reference=reference, seed=verification["seed"],
                  num_samples=verification["num_samples"],
                  chosen=None if winner is None else {"plan": winner["plan"], "mask_fraction": winner["mask_fraction"]})
    return winner
