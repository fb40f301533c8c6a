# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The demo's summary of a section (computed from its measured rows) and the CLI's table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["FID_TOLERANCE", "summarize_section", "format_table"]

#: The stitch point is the largest fraction whose FID ratio's 95% interval ends at or below this.
FID_TOLERANCE = 1.05


def summarize_section(rows: Sequence[dict[str, Any]], seconds_per_step: Sequence[float],
                      fraction_step: float) -> dict[str, Any]:
    """A section's headline numbers from its rows (the two-model rows, by fraction, with r = 0 first):

    - ``size_gap_small_over_large``: the small model's FID over the large model's;
    - ``stitch_point``: the largest fraction whose FID ratio interval ends at or below :data:`FID_TOLERANCE`,
      with its time ratio and spread (None when no fraction above 0 qualifies, or without intervals);
    - ``time_order``: whether each fraction's time spread lies wholly below the previous fraction's, and the
      pairs where the spreads overlap;
    - ``measured_over_ideal``: measured time over the per-step costs' prediction, at r = 0 and r = 1.
    """
    two = sorted((r for r in rows if len(r["models"]) == 2), key=lambda r: r["fractions"][0])
    if len(two) < 2 or two[0]["fractions"][0] != 0 or two[-1]["fractions"][0] != 1:
        raise ValueError("the rows must hold the two-model sweep from r = 0 to r = 1")
    large, small = two[0], two[-1]
    passing = [r for r in two[1:] if r["fid_vs_large_high"] <= FID_TOLERANCE]  # NaN (no interval) never passes
    best = max(passing, key=lambda r: r["fractions"][0], default=None)
    overlapping = [[a["fractions"][0], b["fractions"][0]] for a, b in zip(two, two[1:], strict=False)
                   if not b["seconds_per_image_high"] < a["seconds_per_image_low"]]
    return {
        "size_gap_small_over_large": small["fid"] / large["fid"],
        "fid_tolerance": FID_TOLERANCE,
        "stitch_point": None if best is None else {
            "fraction": best["fractions"][0],
            "fid_vs_large": best["fid_vs_large"],
            "fid_vs_large_interval": [best["fid_vs_large_low"], best["fid_vs_large_high"]],
            "time_vs_large": best["time_vs_large"],
            "time_vs_large_spread": [best["time_vs_large_low"], best["time_vs_large_high"]],
        },
        "time_order": {"fraction_step": fraction_step, "decreasing_beyond_spread": not overlapping,
                       "overlapping": overlapping},
        "step_cost_small_over_large": seconds_per_step[0] / seconds_per_step[-1],
        "measured_over_ideal": {
            "large alone": large["seconds_per_image"] / large["ideal_seconds_per_image"],
            "small alone": small["seconds_per_image"] / small["ideal_seconds_per_image"],
        },
    }


def _interval(low: float, high: float) -> str:
    return "     n/a      " if math.isnan(low) else f"[{low:5.3f},{high:6.3f}]"


def format_table(results: dict[str, Any]) -> str:
    """A readable table of every section's rows and summary, for the CLI."""
    lines = []
    for section in results["sections"]:
        lines.append(f"== {section['name']}: {' / '.join(section['models'])}, guidance {section['best_guidance']:g}")
        lines.append(f"{'schedule':<44} {'FID':>7} {'xFID':>6} {'95% interval':>14} {'acc':>6} "
                     f"{'ms/img':>7} {'(min-max)':>13} {'time':>6} {'ideal':>7}")
        for row in section["rows"]:
            lines.append(
                f"{row['schedule']:<44} {row['fid']:>7.3f} {row['fid_vs_large']:>6.3f} "
                f"{_interval(row['fid_vs_large_low'], row['fid_vs_large_high']):>14} {row['accuracy']:>6.3f} "
                f"{1000 * row['seconds_per_image']:>7.3f} "
                f"{1000 * row['seconds_per_image_low']:>6.2f}-{1000 * row['seconds_per_image_high']:<6.2f} "
                f"{row['time_vs_large']:>5.3f}x {1000 * row['ideal_seconds_per_image']:>7.3f}"
            )
        sweep = section["guidance_sweep"]
        if sweep:
            lines.append(f"guidance sweep (single models, {sweep[0]['num_samples']} samples): "
                         + ", ".join(f"{r['model']}@{r['guidance']:g}={r['fid']:.2f}" for r in sweep))
        summary = section["summary"]
        order = summary["time_order"]
        lines.append(f"size gap (FID small / FID large): {summary['size_gap_small_over_large']:.2f}x; step cost "
                     f"small / large {summary['step_cost_small_over_large']:.3f}; times fall with r beyond their "
                     "spread: " + ("yes" if order["decreasing_beyond_spread"] else
                                   "no, overlapping at " + ", ".join(f"{a:g}-{b:g}" for a, b in order["overlapping"])))
        point = summary["stitch_point"]
        lines.append(f"T-Stitch point (largest r whose xFID 95% interval ends <= {summary['fid_tolerance']:g}): " + (
            "none" if point is None else
            f"r={point['fraction']:g}: xFID {point['fid_vs_large']:.3f} "
            f"[{point['fid_vs_large_interval'][0]:.3f}, {point['fid_vs_large_interval'][1]:.3f}], time "
            f"{point['time_vs_large']:.3f}x [{point['time_vs_large_spread'][0]:.3f}, "
            f"{point['time_vs_large_spread'][1]:.3f}]"))
    for skipped in results.get("skipped_sections", []):
        lines.append(f"section {skipped['name']} left out: {skipped['reason']}")
    floor = results["floor"]
    lines.append(
        f"metric floor at n={floor['num_samples']}: real subset vs reference {floor['subset_vs_reference']:.3f}, "
        f"half vs half {floor['half_vs_half']:.3f}"
    )
    return "\n".join(lines)
