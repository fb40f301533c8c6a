# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The searches over per-step plans, scored by the paired signal.

:func:`segment_search` (the default of :func:`tstitch.tune`) scores every plan of one segment order within a
cost window: for three models ``S a > B b > XL c > B d > S e`` (the small model first, digits-b before
and after the large model, the final step handed back to the small model), the single fractions among
them. Plans are scored in lexicographic order, so the sampler shares every common beginning.

:func:`greedy_search` is a greedy cost descent:

It starts from the large model alone and, at each round, tries every plan that hands one step at a segment
boundary (the first or last step of a run of one model) to a cheaper model, keeping at most
``max_segments`` segments. The move with the smallest rise of the signal per unit of predicted cost saved
is taken, until the predicted cost falls below ``min_cost``. Every scored plan is kept; the frontier is the
set of plans no other plan beats on both predicted cost and signal. T-Stitch's single-fraction plans
(the smallest model for the first ``k`` steps, then the large one) are scored in the same run for comparison.

Its cost in model evaluations is counted by the sampler (:attr:`PrefixSampler.model_steps`): plans that
share a beginning share its steps, so a move near the end of the trajectory costs only the steps after it.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from .cost import CostModel
from .plans import label, runs, single_fraction
from .quality import PairedSignal, PlanScore

logger = logging.getLogger(__name__)

__all__ = ["SearchResult", "greedy_search", "segment_search", "segment_plans", "pareto", "fit_ratio_curve"]


@dataclass
class SearchResult:
    """Every scored plan, the descent path, the frontier and the single-fraction baseline."""

    names: list[str]
    reference_steps: int
    scored: list[dict[str, Any]] = field(default_factory=list)
    path: list[tuple[int, ...]] = field(default_factory=list)
    baseline: list[tuple[int, ...]] = field(default_factory=list)
    seconds: float = 0.0
    model_steps: list[int] = field(default_factory=list)
    rank_by: str = "distance"

    def row(self, sequence: Sequence[int]) -> dict[str, Any]:
        sequence = tuple(sequence)
        return next(r for r in self.scored if tuple(r["sequence"]) == sequence)

    def frontier(self) -> list[dict[str, Any]]:
        """Plans no other scored plan beats on both predicted cost and signal, cheapest first."""
        return [self.scored[i] for i in pareto(self.scored, y=self.rank_by)]

    def baseline_rows(self) -> list[dict[str, Any]]:
        return [self.row(s) for s in self.baseline]

    def best_within(self, budget: float) -> dict[str, Any] | None:
        """The plan with the lowest signal among those predicted to cost at most ``budget``."""
        fitting = [r for r in self.scored if r["predicted_cost"] <= budget + 1e-9]
        return min(fitting, key=lambda r: (r[self.rank_by], r["predicted_cost"]), default=None)


def pareto(rows: Sequence[dict[str, Any]], x: str = "predicted_cost", y: str = "distance") -> list[int]:
    """Indices of the rows that no other row beats on both ``x`` and ``y`` (lower is better), by ``x``."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][x], rows[i][y]))
    front, best = [], math.inf
    for i in order:
        if rows[i][y] < best:
            front.append(i)
            best = rows[i][y]
    return front


def moves(sequence: tuple[int, ...], step_costs: Sequence[float], max_segments: int) -> list[tuple[int, ...]]:
    """Plans that give one boundary step of a segment to a cheaper model, with at most ``max_segments``."""
    found: dict[tuple[int, ...], None] = {}
    for model, start, stop in runs(sequence):
        for position in sorted({start, stop - 1}):
            for cheaper in range(len(step_costs)):
                if step_costs[cheaper] >= step_costs[model]:
                    continue
                candidate = sequence[:position] + (cheaper,) + sequence[position + 1:]
                if len(runs(candidate)) <= max_segments:
                    found[candidate] = None
    return list(found)


def _check_search(signal: PairedSignal, rank_by: str, num_steps: int) -> None:
    """The arguments both searches share, checked before any sampling."""
    if rank_by not in ("distance", "small_fid_ratio"):
        raise ValueError(f"rank_by must be 'distance' or 'small_fid_ratio', got {rank_by!r}")
    if rank_by == "small_fid_ratio" and signal.real_statistics is None:
        raise ValueError("rank_by='small_fid_ratio' needs a signal with real statistics")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


def check_greedy_bounds(max_segments: int, min_cost: float) -> None:
    """The greedy search's own bounds: at least one run per model, a cost floor in (0, 1)."""
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    if not 0 < min_cost < 1:
        raise ValueError(f"min_cost must be in (0, 1), got {min_cost}")


def check_segment_bounds(min_cost: float, max_cost: float) -> None:
    """The segment search's cost window."""
    if not 0 <= min_cost < max_cost:
        raise ValueError(f"need 0 <= min_cost < max_cost, got {min_cost} and {max_cost}")


def greedy_search(signal: PairedSignal, costs: CostModel, names: Sequence[str], *, num_steps: int = 20,
                  reference_steps: int = 20, max_segments: int = 4, min_cost: float = 0.35,
                  baseline: bool = True, max_model_steps: int | None = None, rank_by: str = "distance",
                  progress: bool = True) -> SearchResult:
    """Greedy descent from the large model alone (see the module docstring).

    Args:
        signal: scores plans on the search's noise.
        costs: the measured step costs (predicts each plan's cost).
        names: short model names, for labels.
        num_steps: steps of the searched plans.
        reference_steps: steps of the reference (the large model alone), the unit of cost.
        max_segments: most runs of one model in a plan.
        min_cost: stop when the current plan's predicted cost is below this fraction of the reference.
        baseline: also score every single-fraction plan (smallest model first, then the large one).
        max_model_steps: stop when the sampler has run this many sample-steps (all models together).
        rank_by: the signal the moves are judged by: ``"distance"`` (the paired feature distance) or
            ``"small_fid_ratio"`` (the paired FID ratio on the search's samples; needs real statistics).
    """
    _check_search(signal, rank_by, num_steps)
    check_greedy_bounds(max_segments, min_cost)
    begin = time.perf_counter()
    result = SearchResult(list(names), reference_steps, rank_by=rank_by)
    large = len(costs.seconds_per_step) - 1
    step_costs = costs.seconds_per_step

    def score(sequence: tuple[int, ...]) -> PlanScore:
        known = sequence in signal.scores
        scored = signal.score(sequence)
        if not known:
            result.scored.append({
                "plan": label(sequence, names), "sequence": list(sequence),
                "predicted_cost": costs.relative(sequence, reference_steps),
                "distance": scored.distance, "small_fid_ratio": scored.fid_ratio,
            })
        return scored

    def spent() -> bool:
        return max_model_steps is not None and sum(signal.sampler.model_steps) >= max_model_steps

    key = "distance" if rank_by == "distance" else "fid_ratio"
    current = (large,) * num_steps
    current_score = score(current)
    result.path.append(current)
    bar = tqdm(total=round(100 * (1 - min_cost)), desc="searching plans (cost saved, %)", disable=not progress)
    while costs.relative(current, reference_steps) > min_cost and not spent():
        options = moves(current, step_costs, max_segments)
        if not options:
            break
        saved_before = costs.relative(current, reference_steps)

        def efficiency(candidate: tuple[int, ...], before: float = saved_before,
                       base: float = getattr(current_score, key)) -> float:
            saved = before - costs.relative(candidate, reference_steps)
            return (getattr(score(candidate), key) - base) / saved

        current = min(options, key=efficiency)
        current_score = score(current)
        result.path.append(current)
        bar.update(round(100 * (1 - costs.relative(current, reference_steps))) - bar.n)
        logger.debug("took %s (cost %.3f, distance %.4f)", label(current, names),
                     costs.relative(current, reference_steps), current_score.distance)
    bar.close()
    if baseline:
        for k in tqdm(range(num_steps, -1, -1), desc="single fractions", disable=not progress, leave=False):
            sequence = single_fraction(k, num_steps, 0, large, len(step_costs))
            score(sequence)
            result.baseline.append(sequence)
        result.baseline.reverse()
    result.seconds = time.perf_counter() - begin
    result.model_steps = list(signal.sampler.model_steps)
    return result


def default_order(num_models: int, num_steps: int, side: int = 4, after: int = 2) -> list[tuple[int, int]]:
    """``(model, longest run)`` of the default segment order, the large model's run (``-1``) the rest of the
    steps: the models smallest first (the smallest up to every step, the others up to ``side``), the large
    one, the middle models again in reverse (up to ``after``) and the smallest for the final step."""
    large = num_models - 1
    before = [(0, num_steps)] + [(m, side) for m in range(1, large)]
    return before + [(large, -1)] + [(m, after) for m in range(large - 1, 0, -1)] + [(0, 1)]


def segment_plans(order: Sequence[tuple[int, int]], num_steps: int, cost: Callable[[tuple[int, ...]], float], *,
                  min_cost: float = 0.0, max_cost: float = 1.0) -> list[tuple[int, ...]]:
    """Every plan of ``num_steps`` steps made of the runs of ``order`` (``(model, longest run)``, one run of
    ``-1``: the rest of the steps, at least 1), runs of length 0 left out, with ``cost(plan)`` in
    ``[min_cost, max_cost]``; sorted (plans that begin alike are neighbours)."""
    rest = [i for i, (_, longest) in enumerate(order) if longest == -1]
    if len(rest) != 1:
        raise ValueError(f"order needs exactly one run of -1 (the rest of the steps), got {len(rest)}")
    choices = [range(longest + 1) if longest != -1 else [0] for _, longest in order]
    found = set()
    for lengths in itertools.product(*choices):
        remaining = num_steps - sum(lengths)
        if remaining < 1:
            continue
        lengths = list(lengths)
        lengths[rest[0]] = remaining
        sequence = tuple(m for (m, _), n in zip(order, lengths, strict=True) for _ in range(n))
        if min_cost - 1e-9 <= cost(sequence) <= max_cost + 1e-9:
            found.add(sequence)
    return sorted(found)


def segment_search(signal: PairedSignal, costs: CostModel, names: Sequence[str], *, num_steps: int = 20,
                   reference_steps: int = 20, order: Sequence[tuple[int, int]] | None = None,
                   min_cost: float = 0.35, max_cost: float = 0.9, rank_by: str = "small_fid_ratio",
                   progress: bool = True) -> SearchResult:
    """Score every plan of ``order`` (default: :func:`default_order`) whose predicted cost is within
    ``[min_cost, max_cost]``, then the single fractions (see the module docstring). ``rank_by`` as in
    :func:`greedy_search`; the result's frontier and budgets follow it."""
    _check_search(signal, rank_by, num_steps)
    check_segment_bounds(min_cost, max_cost)
    begin = time.perf_counter()
    large = len(costs.seconds_per_step) - 1
    order = list(order) if order is not None else default_order(large + 1, num_steps)
    if any(not 0 <= m <= large for m, _ in order):
        raise ValueError(f"order names model indices outside [0, {large}]: {[m for m, _ in order]}")
    result = SearchResult(list(names), reference_steps, rank_by=rank_by)

    def cost(sequence: tuple[int, ...]) -> float:
        return costs.relative(sequence, reference_steps)

    plans = segment_plans(order, num_steps, cost, min_cost=min_cost, max_cost=max_cost)
    baseline = [single_fraction(k, num_steps, 0, large, large + 1) for k in range(num_steps + 1)]
    reference = (large,) * reference_steps
    logger.info("scoring %d plans of %s", len(plans), " > ".join(names[m] for m, _ in order))
    seen = set()
    for sequence in tqdm([reference, *plans, *baseline], desc="scoring plans", disable=not progress):
        if sequence in seen:
            continue
        seen.add(sequence)
        scored = signal.score(sequence)
        result.scored.append({"plan": label(sequence, names), "sequence": list(sequence),
                              "predicted_cost": cost(sequence), "distance": scored.distance,
                              "small_fid_ratio": scored.fid_ratio})
    result.baseline = baseline
    result.seconds = time.perf_counter() - begin
    result.model_steps = list(signal.sampler.model_steps)
    return result


def fit_ratio_curve(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Least-squares ``ratio - 1 = a d + b d^2`` from the scored plans' distance ``d`` and small-sample FID
    ratio (a smooth reading of the FID ratio from the signal, pooling the noise of many plans)."""
    import numpy as np

    points = [(r["distance"], r["small_fid_ratio"]) for r in rows if r.get("small_fid_ratio") is not None]
    if len(points) < 3:
        raise ValueError(f"need at least 3 plans with an FID ratio to fit, got {len(points)}")
    d = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points]) - 1.0
    (a, b), *_ = np.linalg.lstsq(np.stack([d, d * d], axis=1), y, rcond=None)
    return float(a), float(b)
