# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Stitching, feature caching and both: digits-FID (95% intervals) against measured time on the embedded family.

    PYTHONPATH=src python3 benchmarks/cache/study.py --out benchmarks/cache            # digits-s -> digits-xl
    PYTHONPATH=src python3 benchmarks/cache/study.py --models digits-unet-s digits-unet --out DIR   # U-Nets
    PYTHONPATH=src python3 benchmarks/cache/study.py --xl-timing --out DIR   # DiT-XL/2 shapes, random weights

Every point samples the same noise and labels (paired with the large model alone) in shards; the shards of all
points run interleaved (shard k of every point, the points' order rotated at each shard), so that a busy
machine slows all points alike, and each point's time is the median over shards of its time over the large
model's in the same shard (``--clock wall``, the default: wall-clock time; ``--clock cpu``: the sampling
thread's CPU time, which time spent waiting while other jobs hold the cores does not inflate on a shared
machine; both are recorded). Sampling runs on one CPU thread. FID intervals: the paired jackknife
of ``tstitch.tune.stats.jackknife_fid_ratio`` (20 groups; FID of the point over FID of the large model
alone), times the large
model's FID. Writes ``cache_study.json`` and ``cache_frontier.png`` (``cache_study_unet.json`` and
``cache_frontier_unet.png`` for a U-Net pair; ``cache_xl_timing.json`` with --xl-timing).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from tstitch import StitchedDenoiser, sample
from tstitch.caching import cached, get_cache_record, parse_cache_spec
from tstitch.caching.base import inner_denoiser
from tstitch.metrics import FeatureFID
from tstitch.tune.stats import jackknife_fid_ratio
from tstitch.tune.workload import digits_workload
from tstitch.utils import ensure_writable_dir, write_json

logger = logging.getLogger("cache-study")

DIT_CACHES = ("first-block:0.05", "first-block:0.1", "first-block:0.2", "taylorseer:3:2:1", "taylorseer:2:3:2")
DIT_JOINT = ("first-block:0.05", "first-block:0.1", "taylorseer:3:2:1")
UNET_CACHES = ("deepcache:2", "deepcache:3", "deepcache:4")
UNET_JOINT = ("deepcache:2", "deepcache:3")
BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs=2, default=["digits-s", "digits-xl"], metavar=("SMALL", "LARGE"))
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=4, help="interleaved shards of the samples (timed each)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="the time of the frontier: wall clock, or the sampling thread's CPU time")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                        help="stitching alone")
    parser.add_argument("--caches", nargs="+", help="caching alone, on the large model (default: by model kind)")
    parser.add_argument("--joint-fractions", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    parser.add_argument("--joint-caches", nargs="+", help="caches of the joint points (default: by model kind)")
    parser.add_argument("--groups", type=int, default=20, help="jackknife groups of the FID intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/cache-study")
    parser.add_argument("--xl-timing", action="store_true", help="only the DiT-XL/2-shape timing (random weights)")
    parser.add_argument("--xl-batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--xl-steps", type=int, default=5)
    return parser.parse_args()


# -- the digits study ------------------------------------------------------------------------------------------

def run_point(workload: Any, fraction: float, cache: str | None, noise: torch.Tensor, labels: torch.Tensor,
              args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, float], list[str]]:
    denoiser = StitchedDenoiser(workload.models, fraction)
    scheduler = copy.deepcopy(workload.scheduler)
    with cached(denoiser, {1: cache} if cache else {}):
        start, start_cpu = time.perf_counter(), time.thread_time()
        out = sample(denoiser, None, scheduler, noise=noise, class_labels=labels, num_inference_steps=args.steps,
                     guidance_scale=args.guidance)
        seconds = {"wall": time.perf_counter() - start, "cpu": time.thread_time() - start_cpu}
        summary = get_cache_record(denoiser).summary() if cache else []
    return out.latents, seconds, summary


def kind_of(fraction: float, cache: str | None) -> str:
    if fraction == 0 and cache is None:
        return "large alone"
    return "both" if fraction > 0 and cache else "caching" if cache else "stitching"


def study(args: argparse.Namespace) -> dict[str, Any]:
    workload = digits_workload(tuple(args.models))
    large = workload.models[-1]
    is_unet = hasattr(inner_denoiser(large), "down_blocks")  # the digits U-Nets sit in a class-embedder wrapper
    caches = args.caches or list(UNET_CACHES if is_unet else DIT_CACHES)
    joint = args.joint_caches or list(UNET_JOINT if is_unet else DIT_JOINT)
    for spec in (*caches, *joint):
        parse_cache_spec(spec)  # bad specs fail now
    points = [(0.0, None), *[(r, None) for r in args.fractions], *[(0.0, c) for c in caches],
              *[(r, c) for r in args.joint_fractions for c in joint]]
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.samples, *workload.sample_shape, generator=generator)
    labels = torch.arange(args.samples) % workload.num_classes
    shards = [range(args.samples)[k::args.shards] for k in range(args.shards)]
    latents: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(points))}
    seconds: dict[int, list[dict[str, float]]] = {i: [] for i in range(len(points))}
    records: dict[int, list[str]] = {}
    torch.set_num_threads(1)
    run_point(workload, 0.5, caches[0], noise[:8], labels[:8], args)  # warm-up
    begin = time.perf_counter()
    for k, shard in enumerate(shards):
        index = torch.tensor(list(shard))
        order = list(range(len(points)))
        order = order[k % len(order):] + order[: k % len(order)]
        for i in (order if k % 2 == 0 else order[::-1]):
            fraction, cache = points[i]
            out, secs, summary = run_point(workload, fraction, cache, noise[index], labels[index], args)
            latents[i].append(out)
            seconds[i].append(secs)
            records[i] = summary
        logger.warning("shard %d/%d done (%.0f s)", k + 1, len(shards), time.perf_counter() - begin)

    # back to sample order (the shards are strided, so shard order groups labels by parity), where the
    # jackknife's consecutive groups each hold every label equally often
    restore = torch.argsort(torch.cat([torch.tensor(list(shard)) for shard in shards]))
    features = {i: workload.features(torch.cat(latents[i])[restore]) for i in latents}
    fid_large = FeatureFID(statistics=workload.real_statistics).score_features(features[0])
    rows = []
    for i, (fraction, cache) in enumerate(points):
        estimate = jackknife_fid_ratio(features[i], features[0], workload.real_statistics, groups=args.groups)
        ratios = {clock: [a[clock] / b[clock] for a, b in zip(seconds[i], seconds[0], strict=True)]
                  for clock in ("wall", "cpu")}
        rows.append({
            "kind": kind_of(fraction, cache), "fraction": fraction, "cache": cache or "none",
            "time_vs_large": statistics.median(ratios[args.clock]), "time_ratios": ratios[args.clock],
            **{f"time_vs_large_{clock}": statistics.median(ratios[clock]) for clock in ratios},
            "seconds_per_image": sum(s["wall"] for s in seconds[i]) / args.samples,
            "cpu_seconds_per_image": sum(s["cpu"] for s in seconds[i]) / args.samples,
            "fid": estimate.ratio * fid_large, "fid_low": estimate.low * fid_large,
            "fid_high": estimate.high * fid_large, "fid_ratio": estimate.as_dict(), "record": records[i],
        })
    return {
        "models": list(args.models), "num_samples": args.samples, "shards": args.shards, "steps": args.steps,
        "guidance_scale": args.guidance, "scheduler": "DDIM (the family's schedule)", "threads": 1,
        "clock": args.clock,
        "denoiser": "unet" if is_unet else "dit",
        "fid_large": fid_large, "sampling_seconds": time.perf_counter() - begin, "rows": rows,
        "targets": targets(rows),
    }


def best_within(rows: list[dict[str, Any]], budget: float, kinds: tuple[str, ...]) -> dict[str, Any] | None:
    fits = [r for r in rows if r["kind"] in kinds and r["time_vs_large"] <= budget]
    return min(fits, key=lambda r: r["fid"], default=None)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """At each time budget: the best joint point against the best single-method point (lowest FID within it);
    met where the joint point's upper 95% bound is below the single point's lower bound."""
    per_budget = []
    for budget in BUDGETS:
        single = best_within(rows, budget, ("stitching", "caching", "large alone"))
        both = best_within(rows, budget, ("both",))
        entry = {"budget": budget, "single": None if single is None else f"{single['kind']} r={single['fraction']:g} "
                 f"{single['cache']}", "both": None if both is None else f"r={both['fraction']:g} {both['cache']}"}
        if single and both:
            entry.update(single_fid=[single["fid_low"], single["fid"], single["fid_high"]],
                         both_fid=[both["fid_low"], both["fid"], both["fid_high"]],
                         met=both["fid_high"] < single["fid_low"], joint_better_point=both["fid"] < single["fid"])
        elif both:
            entry.update(both_fid=[both["fid_low"], both["fid"], both["fid_high"]], met=False,
                         note="no single-method point within this budget (not counted as met)")
        else:
            entry["met"] = False
        per_budget.append(entry)
    return {"budgets": per_budget, "met_at": [e["budget"] for e in per_budget if e["met"]],
            "target": "met at >= 2 budgets in 0.3-0.8x" if sum(e["met"] for e in per_budget) >= 2 else "missed"}


def frontier(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no faster point beats in FID, by time."""
    out, best = [], float("inf")
    for row in sorted(rows, key=lambda r: r["time_vs_large"]):
        if row["fid"] < best:
            out.append(row)
            best = row["fid"]
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    from tstitch.experiments.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {"stitching": ("tab:blue", "o"), "caching": ("tab:orange", "s"), "both": ("tab:green", "^"),
              "large alone": ("black", "*")}
    rows = results["rows"]
    for kind, (color, marker) in styles.items():
        mine = [r for r in rows if r["kind"] in (kind, "large alone")] if kind != "large alone" else []
        for r in (r for r in rows if r["kind"] == kind):
            ax.errorbar(r["time_vs_large"], r["fid"], yerr=[[r["fid"] - r["fid_low"]], [r["fid_high"] - r["fid"]]],
                        color=color, marker=marker, capsize=2, linestyle="none", alpha=0.8)
        if mine:
            line = frontier(mine)
            ax.step([r["time_vs_large"] for r in line], [r["fid"] for r in line], where="post", color=color,
                    label=f"{kind} frontier", alpha=0.7)
    for r in rows:
        if r["kind"] != "large alone":
            label = (f"{r['fraction']:g}" if r["cache"] == "none" else
                     r["cache"] if r["fraction"] == 0 else f"{r['fraction']:g}+{r['cache']}")
            ax.annotate(label, (r["time_vs_large"], r["fid"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.scatter([1.0], [results["fid_large"]], color="black", marker="*", s=80, label=f"{results['models'][1]} alone")
    ax.axvspan(0.3, 0.8, color="grey", alpha=0.08)
    clock = "CPU time" if results.get("clock") == "cpu" else "time"
    ax.set_xlabel(f"{clock} / {results['models'][1]} alone (median of {results['shards']} interleaved shards)")
    ax.set_ylabel(f"digits-FID (95% paired jackknife), {results['num_samples']} samples")
    ax.set_title(f"{results['models'][0]} -> {results['models'][1]}: stitching, caching and both "
                 f"(DDIM {results['steps']} steps)", fontsize=9)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    save_figure(fig, path)


# -- DiT-XL/2 shapes ----------------------------------------------------------------------------------------------

XL_CACHES = (None, "first-block:1e9", "taylorseer:100:1:1")  # every step after the first reused / predicted


def stamper(log: list[float]) -> Any:
    """A step callback that notes the time of every step's end."""
    return lambda _: log.append(time.perf_counter())


def xl_timing(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per step of DiT-XL/2 (random weights, 256x256) on computed and on reused steps, per cache."""
    from diffusers import DDIMScheduler

    from tstitch.bench import dit_model

    model = dit_model("DiT-XL/2")
    rows = []
    for batch in args.xl_batches:
        noise = torch.randn(batch, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        labels = torch.arange(batch) % 1000
        for cache in XL_CACHES:
            denoiser = StitchedDenoiser([model], [])
            stamps: list[float] = []
            with cached(denoiser, {0: cache} if cache else {}):
                start = time.perf_counter()
                sample(denoiser, None, DDIMScheduler(), noise=noise, class_labels=labels,
                       num_inference_steps=args.xl_steps, callback=stamper(stamps))
                computed = [c.computed is not False for c in get_cache_record(denoiser).calls] if cache else \
                    [True] * args.xl_steps
            steps = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
            full = [s for s, c in zip(steps, computed, strict=True) if c]
            reused = [s for s, c in zip(steps, computed, strict=True) if not c]
            rows.append({"batch": batch, "cache": cache or "none", "step_seconds": steps, "computed": computed,
                         "median_full_step": statistics.median(full[1:] or full),
                         "median_reused_step": statistics.median(reused) if reused else None})
            logger.warning("DiT-XL/2 batch %d %s: %s", batch, cache or "none", rows[-1])
    return {"model": "DiT-XL/2 (random weights), 32x32x4 latents, DDIM", "threads": torch.get_num_threads(),
            "rows": rows}


def main() -> None:
    args = parse_args()
    out = ensure_writable_dir(args.out)
    if args.xl_timing:
        write_json(out / "cache_xl_timing.json", xl_timing(args))
        return
    results = study(args)
    suffix = "_unet" if results["denoiser"] == "unet" else ""  # the DiT and U-Net studies side by side
    write_json(out / f"cache_study{suffix}.json", results)
    plot(results, out / f"cache_frontier{suffix}.png")
    for r in results["rows"]:
        print(f"{r['kind']:>12} r={r['fraction']:<4g} {r['cache']:<18} time {r['time_vs_large']:.3f}  "
              f"FID {r['fid']:.3f} [{r['fid_low']:.3f}, {r['fid_high']:.3f}]  {'; '.join(r['record'])}")
    print(results["targets"])


if __name__ == "__main__":
    main()
