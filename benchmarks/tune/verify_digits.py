# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Held-out verification on the digits family: tuned plans against T-Stitch's single fractions.

Samples every plan (and digits-xl alone, 20 DDIM steps) on ``--samples`` samples of each held-out seed of
``--seeds`` (never used by the search; the seeds' samples are pooled, sample ``i`` of every plan from the same
noise), keeps each plan's features in ``--cache`` (so a run cut short resumes), then times
every plan's whole sampling loop, interleaved, and writes ``verify.json`` / ``verify.png`` with the paired
FID ratio to digits-xl alone and its 95% paired-bootstrap interval, the measured and predicted cost, and
the targets: for T = 1.02, 1.05, 1.10, the cheapest single-fraction plan and the cheapest tuned plan whose
interval's upper end is <= T.

    PYTHONPATH=src python benchmarks/tune/verify_digits.py --seeds 1000 1001 --plans "S8 > XL11 > S1"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tstitch.plan import Plan
from tstitch.tune.cost import measure_step_costs
from tstitch.tune.plans import label, single_fraction
from tstitch.tune.verify import meets, sample_features, summarize, time_plans
from tstitch.tune.workload import digits_workload
from tstitch.utils import ensure_writable_dir, write_json

HERE = Path(__file__).parent
TOLERANCES = (1.02, 1.05, 1.10)
SINGLE_ORDER = (8, 10, 9, 6, 7, 11, 5, 12, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[1000])
    parser.add_argument("--plans", nargs="*", default=[], help="tuned plans, as labels (S8 > XL11 > S1)")
    parser.add_argument("--study-plans", nargs="*", default=[],
                        help="hand-picked plans (from the signal study, not the search), as labels")
    parser.add_argument("--singles", type=int, nargs="*", default=list(SINGLE_ORDER))
    parser.add_argument("--cache", default="/tmp/tstitch-tune-verify")
    parser.add_argument("--features-only", action="store_true", help="sample and cache; no timing, no report")
    parser.add_argument("--timing-repetitions", type=int, default=3)
    parser.add_argument("--timing-batch", type=int, default=500, help="batch of the timing runs and cost model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    out = ensure_writable_dir(args.out)  # before any work: a missing folder once cost a whole run's timing
    torch.set_num_threads(args.threads)
    work = digits_workload()
    names = work.short
    reference = (2,) * 20
    plans = [reference]
    tuned = [Plan.parse(p, names).sequence for p in args.plans]
    plans += tuned
    picked = [Plan.parse(p, names).sequence for p in args.study_plans]
    plans += picked
    singles = [single_fraction(k, 20, 0, 2, 3) for k in args.singles]
    plans = list(dict.fromkeys(plans + singles))
    def path_of(seed: int, sequence: tuple[int, ...]) -> Path:
        return Path(args.cache) / f"seed{seed}-n{args.samples}" / (label(sequence, names).replace(" > ", "_") + ".pt")

    for seed in args.seeds:
        path_of(seed, reference).parent.mkdir(parents=True, exist_ok=True)
        missing = [p for p in plans if not path_of(seed, p).exists()]
        sample_features(work, missing, seed=seed, num_samples=args.samples,
                        on_plan=lambda s, f, seed=seed: torch.save(f, path_of(seed, s)))
    if args.features_only:
        return
    features = {p: torch.cat([torch.load(path_of(seed, p), weights_only=True) for seed in args.seeds])
                for p in plans}
    costs = measure_step_costs(work.models, work.sample_shape, batch_size=args.timing_batch,
                               num_classes=work.num_classes)
    seconds = time_plans(work, plans, batch_size=args.timing_batch, repetitions=args.timing_repetitions,
                         seed=args.seeds[0])
    rows = summarize(work, features, seconds, reference, costs=costs, seed=args.seeds[0])
    for row in rows:
        row["kind"] = ("reference" if tuple(row["sequence"]) == reference else
                       "single fraction" if tuple(row["sequence"]) in singles else
                       "study plan" if tuple(row["sequence"]) in picked else "tuned")
    targets = {}
    for tolerance in TOLERANCES:
        best = {}
        for kind in ("single fraction", "tuned", "study plan"):
            fitting = [r for r in rows if r["kind"] in (kind, "reference" if kind == "single fraction" else kind)
                       and meets(r, tolerance)]
            best[kind] = min(fitting, key=lambda r: r["measured_cost"], default=None)
        single, mine = best["single fraction"], best["tuned"]
        targets[f"{tolerance:g}"] = {
            "single_fraction": single and single["plan"], "single_cost": single and single["measured_cost"],
            "tuned": mine and mine["plan"], "tuned_cost": mine and mine["measured_cost"],
            "tuned_over_single": (mine["measured_cost"] / single["measured_cost"]) if mine and single else None,
            "target_0.85_met": bool(mine and single and mine["measured_cost"] <= 0.85 * single["measured_cost"]),
            "study_plan": best["study plan"] and best["study plan"]["plan"],
            "study_plan_over_single": (best["study plan"]["measured_cost"] / single["measured_cost"])
            if best["study plan"] and single else None,
        }
    parity = [r for r in rows if meets(r, 1.02)]
    cheapest = min(parity, key=lambda r: r["measured_cost"])
    results = {
        "what": "held-out verification, digits family, DDIM 20 steps, reference digits-xl alone; FID ratio with a "
                "95% paired bootstrap interval (300 resamples); measured cost = median of interleaved whole-loop "
                "runs on one batch (timing_batch) over digits-xl alone's",
        "seeds": args.seeds, "num_samples": args.samples * len(args.seeds), "threads": args.threads,
        "timing_repetitions": args.timing_repetitions, "timing_batch": args.timing_batch, "cost_model": costs.as_dict(),
        "targets": targets,
        "moonshot": {"cheapest_at_parity": cheapest["plan"], "measured_cost": cheapest["measured_cost"],
                     "met": cheapest["measured_cost"] <= 0.45},
        "rows": sorted(rows, key=lambda r: r["measured_cost"]),
    }
    write_json(out / "verify.json", results)
    plot(results["rows"], out / "verify.png")
    print(json.dumps({"targets": targets, "moonshot": results["moonshot"]}, indent=1))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for kind, color in (("single fraction", "tab:blue"), ("tuned", "tab:orange"), ("study plan", "tab:green"),
                        ("reference", "black")):
        members = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["measured_cost"])
        x = [r["measured_cost"] for r in members]
        y = [r["fid_ratio"]["ratio"] for r in members]
        err = [[r["fid_ratio"]["ratio"] - r["fid_ratio"]["low"] for r in members],
               [r["fid_ratio"]["high"] - r["fid_ratio"]["ratio"] for r in members]]
        ax.errorbar(x, y, yerr=err, fmt="o", ms=3, capsize=2, color=color, label=kind)
        for r in members:
            ax.annotate(r["plan"], (r["measured_cost"], r["fid_ratio"]["ratio"]), fontsize=5, xytext=(3, 2),
                        textcoords="offset points", color=color)
    for tolerance in TOLERANCES:
        ax.axhline(tolerance, color="0.6", lw=0.6, ls="--")
    ax.set_xlabel("measured time / digits-xl alone (20 steps)")
    ax.set_ylabel("FID ratio to digits-xl alone, 95% interval")
    ax.set_title("held-out verification (paired, same noise)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
