# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Does the cheap paired signal rank plans as the paired FID ratio does? (the embedded digits family)

For 30 varied plans (prefixes, three and four segments, the large model first, fewer steps, single models)
it measures the paired FID ratio to digits-xl alone (20 DDIM steps) on ``--truth-samples`` samples of one
seed, and the search's signals on ``--signal-samples`` samples of another seed (the one the search uses),
then the Spearman correlations. Writes ``signal_study.json`` and ``signal_study.png`` next to this file.

    PYTHONPATH=src python benchmarks/tune/signal_study.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tstitch.plan import Plan
from tstitch.tune.cost import measure_step_costs
from tstitch.tune.engine import PrefixSampler
from tstitch.tune.plans import label
from tstitch.tune.quality import PairedSignal
from tstitch.tune.stats import paired_fid_ratio, spearman
from tstitch.tune.workload import digits_workload
from tstitch.utils import write_json

PLANS = [
    # single fractions S k > XL (20 - k)
    "S6 > XL14", "S8 > XL12", "S9 > XL11", "S10 > XL10", "S11 > XL9", "S12 > XL8", "S14 > XL6",
    # fewer steps (the step count is part of the plan)
    "XL16", "XL12", "S8 > XL8", "S6 > XL6",
    # three and four segments, digits-b before and after the large model
    "S8 > B2 > XL8 > B2", "S9 > XL8 > B3", "S6 > B4 > XL10", "S10 > B2 > XL8", "S8 > XL10 > B2",
    "S10 > XL8 > B2", "S12 > XL6 > B2", "S6 > XL8 > B6", "S4 > B6 > XL10", "S7 > B3 > XL8 > B2",
    "S8 > B4 > XL6 > B2", "S8 > XL4 > B8", "S10 > XL5 > B5",
    # other orders and single models
    "B10 > XL10", "XL6 > S14", "XL10 > S10", "B20", "S20", "S10 > B10",
]
NAMES = ["S", "B", "XL"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth-samples", type=int, default=300)
    parser.add_argument("--signal-samples", type=int, default=128)
    parser.add_argument("--truth-seed", type=int, default=1)
    parser.add_argument("--signal-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = digits_workload()
    costs = measure_step_costs(work.models, work.sample_shape, batch_size=500, num_classes=work.num_classes)
    sequences = [Plan.parse(p, NAMES).sequence for p in PLANS]

    start = time.perf_counter()
    noise, labels = work.start(args.truth_seed, args.truth_samples)
    truth_sampler = PrefixSampler(work.models, work.scheduler, noise, labels, batch_size=500)
    truth = PairedSignal(truth_sampler, work.features, real_statistics=work.real_statistics)
    noise, labels = work.start(args.signal_seed, args.signal_samples)
    signal_sampler = PrefixSampler(work.models, work.scheduler, noise, labels, batch_size=500)
    signal = PairedSignal(signal_sampler, work.features, real_statistics=work.real_statistics)
    half = PairedSignal(PrefixSampler(work.models, work.scheduler, noise[:64], labels[:64], batch_size=500),
                        work.features, real_statistics=work.real_statistics)
    rows = []
    for sequence in sequences:
        truth_features = truth.features_of(sequence)
        estimate = paired_fid_ratio(truth_features, truth.reference, work.real_statistics, resamples=300)
        cheap = signal.score(sequence)
        small = half.score(sequence)
        rows.append({
            "plan": label(sequence, NAMES), "steps": len(sequence),
            "predicted_cost": costs.relative(sequence, 20),
            "fid_ratio": estimate.ratio, "fid_ratio_low": estimate.low, "fid_ratio_high": estimate.high,
            "distance": cheap.distance, "small_fid_ratio": cheap.fid_ratio,
            "distance_64": small.distance, "small_fid_ratio_64": small.fid_ratio,
        })
        print(json.dumps(rows[-1]), flush=True)
    seconds = time.perf_counter() - start
    truth_ratio = [r["fid_ratio"] for r in rows]
    results = {
        "what": "paired signals on the search's seed against the paired FID ratio on another seed, digits "
                "family, DDIM, reference digits-xl alone at 20 steps",
        "truth": {"samples": args.truth_samples, "seed": args.truth_seed, "bootstrap_resamples": 300},
        "signal": {"samples": args.signal_samples, "seed": args.signal_seed},
        "threads": args.threads, "seconds": seconds, "cost_model": costs.as_dict(),
        "model_steps": {"truth": truth_sampler.model_steps, "signal": signal_sampler.model_steps},
        "spearman": {
            "distance": spearman([r["distance"] for r in rows], truth_ratio),
            "small_fid_ratio": spearman([r["small_fid_ratio"] for r in rows], truth_ratio),
            "distance_64": spearman([r["distance_64"] for r in rows], truth_ratio),
            "small_fid_ratio_64": spearman([r["small_fid_ratio_64"] for r in rows], truth_ratio),
        },
        "rows": rows,
    }
    out = Path(args.out)
    write_json(out / "signal_study.json", results)
    plot(rows, results["spearman"], out / "signal_study.png")
    print(json.dumps(results["spearman"]))


def plot(rows: list[dict], rho: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, name in ((axes[0], "distance", "paired feature distance"),
                          (axes[1], "small_fid_ratio", "paired FID ratio, small n")):
        ax.scatter([r[key] for r in rows], [r["fid_ratio"] for r in rows], s=14)
        for r in rows:
            ax.annotate(r["plan"], (r[key], r["fid_ratio"]), fontsize=5, xytext=(2, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{name} (search seed)")
        ax.set_ylabel("paired FID ratio to digits-xl alone (held-out seed)")
        ax.set_title(f"Spearman {rho[key]:.3f}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
