# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Adaptive candidates for the tuner (two models only): small-first rules around the chosen fixed plan.

After the search has chosen its fixed per-step plan, :func:`adaptive_candidates` builds a few small-first
:class:`~tstitch.adaptive.AdaptiveRule` plans around it: the switch bounds are the fixed plan's small-model
share (its leading run of the small model) plus and minus ``width`` of the steps, and the thresholds are
quantiles of the small model's own ``x0-change`` signal (:func:`small_model_signal`, on the *search's* noise)
at the step that decides the lower bound (the signal of step ``low - 1`` decides step ``low``), so that about
three quarters, half and a quarter of the samples switch at the lower bound; the others run on the small model
until their signal rises above the threshold, at the latest to the upper bound. (Calibrated at the fixed
plan's own switch instead, the thresholds sat below the signal at the lower bound, which falls with the step
on the digits models: every sample switched at the lower bound, and the three candidates were one plan.)

They are verified with the fixed plans, in the same :func:`~tstitch.tune.verify.verify_plans` call (same
held-out noise and labels, timings interleaved with the reference). An adaptive row's predicted cost comes
from the record's per-sample switch steps (:meth:`~tstitch.tune.cost.CostModel.switched`: mean steps of each
model times the cost model's per-step seconds). :func:`pick_adaptive` keeps a candidate only when it meets
the tuner's target (budget: predicted cost within it; tolerance: :func:`~tstitch.tune.verify.meets`) and
beats the verified fixed plan: a quality no worse (the FID-ratio interval's upper end, or the paired
distance without an FID) at a lower predicted and a lower measured cost. Among such candidates the tuner's own
rule picks: the cheapest (tolerance) or the best quality (budget).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..adaptive import AdaptiveRule
from ..plan import Plan
from ..sampling import sample
from .verify import meets
from .workload import Workload

logger = logging.getLogger(__name__)

__all__ = ["small_model_signal", "adaptive_candidates", "pick_adaptive", "wins", "best", "QUANTILES"]

#: Quantiles of the small model's signal used as thresholds.
QUANTILES = (0.25, 0.5, 0.75)


@torch.no_grad()
def small_model_signal(workload: Workload, noise: torch.Tensor, labels: torch.Tensor | None, *, num_steps: int,
                       batch_size: int = 500, guidance_scale: float = 1.0) -> torch.Tensor:
    """``(num_samples, num_steps)``: the relative change of the small model's clean-image prediction at each
    step of its own trajectory (NaN at step 0), the ``x0-change`` signal of :mod:`tstitch.adaptive`."""
    rows = []
    for begin in range(0, len(noise), batch_size):
        predictions: list[torch.Tensor] = []
        scheduler = type(workload.scheduler).from_config(workload.scheduler.config)
        sample(workload.models[0], [], scheduler, noise=noise[begin:begin + batch_size],
               class_labels=None if labels is None else labels[begin:begin + batch_size],
               num_inference_steps=num_steps, guidance_scale=guidance_scale,
               callback=lambda state, kept=predictions: kept.append(state["denoised"].flatten(1).double()))
        changes = [torch.full((len(predictions[0]),), float("nan"), dtype=torch.float64)]
        for previous, current in zip(predictions, predictions[1:], strict=False):
            changes.append(((current - previous).norm(dim=1) / previous.norm(dim=1).clamp_min(1e-12)).cpu())
        rows.append(torch.stack(changes, dim=1))
    return torch.cat(rows)


def leading_small_steps(sequence: Sequence[int]) -> int:
    """How many steps ``sequence`` runs model 0 before any other model (all of them when it never switches)."""
    return next((i for i, model in enumerate(sequence) if model != 0), len(sequence))


def adaptive_candidates(sequence: Sequence[int], signal: torch.Tensor, *, width: float = 0.2,
                        quantiles: Sequence[float] = QUANTILES) -> list[AdaptiveRule]:
    """Small-first rules around the fixed plan ``sequence`` (see the module's docstring); thresholds from
    ``signal`` (:func:`small_model_signal`) at the step that decides the lower bound."""
    num_steps = len(sequence)
    if num_steps < 3:
        return []
    switch = min(leading_small_steps(sequence), num_steps - 1)
    spread = max(1, round(width * num_steps))
    low, high = max(0, switch - spread), min(num_steps - 1, switch + spread)
    at = min(max(low - 1, 1), num_steps - 1)  # step low - 1's signal decides step low; step 0 has none
    values = signal[:, at]
    values = values[torch.isfinite(values)]
    if not len(values):
        return []
    thresholds = sorted({round(float(torch.quantile(values, q)), 6) for q in quantiles})
    return [AdaptiveRule("small-first", max(threshold, 0.0), low / num_steps, high / num_steps)
            for threshold in thresholds]


def _quality(row: Mapping[str, Any]) -> float:
    interval = row.get("fid_ratio")
    return interval["high"] if interval is not None else row["distance"]


def wins(row: Mapping[str, Any], fixed: Mapping[str, Any], *, budget: float | None,
         tolerance: float | None) -> bool:
    """Whether the verified adaptive ``row`` meets the target and beats the verified ``fixed`` row: quality
    no worse, predicted and measured cost both lower."""
    if tolerance is not None and not meets(row, tolerance):
        return False
    if budget is not None and row["predicted_cost"] > budget + 1e-9:
        return False
    if "measured_cost" not in row or "measured_cost" not in fixed:
        return False
    return (_quality(row) <= _quality(fixed) and row["predicted_cost"] < fixed["predicted_cost"]
            and row["measured_cost"] < fixed["measured_cost"])


def pick_adaptive(candidates: Sequence[dict[str, Any]], fixed: Mapping[str, Any], *, budget: float | None,
                  tolerance: float | None) -> dict[str, Any] | None:
    """Mark each candidate row's ``wins`` and return the winner the tuner's rule picks (or None). The region
    candidates (:mod:`tstitch.tune.region_plans`) are chosen by this function too."""
    winners = []
    for row in candidates:
        row["wins"] = wins(row, fixed, budget=budget, tolerance=tolerance)
        if row["wins"]:
            winners.append(row)
    return best(winners, tolerance=tolerance)


def best(winners: Sequence[dict[str, Any]], *, tolerance: float | None) -> dict[str, Any] | None:
    """The tuner's rule among rows that beat the fixed plan: the cheapest predicted cost (then measured) under a
    tolerance, the best quality (then the cheapest) under a budget; None when there is none."""
    if tolerance is not None:
        return min(winners, key=lambda r: (r["predicted_cost"], r["measured_cost"]), default=None)
    return min(winners, key=lambda r: (_quality(r), r["predicted_cost"]), default=None)


def adaptive_plan(rule: AdaptiveRule, names: Sequence[str]) -> Plan:
    """The adaptive :class:`~tstitch.plan.Plan` of ``rule`` over the two models named ``names``."""
    return Plan(adaptive=rule, names=(names[0], names[-1]))


def prepare(workload: Workload, sequence: Sequence[int], noise: torch.Tensor, labels: torch.Tensor | None, *,
            verify_samples: int, batch_size: int, guidance_scale: float) -> tuple[list[Plan], dict[str, Any]]:
    """The adaptive plans to verify beside the fixed ``sequence`` (calibrated on the search's ``noise``), and the
    report's start: ``{"candidates": [...], "skipped": reason or None}``."""
    report: dict[str, Any] = {"candidates": [], "chosen": None, "skipped": None}
    if len(workload.models) != 2:
        report["skipped"] = f"adaptive plans take two models, the workload has {len(workload.models)}"
    elif not verify_samples:
        report["skipped"] = "adaptive candidates are chosen on held-out verification: give verify_samples"
    if report["skipped"]:
        logger.info("no adaptive candidates: %s", report["skipped"])
        return [], report
    signal = small_model_signal(workload, noise, labels, num_steps=len(sequence), batch_size=batch_size,
                                guidance_scale=guidance_scale)
    plans = [adaptive_plan(rule, workload.short) for rule in adaptive_candidates(sequence, signal)]
    if not plans:
        report["skipped"] = "no adaptive candidate for a plan this short"
    return plans, report
