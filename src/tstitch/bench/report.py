# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The benchmark's statistics (paired ratios per repetition), its report tables and its figure."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..caching.config import CacheConfig
from ..plan import Plan
from ..utils import pyplot, save_figure
from .cases import BenchCase

__all__ = ["TARGETS", "ADAPTIVE_TARGET", "stats", "paired", "case_rows", "plan_row", "adaptive_row", "summary_of",
           "format_report", "plot_times", "cache_rows", "cache_label"]

#: The issue's targets: each a ratio measured within one run of the harness.
TARGETS = {"overhead_max": 1.01, "linearity_min": 0.98, "linearity_max": 1.02, "no_tax_max": 1.01}
#: An adaptive plan against every sample switching at one step, ``adaptive / together@k``: at most this.
ADAPTIVE_TARGET = 1.03


# -- statistics ----------------------------------------------------------------------------------------------------


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def paired(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """The ratio within each repetition (median, min, max), and the ratio of the fastest runs (``fastest``:
    on a busy machine noise only adds time, so the fastest runs are the least disturbed)."""
    ratios = stats([a / b for a, b in zip(numerators, denominators, strict=True)])
    return {**ratios, "fastest": min(numerators) / min(denominators)}


def case_rows(case: BenchCase, seconds: dict[str, list[float]], diffs: dict[float, float]) -> list[dict[str, Any]]:
    images = case.num_images
    large, small = seconds["plain@0"], seconds["plain@1"]
    t_large, t_small = statistics.median(large), statistics.median(small)
    rows = []
    for r in case.all_fractions:
        stitched, plain = seconds[f"stitched@{r:g}"], seconds[f"plain@{r:g}"]
        small_steps = Plan.from_small_fractions(r).steps_per_model(case.num_steps)[0]
        e = small_steps / case.num_steps  # the fraction of steps the small model really ran
        ideal = [(1 - e) * a + e * b for a, b in zip(large, small, strict=True)]
        rows.append({
            "fraction": r,
            "small_steps": small_steps,
            "effective_fraction": e,
            "seconds_per_image": statistics.median(stitched) / images,
            "seconds_per_image_min": min(stitched) / images,
            "seconds_per_image_max": max(stitched) / images,
            "plain_seconds_per_image": statistics.median(plain) / images,
            "ideal_seconds_per_image": ((1 - e) * t_large + e * t_small) / images,
            "overhead": paired(stitched, plain),
            "linearity": {**paired(stitched, ideal),
                          "fastest": min(stitched) / ((1 - e) * min(large) + e * min(small))},
            "speedup": paired(large, stitched),
            "ideal_speedup": 1.0 / ((1 - e) + e * t_small / t_large),
            "max_abs_diff_vs_plain": diffs.get(r),
        })
    return rows



def plan_row(case: BenchCase, seconds: dict[str, list[float]], diff: float | None,
             rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The case's per-step plan: its overhead over the plain loop beside the prefix plan's with as many
    small-model steps (the same work), and its speed-up over the large model alone."""
    stitched, plain = seconds["stitched@plan"], seconds["plain@plan"]
    prefix = next(row for row in rows if row["fraction"] == case.prefix_fraction)
    return {
        "plan": str(case.plan if case.plan.names else Plan.from_sequence(case.plan.sequence, 2, ["S", "L"])),
        "sequence": list(case.plan.assignment(case.num_steps)),
        "small_steps": case.plan.steps_per_model(case.num_steps)[0],
        "seconds_per_image": statistics.median(stitched) / case.num_images,
        "plain_seconds_per_image": statistics.median(plain) / case.num_images,
        "overhead": paired(stitched, plain),
        "prefix_fraction": case.prefix_fraction,
        "prefix_overhead": prefix["overhead"],
        "speedup": paired(seconds["plain@0"], stitched),
        "max_abs_diff_vs_plain": diff,
    }


def adaptive_row(case: BenchCase, seconds: dict[str, list[float]], switch_steps: Sequence[int], k: int,
                 timed_switch_steps: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The case's adaptive plan against ``together@k``, the fixed plan switching every sample at step ``k`` (the
    rounded mean of the switch steps of the warm-up's full run): the cost of switching per sample, and the
    speed-up over the large model alone."""
    rule = case.plan.adaptive
    together = f"together@{k}"
    adaptive, fixed = seconds["adaptive"], seconds[together]
    sequence = [rule.start_model] * k + [rule.end_model] * (case.num_steps - k)
    ratio = paired(adaptive, fixed)
    # What the model work alone predicts, from the single-model runs with time linear in the batch: k is a rounded
    # mean, so the adaptive run may give the large model a few sample-steps more or less than together@k.
    step = [statistics.median(seconds[f"plain@{r}"]) / case.num_steps for r in (1, 0)]  # small, large: a step
    before, after = step[rule.start_model], step[rule.end_model]
    per_sample = statistics.fmean(s * before + (case.num_steps - s) * after for s in switch_steps)
    together_work = k * before + (case.num_steps - k) * after
    return {
        "plan": str(case.plan),
        "direction": rule.direction,
        "switch_steps": list(switch_steps),
        "mean_switch_step": statistics.fmean(switch_steps),
        "k": k,
        "together": together,
        "together_plan": str(Plan.from_sequence(sequence, 2, ["S", "L"])),
        "seconds_per_image": statistics.median(adaptive) / case.num_images,
        "together_seconds_per_image": statistics.median(fixed) / case.num_images,
        "ratio_vs_together": ratio,
        "work_ratio": per_sample / together_work,  # 1 when k is the exact mean
        "target": ADAPTIVE_TARGET,
        "met": ratio["median"] <= ADAPTIVE_TARGET,
        "speedup": paired(seconds["plain@0"], adaptive),
        "together_speedup": paired(seconds["plain@0"], fixed),
        "timed_runs_with_other_switch_steps": sum(list(s) != list(switch_steps) for s in timed_switch_steps),
    }


def summary_of(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The worst value of each target over all cases and fractions: of the per-repetition medians (``value``,
    judged against the target) and of the fastest-run ratios (``fastest``)."""
    ratios = {
        "overhead": [(row["overhead"], f"{c['name']} r={row['fraction']:g}") for c in cases for row in c["rows"]],
        "linearity": [(row["linearity"], f"{c['name']} r={row['fraction']:g}") for c in cases for row in c["rows"]],
        "no_tax": [(c["no_tax"]["ratio"], c["name"]) for c in cases],
    }
    summary: dict[str, Any] = {}
    for key, target in TARGETS.items():
        name, side = key.rsplit("_", 1)
        values = ratios[name]
        if not values:
            summary[key] = None
            continue
        pick = min if side == "min" else max
        stats, where = pick(values, key=lambda item: item[0]["median"])
        fastest, fastest_where = pick(values, key=lambda item: item[0]["fastest"])
        met = stats["median"] >= target if side == "min" else stats["median"] <= target
        summary[key] = {"value": stats["median"], "where": where, "target": target, "met": met,
                        "fastest": fastest["fastest"], "fastest_where": fastest_where}
    return summary



# -- report -----------------------------------------------------------------------------------------------------


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def _ratio(stats: dict[str, float]) -> str:
    return f"{stats['median']:.3f} [{stats['min']:.3f}-{stats['max']:.3f}]"


def _steps(steps: Sequence[int]) -> str:
    """Switch steps in short, in step order, each with its count of samples: ``2 (9), 8 (7)``."""
    return ", ".join(f"{step} ({list(steps).count(step)})" for step in sorted(set(steps)))


def format_report(results: dict[str, Any]) -> str:
    """The tables the CLI prints: per case, time per image and the ratios at each fraction."""
    lines = [f"machine: {results['machine']['label']}; fast paths: {results['fast_paths_label']}"]
    dispatch = results["dispatch"]
    lines.append(f"stitching dispatch: {dispatch['overhead_us_per_step']:.1f} us per step ("
                 f"{dispatch['stitched_us_per_step']:.1f} vs {dispatch['direct_us_per_step']:.1f} us, no-op model)")
    for case in results["cases"]:
        lines.append("")
        lines.append(f"{case['name']}: {case['small']['name']} ({case['small']['parameters'] / 1e6:.1f}M) -> "
                     f"{case['large']['name']} ({case['large']['parameters'] / 1e6:.1f}M), {case['scheduler']} "
                     f"{case['num_steps']} steps, {case['num_images']} images, guidance {case['guidance_scale']:g}, "
                     f"{case['dtype']}, {case['repetitions']} repetitions (median [min-max])")
        lines.append(f"  {'r':>4} {'ms/img':>10} {'ideal':>10} {'overhead':>21} {'linearity':>21} "
                     f"{'speed-up':>21} {'ideal':>6}")
        for row in case["rows"]:
            lines.append(
                f"  {row['fraction']:>4.2g} {1000 * row['seconds_per_image']:>10.2f} "
                f"{1000 * row['ideal_seconds_per_image']:>10.2f} {_ratio(row['overhead']):>21} "
                f"{_ratio(row['linearity']):>21} {_ratio(row['speedup']):>21} {row['ideal_speedup']:>5.2f}x"
            )
        if "plan" in case:
            plan = case["plan"]
            lines.append(f"  plan {plan['plan']}: {1000 * plan['seconds_per_image']:.2f} ms/img, overhead "
                         f"{_ratio(plan['overhead'])} (the prefix plan with as many small steps, "
                         f"r={plan['prefix_fraction']:g}: {_ratio(plan['prefix_overhead'])}), speed-up "
                         f"{_ratio(plan['speedup'])}, max |difference| vs plain loop "
                         f"{plan['max_abs_diff_vs_plain']:.3g}")
        if "adaptive" in case:
            row = case["adaptive"]
            lines.append(f"  plan {row['plan']}: {1000 * row['seconds_per_image']:.2f} ms/img, switch step "
                         f"(samples) {_steps(row['switch_steps'])}, k={row['k']} ({row['together_plan']}); adaptive / "
                         f"{row['together']} {_ratio(row['ratio_vs_together'])} (model work alone "
                         f"{row['work_ratio']:.3f}; target {row['target']}: "
                         f"{'met' if row['met'] else 'MISSED'}), speed-up {_ratio(row['speedup'])}")
        no_tax = case["no_tax"]
        lines.append(f"  no tax: stitched at r=0 / {no_tax['baseline']}: {_ratio(no_tax['ratio'])}")
        diffs = [row["max_abs_diff_vs_plain"] for row in case["rows"] if row["max_abs_diff_vs_plain"] is not None]
        if diffs:
            lines.append(f"  stitched output vs plain loop: max |difference| {max(diffs):.3g}")
        memory = case.get("memory")
        if memory and "stitched" in memory:
            lines.append(
                f"  peak memory: large alone {_mib(memory['large_alone']['peak_bytes'])}, stitched "
                f"{_mib(memory['stitched']['peak_bytes'])}: +{_mib(memory['stitched_minus_large_bytes'])} = small "
                f"weights {_mib(memory['small_weight_bytes'])} {memory['beyond_small_weights_bytes']:+,} bytes"
            )
            if "offloaded" in memory:
                lines.append(f"  peak memory with offloading: {_mib(memory['offloaded']['peak_bytes'])}")
        if "compile" in case:
            compiled = case["compile"]
            lines.append(f"  compile: {compiled['compile_seconds']:.1f} s (apart from sampling); graphs compiled "
                         f"during the timed runs: {compiled['graphs_compiled_during_timing']}")
        for row in case.get("cache", {}).get("rows", []):
            lines.append(f"  cache {case['cache']['label']} at r={row['fraction']:g}: "
                         f"{1000 * row['seconds_per_image']:.2f} ms/img, {_ratio(row['ratio_vs_stitched'])}x stitched")
        if "offload" in case:
            offload = case["offload"]
            ratio = offload["ratio_vs_stitched"]
            lines.append(f"  offload at r={offload['fraction']:g}: {1000 * offload['seconds_per_image']:.2f} ms/img"
                         + (f", {_ratio(ratio)}x the stitched run" if ratio else "")
                         + f", transfers {offload['transfer_seconds_per_run']['median']:.3f} s per run")
    lines.append("")
    lines.append("targets (worst median of the per-repetition ratios; in brackets the worst ratio of the fastest "
                 "runs):")
    for key, entry in results["summary"].items():
        if entry is not None:
            lines.append(f"  {key.replace('_', ' '):<14} {entry['value']:.3f} at {entry['where']:<22} target "
                         f"{entry['target']}: {'met' if entry['met'] else 'MISSED'}  [{entry['fastest']:.3f} at "
                         f"{entry['fastest_where']}]")
    return "\n".join(lines)


def plot_times(results: dict[str, Any], path: str | Path) -> Path:
    """Time per image against the fraction of the small model, one panel per case: measured points (median,
    min-max bars), the plain loop, and the ideal line ``(1 - r) * T_large + r * T_small``; a case's ``--plan``
    at its share of small-model steps (an adaptive plan at its mean, beside ``together@k``)."""
    plt = pyplot()
    cases = results["cases"]
    columns = min(len(cases), 2)
    rows_of_panels = math.ceil(len(cases) / columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(5.2 * columns, 3.9 * rows_of_panels + 0.4),
                             squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases):
        rows = case["rows"]
        x = [row["effective_fraction"] for row in rows]
        y = [1000 * row["seconds_per_image"] for row in rows]
        low = [y_ - 1000 * row["seconds_per_image_min"] for y_, row in zip(y, rows, strict=True)]
        high = [1000 * row["seconds_per_image_max"] - y_ for y_, row in zip(y, rows, strict=True)]
        ends = [rows[0], rows[-1]]
        ax.plot([r["effective_fraction"] for r in ends], [1000 * r["ideal_seconds_per_image"] for r in ends], "--",
                color="tab:green", label="ideal (1-r) T_large + r T_small", zorder=1)
        ax.scatter(x, [1000 * row["plain_seconds_per_image"] for row in rows], marker="x", color="gray",
                   label="plain loop", zorder=2)
        ax.errorbar(x, y, yerr=[low, high], fmt="o", color="tab:blue", capsize=3, label="stitched (median, min-max)",
                    zorder=3)
        _plot_plans(ax, case)
        ax.set_title(f"{case['name']}: {case['small']['name']} -> {case['large']['name']}\n"
                     f"{case['num_steps']} steps, {case['num_images']} images", fontsize=9)
        ax.set_xlabel("fraction of steps on the small model")
        ax.set_ylabel("ms per image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"time per image against the fraction of the small model: {results['machine']['label']}"
                 f" ({results['fast_paths_label']})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(fig, path)


def _plot_plans(ax: Any, case: dict[str, Any]) -> None:
    """The case's ``--plan`` point on a panel of :func:`plot_times` (medians; the spread is in the report)."""
    steps = case["num_steps"]
    if "plan" in case:
        row = case["plan"]
        ax.scatter([row["small_steps"] / steps], [1000 * row["seconds_per_image"]], marker="D", color="tab:purple",
                   label=f"plan {row['plan']}", zorder=4)
    if "adaptive" in case:
        row = case["adaptive"]
        small_first = row["direction"] == "small-first"
        small = row["mean_switch_step"] if small_first else steps - row["mean_switch_step"]
        together = row["k"] if small_first else steps - row["k"]
        ax.scatter([small / steps], [1000 * row["seconds_per_image"]], marker="*", s=90, color="tab:red",
                   label=f"adaptive ({row['direction']}, mean of each sample's steps)", zorder=4)
        ax.scatter([together / steps], [1000 * row["together_seconds_per_image"]], marker="s", facecolors="none",
                   edgecolors="tab:red", label=f"{row['together']}: every sample at step {row['k']}", zorder=4)


# -- the cached runs: time per image and the ratio to the same stitch without caches --------------------------


def cache_label(cache: Mapping[int, CacheConfig], model_names: Sequence[str]) -> str:
    """``large first-block:0.05, small deepcache:2``: what is cached where."""
    return ", ".join(f"{model_names[index]} {config.spec()}" for index, config in sorted(cache.items()))


def cache_rows(cache: Mapping[int, CacheConfig], model_names: Sequence[str], fractions: Sequence[float],
               seconds: Mapping[str, list[float]], num_images: int) -> dict[str, Any]:
    """Per fraction ``r``: ``cached@r``'s seconds per image and its per-repetition ratio to ``stitched@r``."""
    rows = []
    for r in fractions:
        mine, base = seconds.get(f"cached@{r:g}", []), seconds.get(f"stitched@{r:g}", [])
        count = min(len(mine), len(base))
        if count:
            rows.append({"fraction": r, "seconds_per_image": statistics.median(mine) / num_images,
                         "ratio_vs_stitched": paired(mine[:count], base[:count])})
    return {"label": cache_label(cache, model_names), "caches": {model_names[i]: c.spec() for i, c in cache.items()},
            "rows": rows}
