# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch.tune(...)``: measure the cost model, search the plans, pick one, optionally verify it, write
``plan.json`` (a :class:`tstitch.plan.Plan`), ``frontier.json`` and ``frontier.png``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..plan import Plan
from ..planfile import save_plan
from ..sampling.checks import check_guidance_scale
from ..utils import ensure_writable_dir, pyplot, save_figure, write_json
from . import region_plans
from .adaptive_plans import best, pick_adaptive, prepare
from .cost import CostModel, measure_step_costs
from .engine import PrefixSampler
from .plans import as_plan
from .quality import PairedSignal
from .region_plans import verify_regions
from .search import (
    SearchResult,
    check_greedy_bounds,
    check_segment_bounds,
    fit_ratio_curve,
    greedy_search,
    segment_search,
)
from .verify import meets, verify_plans
from .workload import Workload, digits_workload

logger = logging.getLogger(__name__)

__all__ = ["tune", "OUTPUT_FILES", "DEFAULT_BUDGETS"]

OUTPUT_FILES = ("plan.json", "frontier.json", "frontier.png")
DEFAULT_BUDGETS = (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0)


def _check_fresh(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} is a file, not a folder")
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing:
        raise FileExistsError(f"out_dir {str(out)!r} already holds {', '.join(existing)}: choose a fresh folder "
                              "(tune never overwrites files)")
    return out


def _check(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")


def choose(result: SearchResult, *, budget: float | None, tolerance: float | None) -> dict[str, Any] | None:
    """The plan for the target: the lowest signal within ``budget``, or the cheapest frontier plan whose
    estimated FID ratio is within ``tolerance``."""
    if tolerance is not None:
        fitting = [r for r in result.frontier() if r["estimated_fid_ratio"] <= tolerance]
        return min(fitting, key=lambda r: r["predicted_cost"], default=None)
    return result.best_within(budget)


def check_arguments(*, num_steps: int, budget: float | None, tolerance: float | None, search_samples: int,
                    search_seed: int, verify_samples: int, verify_seed: int, batch_size: int,
                    guidance_scale: float, max_segments: int, min_cost: float, max_cost: float,
                    search: str) -> None:
    """Every check of :func:`tune`'s arguments that needs no workload, in one place: ``tune`` runs it first, and
    ``tstitch tune`` runs it before it loads any model. Raises ``ValueError`` naming the argument."""
    if budget is not None and tolerance is not None:
        raise ValueError(f"give budget or tolerance, not both (got budget={budget}, tolerance={tolerance})")
    if budget is not None:
        _check("budget", budget, 0.01, 1.0)
    if tolerance is not None:
        _check("tolerance", tolerance, 1.0, 100.0)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if search_samples < 2:
        raise ValueError(f"search_samples must be >= 2, got {search_samples}")
    if verify_samples < 0 or verify_samples == 1:
        raise ValueError(f"verify_samples must be 0 or >= 2, got {verify_samples}")
    if search not in ("segments", "greedy"):
        raise ValueError(f"search must be 'segments' or 'greedy', got {search!r}")
    if search_seed == verify_seed and verify_samples:
        raise ValueError(f"verify_seed must differ from search_seed (held-out), both are {search_seed}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_guidance_scale(guidance_scale)
    if search == "greedy":
        check_greedy_bounds(max_segments, min_cost)
    else:
        check_segment_bounds(min_cost, max_cost)


def tune(
    out_dir: str | Path,
    *,
    workload: Workload | None = None,
    num_steps: int = 20,
    budget: float | None = None,
    tolerance: float | None = None,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    search_samples: int = 128,
    search_seed: int = 0,
    verify_samples: int = 0,
    verify_seed: int = 1000,
    batch_size: int = 500,
    guidance_scale: float = 1.0,
    max_segments: int = 4,
    min_cost: float = 0.35,
    max_cost: float = 0.9,
    search: str = "segments",
    order: Sequence[tuple[int, int]] | None = None,
    timing_repetitions: int = 5,
    rank_by: str | None = None,
    costs: CostModel | None = None,
    adaptive: bool = True,
    regions: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Find the fastest plan for the target on this machine; see ``docs/tune.md``.

    Args:
        out_dir: a folder without ``plan.json``, ``frontier.json`` or ``frontier.png`` (never overwritten).
        workload: the models and metric (default: the embedded digits family, offline).
        num_steps: steps of the reference (the large model alone) and of the searched plans.
        budget: predicted time as a fraction of the large model alone; the best plan within it is chosen.
        tolerance: largest FID ratio to the large model alone; the cheapest plan estimated within it is chosen.
            Give one of ``budget`` and ``tolerance`` (default: tolerance 1.05 when the workload has an FID, else
            budget 0.6).
        budgets: the budgets of the frontier table.
        search_samples, search_seed: the noise the search scores plans on.
        verify_samples, verify_seed: held-out samples to verify the chosen plan on (0: no verification).
        search: ``"segments"`` (every plan of one segment order within ``[min_cost, max_cost]``,
            :func:`~tstitch.tune.search.segment_search`) or ``"greedy"`` (cost descent from the large model,
            at most ``max_segments`` runs, down to ``min_cost``: :func:`~tstitch.tune.search.greedy_search`).
        order: the segment search's order, ``(model index, longest run)`` with one run of ``-1`` (the rest);
            default :func:`~tstitch.tune.search.default_order`.
        rank_by: the signal plans are ranked by: ``"small_fid_ratio"`` (the paired FID ratio on the search's
            samples; the default when the workload has an FID) or ``"distance"`` (the paired feature distance;
            the default otherwise).
        costs: a cost model measured before (default: measured now, ``timing_repetitions`` rounds).
        adaptive: after the search, also verify a few small-first adaptive plans around the chosen plan (two
            models and ``verify_samples`` only) and choose one when it beats the fixed plan
            (:mod:`tstitch.tune.adaptive_plans`).
        regions: after the search, also verify a few small-first region plans around the chosen plan
            (``S k > H h > XL``, ``H`` the hybrid model at a few mask fractions; a small and a large DiT and
            ``verify_samples`` only) and choose one when it beats the fixed plan (:mod:`tstitch.tune.region_plans`).
            When both an adaptive and a region candidate win, the tuner's rule picks between the two winners.

    Returns ``{"plan": Plan, "chosen": ..., "frontier": ...}``: the chosen :class:`~tstitch.plan.Plan` (saved
    as ``plan.json`` in the core's plan format, read it with :func:`tstitch.load_plan`), its figures (predicted
    cost, estimated FID ratio, verification; also ``frontier.json["chosen"]``) and ``frontier.json``.
    """
    check_arguments(num_steps=num_steps, budget=budget, tolerance=tolerance, search_samples=search_samples,
                    search_seed=search_seed, verify_samples=verify_samples, verify_seed=verify_seed,
                    batch_size=batch_size, guidance_scale=guidance_scale, max_segments=max_segments,
                    min_cost=min_cost, max_cost=max_cost, search=search)
    out = _check_fresh(out_dir)
    ensure_writable_dir(out)
    workload = workload or digits_workload()
    has_fid = workload.real_statistics is not None
    if tolerance is not None and not has_fid:
        raise ValueError("tolerance needs a workload with real statistics (an FID); give a budget instead")
    if budget is None and tolerance is None:
        tolerance, budget = (1.05, None) if has_fid else (None, 0.6)
    rank_by = rank_by or ("small_fid_ratio" if has_fid else "distance")
    if rank_by == "small_fid_ratio" and not has_fid:
        raise ValueError("rank_by='small_fid_ratio' needs a workload with real statistics (an FID)")

    started, started_cpu = time.perf_counter(), time.process_time()
    costs = costs or measure_step_costs(workload.models, workload.sample_shape, batch_size=batch_size,
                               num_classes=workload.num_classes, guidance_scale=guidance_scale,
                               repetitions=timing_repetitions, device=workload.device, progress=progress)
    noise, labels = workload.start(search_seed, search_samples)
    sampler = PrefixSampler(workload.models, workload.scheduler, noise, labels, batch_size=batch_size,
                            guidance_scale=guidance_scale)
    signal = PairedSignal(sampler, workload.features, real_statistics=workload.real_statistics,
                          reference_steps=num_steps)
    if search == "segments":
        result = segment_search(signal, costs, workload.short, num_steps=num_steps, reference_steps=num_steps,
                                order=order, min_cost=min_cost, max_cost=max_cost, rank_by=rank_by,
                                progress=progress)
    else:
        result = greedy_search(signal, costs, workload.short, num_steps=num_steps, reference_steps=num_steps,
                               max_segments=max_segments, min_cost=min_cost, rank_by=rank_by, progress=progress)
    curve = None
    if has_fid:
        curve = fit_ratio_curve(result.scored)
    for row in result.scored:  # the FID ratio read from the ranking signal
        if rank_by == "small_fid_ratio":
            row["estimated_fid_ratio"] = row["small_fid_ratio"]
        else:
            row["estimated_fid_ratio"] = (1 + curve[0] * row["distance"] + curve[1] * row["distance"] ** 2
                                          if curve else None)
    chosen = choose(result, budget=budget, tolerance=tolerance)
    if chosen is None:
        raise ValueError(f"no searched plan meets the target (budget={budget}, tolerance={tolerance}); the "
                         f"cheapest plan searched costs {min(r['predicted_cost'] for r in result.scored):.3f}")
    search_seconds = time.perf_counter() - started
    search_cpu_seconds = time.process_time() - started_cpu

    verification = adaptive_report = None
    adaptive_winner = region_winner = None
    region_list, regions_report = (region_plans.prepare(workload, chosen["sequence"], verify_samples=verify_samples)
                                   if regions else ([], None))
    if verify_samples:
        single = [r for r in result.baseline_rows()
                  if tolerance is None or (r["estimated_fid_ratio"] <= tolerance)]
        compare = min(single, key=lambda r: r["predicted_cost"], default=None) if tolerance else None
        plans = [tuple(chosen["sequence"])] + ([tuple(compare["sequence"])] if compare else [])
        candidates, adaptive_report = prepare(workload, chosen["sequence"], noise, labels,
                                              verify_samples=verify_samples, batch_size=batch_size,
                                              guidance_scale=guidance_scale) if adaptive else ([], None)
        verification = verify_plans(workload, plans + candidates, seed=verify_seed, num_samples=verify_samples,
                                    reference_steps=num_steps, batch_size=batch_size,
                                    guidance_scale=guidance_scale, costs=costs, progress=progress)
        for row in verification["rows"]:
            if tolerance is not None and "fid_ratio" in row:
                row["meets_tolerance"] = meets(row, tolerance)
        if candidates:
            fixed = next(r for r in verification["rows"] if r["sequence"] == list(chosen["sequence"]))
            adaptive_report["candidates"] = [r for r in verification["rows"] if r["sequence"] is None]
            adaptive_winner = pick_adaptive(adaptive_report["candidates"], fixed, budget=budget, tolerance=tolerance)
            adaptive_report["chosen"] = adaptive_winner["plan"] if adaptive_winner else None
        if region_list:
            region_verification = verify_regions(workload, chosen["sequence"], region_list, seed=verify_seed,
                                                 num_samples=verify_samples, reference_steps=num_steps,
                                                 batch_size=batch_size, guidance_scale=guidance_scale, costs=costs,
                                                 progress=progress)
            region_winner = region_plans.choose(regions_report, region_verification, budget=budget,
                                                tolerance=tolerance)
    elif adaptive:
        adaptive_report = prepare(workload, chosen["sequence"], noise, labels, verify_samples=0, batch_size=batch_size,
                                  guidance_scale=guidance_scale)[1]

    plan = as_plan(chosen["sequence"], workload.short)
    details = {
        "plan": chosen["plan"], "sequence": chosen["sequence"], "num_steps": len(chosen["sequence"]),
        "models": list(workload.names), "target": {"budget": budget, "tolerance": tolerance},
        "predicted_cost": chosen["predicted_cost"], "predicted_speedup": 1 / chosen["predicted_cost"],
        "distance": chosen["distance"], "estimated_fid_ratio": chosen["estimated_fid_ratio"],
        "verification": verification, "kind": "per-step",
    }
    winner = best([w for w in (adaptive_winner, region_winner) if w is not None], tolerance=tolerance)
    if winner is not None:  # what an adaptive or a region winner shares, then its own fields
        details |= {"plan": winner["plan"], "predicted_cost": winner["predicted_cost"],
                    "predicted_speedup": 1 / winner["predicted_cost"], "distance": winner["distance"],
                    "estimated_fid_ratio": (winner.get("fid_ratio") or {}).get("ratio"), "fixed_plan": chosen["plan"]}
    if winner is not None and winner is adaptive_winner:
        plan = next(p for p in candidates if str(p) == winner["plan"])
        details |= {"sequence": None, "kind": "adaptive", "adaptive": winner["adaptive"]}
    elif winner is not None:
        mask = winner["mask_fraction"]
        plan = Plan.from_sequence(winner["sequence"], 3, region_plans.region_names(workload.short))
        details |= {"sequence": winner["sequence"], "kind": "region", "mask_fraction": mask,
                    "hybrid_steps": winner["hybrid_steps"], "models": [workload.names[0], "hybrid", workload.names[-1]],
                    "run": f"tstitch sample --plan {out} --region {mask:g} --mode diffusers --steps {num_steps}"}
    frontier = {
        "chosen": details,
        "adaptive": adaptive_report,
        "regions": regions_report,
        "models": list(workload.names), "num_steps": num_steps, "reference": f"{workload.names[-1]} alone",
        "cost_model": costs.as_dict(),
        "search": {"method": search, "rank_by": rank_by, "samples": search_samples, "seed": search_seed,
                   "seconds": search_seconds,
                   "cpu_seconds": search_cpu_seconds,
                   "search_loop_seconds": result.seconds, "model_steps": dict(zip(workload.names, result.model_steps,
                                                                                   strict=True)),
                   "large_model_equivalent_runs": sum(s * c for s, c in zip(result.model_steps, costs.step_ratios(),
                                                                           strict=True)) / (num_steps * search_samples),
                   "plans_scored": len(result.scored), "fid_curve": curve},
        "budgets": {f"{b:g}": result.best_within(b) for b in budgets},
        "frontier": result.frontier(),
        "single_fraction": result.baseline_rows(),
        "path": [result.row(s)["plan"] for s in result.path],
        "scored": result.scored,
    }
    save_plan(plan, out / "plan.json")
    write_json(out / "frontier.json", frontier)
    plot_frontier(frontier, out / "frontier.png")
    return {"plan": plan, "chosen": details, "frontier": frontier}


def plot_frontier(frontier: dict[str, Any], path: Path) -> Path:
    """Every scored plan, the searched frontier and the single-fraction frontier: signal against cost."""
    plt = pyplot()
    key = "estimated_fid_ratio" if frontier["search"]["fid_curve"] is not None else "distance"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    scored = frontier["scored"]
    ax.scatter([r["predicted_cost"] for r in scored], [r[key] for r in scored], s=8, color="0.7", label="scored plans")
    single = frontier["single_fraction"]
    ax.plot([r["predicted_cost"] for r in single], [r[key] for r in single], "o-", ms=3, color="tab:blue",
            label="T-Stitch single fraction")
    front = frontier["frontier"]
    ax.plot([r["predicted_cost"] for r in front], [r[key] for r in front], "s-", ms=3, color="tab:orange",
            label="tuned frontier")
    ax.set_yscale("log")
    ax.set_xlabel("predicted time / large model alone")
    ax.set_ylabel("estimated FID ratio (search seed)" if key != "distance" else "paired feature distance")
    ax.set_title(f"tstitch tune: {' / '.join(frontier['models'])}, {frontier['num_steps']} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
