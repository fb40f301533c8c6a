# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""T-Stitch against its successors on the digits DiTs (issue 22, item 4): digits-FID ratio to the large model
alone (95% paired jackknife), paired distance to the large model's image, interleaved time.

    PYTHONPATH=src python3 benchmarks/successors/study.py --out benchmarks/successors            # every method
    PYTHONPATH=src python3 benchmarks/successors/study.py --methods t-stitch large-first --out DIR  # baseline
    PYTHONPATH=src python3 benchmarks/successors/study.py --samples 40 --quick --out DIR              # a check

Methods (``--methods``): ``t-stitch`` (digits-s for the first fraction r of the steps, digits-xl after; r = 0 is
digits-xl alone, the reference of every ratio), ``large-first`` (digits-xl first, then digits-s: fixed plans),
``adaptive`` (per-sample switching, small-first and large-first, :mod:`tstitch.adaptive`) and ``regions``
(HybridStitch's hybrid stage, :mod:`tstitch.regions`, in large-first and small-first plans).

Every method samples the same held-out samples: sample ``i`` has its own noise generator (``sample_noise(seed,
i)``, the stream ``tstitch evaluate`` uses) and the label ``i % 10``; the default seed 22 is used by nothing that
was tuned (the adaptive thresholds and region plans were picked on seed 21, ``--seed 21``). The samples run in
``--chunks`` consecutive chunks; chunk k of every method runs before chunk k + 1 of any, the methods' order
rotated by k and reversed on odd k, so a slow spell of the shared machine hits every method alike. A time is
the median over chunks of the method's time over digits-xl's in the same chunk (``--clock cpu``, the default:
the sampling thread's CPU time, which waiting for a core on a loaded machine does not inflate; the wall-clock
ratios are recorded too). Sampling runs on one CPU thread (``torch.set_num_threads(1)``), so that two runs side
by side do not fight over threads.

Paired distance: the analogue of LPIPS (Zhang et al., 2018) in the network that defines digits-FID. LPIPS
normalises a network's activations to unit length across channels at every position, and averages the squared
differences over positions, summed over layers; its uncalibrated form (all channel weights 1) is what is used
here, on the four ReLU outputs of the digits classifier (32x8x8, 64x8x8, 64x4x4, 64). Each value lies in
[0, 8] (ReLU activations: at most 2 per layer). Its interval is the mean +- t * sd / sqrt(n) over the samples.
Pixel RMSE (images clamped to [-1, 1]) is recorded beside it.

Writes ``results.json`` and ``frontier.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import multiprocessing
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tstitch import Plan, StitchedDenoiser, sample
from tstitch.experiments.evaluation_files import sample_labels, sample_noise
from tstitch.experiments.timing import chunk_bounds, ratio_spread, spread
from tstitch.metrics import FeatureFID
from tstitch.tune.stats import jackknife_fid_ratio
from tstitch.tune.workload import digits_workload
from tstitch.utils import ensure_writable_dir, pyplot, save_figure, write_json
from tstitch.zoo import load_classifier

logger = logging.getLogger("successors-study")

FAMILIES = ("large alone", "t-stitch", "large-first", "adaptive small-first", "adaptive large-first",
            "region large-first", "region small-first")
METHOD_GROUPS = {"t-stitch": ("large alone", "t-stitch"), "large-first": ("large-first",),
                 "adaptive": ("adaptive small-first", "adaptive large-first"),
                 "regions": ("region large-first", "region small-first")}
SUCCESSORS = FAMILIES[3:]
#: "T-Stitch's best fraction", fixed before any successor was measured: the largest fraction whose FID-ratio
#: interval ends at or below this (the demo's rule).
BEST_FRACTION_LIMIT = 1.05
DEFAULT_MODELS = ("digits-s", "digits-xl")
UNET_MODELS = ("digits-unet-s", "digits-unet")
TIME_FACTOR = 0.85  # target (a): at most this share of the best fraction's time
DISTANCE_FACTOR = 0.8  # target (b): at most this share of T-Stitch's distance at equal time


# -- the pure parts: point selection, the curve, the verdicts ------------------------------------------------------

def best_fraction(rows: Sequence[dict[str, Any]], limit: float = BEST_FRACTION_LIMIT) -> dict[str, Any]:
    """T-Stitch's best fraction: the largest fraction whose FID-ratio interval ends at or below ``limit``
    (digits-xl alone, r = 0, when no other does)."""
    fits = [r for r in rows if r["family"] in ("t-stitch", "large alone") and r["fid_ratio"]["high"] <= limit]
    if not fits:
        raise ValueError("no T-Stitch point (not even the large model alone) has an interval ending <= limit")
    return max(fits, key=lambda r: r["params"]["fraction"])


def bracket(times: Sequence[float], at: float) -> tuple[int, int, float] | None:
    """Where ``at`` falls on a curve measured at ``times``: ``(i, j, w)`` such that the value at ``at`` is
    ``(1 - w) value[i] + w value[j]`` (linear in time between the two nearest points around it, in time order);
    ``None`` outside the measured range."""
    order = sorted(range(len(times)), key=lambda k: times[k])
    if not order or not times[order[0]] <= at <= times[order[-1]]:
        return None
    for i, j in zip(order, order[1:], strict=False):
        if times[i] <= at <= times[j]:
            span = times[j] - times[i]
            return i, j, 0.0 if span == 0 else (at - times[i]) / span
    return order[0], order[0], 0.0  # one point, exactly at it


def interpolate(times: Sequence[float], values: Sequence[float], at: float) -> float | None:
    """The curve ``values`` over ``times`` at time ``at`` (linear between neighbours; ``None`` outside)."""
    where = bracket(times, at)
    if where is None:
        return None
    i, j, w = where
    return (1 - w) * values[i] + w * values[j]


def ratio_of_means(values: torch.Tensor, reference: torch.Tensor, groups: int = 20,
                   confidence: float = 0.95) -> dict[str, float]:
    """``mean(values) / mean(reference)`` of paired per-sample values, with a delete-a-group jackknife interval
    (consecutive groups, the same rows left out of both)."""
    from scipy.stats import t as student_t

    ratio = float(values.mean() / reference.mean())
    keep = torch.ones(len(values), dtype=torch.bool)
    partial = []
    for members in torch.arange(len(values)).chunk(groups):
        keep[members] = False
        partial.append(float(values[keep].mean() / reference[keep].mean()))
        keep[members] = True
    part = torch.tensor(partial, dtype=torch.float64)
    error = math.sqrt((groups - 1) / groups * float(((part - part.mean()) ** 2).sum()))
    half = float(student_t.ppf(0.5 + confidence / 2, groups - 1)) * error
    return {"ratio": ratio, "low": ratio - half, "high": ratio + half}


def mean_interval(values: torch.Tensor, confidence: float = 0.95) -> dict[str, float]:
    """Mean of per-sample values with ``mean +- t * sd / sqrt(n)``."""
    from scipy.stats import t as student_t

    n = len(values)
    mean = float(values.double().mean())
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * float(values.double().std()) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half}


def target_a(rows: Sequence[dict[str, Any]], best: dict[str, Any],
             time_factor: float = TIME_FACTOR) -> dict[str, Any]:
    """Target (a): a successor point whose FID-ratio interval ends at or below the best fraction's, at no more
    than ``time_factor`` of the best fraction's time."""
    budget = time_factor * best["time"]["ratio"]
    candidates = [r for r in rows if r["family"] in SUCCESSORS]
    passing = [r for r in candidates if r["time"]["ratio"] <= budget
               and r["fid_ratio"]["high"] <= best["fid_ratio"]["high"]]
    within = [r for r in candidates if r["time"]["ratio"] <= budget]
    closest = min(within, key=lambda r: r["fid_ratio"]["high"], default=None)
    return {"best_fraction": best["params"]["fraction"], "best_time": best["time"]["ratio"],
            "best_high": best["fid_ratio"]["high"], "time_budget": budget, "met": bool(passing),
            "passing": [r["label"] for r in passing],
            "closest_within_budget": None if closest is None else
            {"label": closest["label"], "time": closest["time"]["ratio"], "high": closest["fid_ratio"]["high"]}}


def verdict_limit(value: float | None, limit: float) -> dict[str, Any]:
    """A measured value against an upper limit (targets c and d): met when ``value <= limit``."""
    return {"value": value, "limit": limit, "met": None if value is None else value <= limit}


# -- methods -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One point of the study: its family, a label and what defines it."""

    family: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.family}: {self.label}"


def segments_sequence(segments: Sequence[tuple[int, float]], num_steps: int) -> list[int]:
    """Model indices per step of ``(model, share of the steps)`` segments; the last segment takes the rest
    (shares cumulate and round down as fraction plans do)."""
    sequence, edge, total = [], 0, 0.0
    for i, (model, share) in enumerate(segments):
        total += share
        stop = num_steps if i == len(segments) - 1 else min(num_steps, math.floor(total * num_steps + 1e-6))
        sequence += [model] * (stop - edge)
        edge = stop
    return sequence


def methods_of(args: argparse.Namespace) -> list[Method]:
    families = {f for group in args.methods for f in METHOD_GROUPS[group]} | {"large alone"}
    out = [Method("large alone", f"{args.models[1]} alone", {"fraction": 0.0})]
    if "t-stitch" in families:
        out += [Method("t-stitch", f"r={r:g}", {"fraction": r}) for r in args.fractions if r > 0]
    if "large-first" in families:
        out += [Method("large-first", f"XL {x:g} > S", {"large_share": x}) for x in args.large_first]
    if "adaptive small-first" in families:
        low, high = args.adaptive_small_bounds
        out += [Method("adaptive small-first", f"x0-change>{t:g}", {"direction": "small-first", "threshold": t,
                                                                     "min_switch": low, "max_switch": high})
                for t in args.adaptive_small]
    if "adaptive large-first" in families:
        low, high = args.adaptive_large_bounds
        out += [Method("adaptive large-first", f"x0-change<{t:g}", {"direction": "large-first", "threshold": t,
                                                                     "min_switch": low, "max_switch": high})
                for t in args.adaptive_large]
    for family, shares in (("region large-first", args.region_large_first),
                           ("region small-first", args.region_small_first)):
        if family in families:
            names = ("XL", "H", "S") if family == "region large-first" else ("S", "H", "XL")
            text = " > ".join(f"{n} {s:g}" for n, s in zip(names, [*shares, 1 - sum(shares)], strict=True))
            out += [Method(family, f"{text} @mask {m:g}", {"segments": [list(p) for p in zip(
                names, [*shares, 1 - sum(shares)], strict=True)], "mask_fraction": m}) for m in args.masks]
    return out


@dataclass
class Runner:
    """A method ready to sample: its denoiser and what to read back after each run."""

    denoiser: StitchedDenoiser
    info: Callable[[], dict[str, Any]]
    reset: Callable[[], None] = lambda: None


def build(method: Method, small: nn.Module, large: nn.Module, num_steps: int) -> Runner:
    """The method's stitched denoiser over ``[digits-s, (hybrid,) digits-xl]``."""
    p = method.params
    if method.family in ("large alone", "t-stitch"):
        denoiser = StitchedDenoiser([small, large], Plan.coerce(p["fraction"], 2))
        return Runner(denoiser, lambda: {"steps": denoiser.record.steps_per_model()})
    if method.family == "large-first":
        k = math.floor(p["large_share"] * num_steps + 1e-6)
        denoiser = StitchedDenoiser([small, large], Plan.from_sequence([1] * k + [0] * (num_steps - k), 2))
        return Runner(denoiser, lambda: {"steps": denoiser.record.steps_per_model()})
    if method.family.startswith("adaptive"):
        from tstitch.adaptive import AdaptiveRule  # the adaptive plans (issue 22, item 1)

        rule = AdaptiveRule(p["direction"], p["threshold"], p["min_switch"], p["max_switch"])
        denoiser = StitchedDenoiser([small, large], Plan(adaptive=rule))

        def adaptive_info() -> dict[str, Any]:
            return {"switch_steps": list(denoiser.record.switch_steps),
                    "switch_models": list(denoiser.record.switch_models)}
        return Runner(denoiser, adaptive_info)
    from tstitch.regions import HybridDenoiser  # region-level stitching (issue 22, item 2)

    hybrid = HybridDenoiser(small, large, mask_fraction=p["mask_fraction"])
    index = {"S": 0, "H": 1, "XL": 2}
    sequence = segments_sequence([(index[n], s) for n, s in p["segments"]], num_steps)
    denoiser = StitchedDenoiser([small, hybrid, large], Plan.from_sequence(sequence, 3, names=("S", "H", "XL")))
    hybrid.attach(denoiser)

    def region_info() -> dict[str, Any]:
        calls = hybrid.record.calls
        return {"steps": denoiser.record.steps_per_model(),
                "hybrid_calls": [{"mode": c.mode, "mask_fraction_used": c.mask_fraction_used} for c in calls]}
    # The hybrid's key/value cache is filled by any full call of digits-xl (other methods' runs included) and
    # outlives a run; attach() resets only its record. So it is emptied before every run of this method: the
    # hybrid steps then see only digits-xl calls of their own trajectory.
    return Runner(denoiser, region_info, hybrid.reset)


# -- the paired distance -------------------------------------------------------------------------------------------

@torch.no_grad()
def activations(classifier: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The classifier's ReLU outputs, each ``(N, C, H, W)`` (the last as ``(N, 64, 1, 1)``)."""
    x, out = images.float().clamp(-1, 1), []
    for layer in classifier.body:
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            out.append(x if x.ndim == 4 else x[:, :, None, None])
    return out


def digits_lpips(classifier: nn.Module, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-sample uncalibrated LPIPS in the digits classifier (see the module's docstring)."""
    total = torch.zeros(len(images), dtype=torch.float64)
    for a, b in zip(activations(classifier, images), activations(classifier, reference), strict=True):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total += (a - b).square().sum(1).mean((1, 2)).double()
    return total


def pixel_rmse(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (images.clamp(-1, 1) - reference.clamp(-1, 1)).double().square().mean((1, 2, 3)).sqrt()


# -- the run -------------------------------------------------------------------------------------------------------

def chunk_order(num_methods: int, chunk: int) -> list[int]:
    """The methods' order in chunk ``chunk``: rotated by the chunk's index, reversed on odd chunks."""
    order = list(range(num_methods))
    order = order[chunk % num_methods:] + order[: chunk % num_methods]
    return order[::-1] if chunk % 2 else order


def run_chunk(runner: Runner, scheduler: Any, noise: torch.Tensor, labels: torch.Tensor,
              args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
    runner.reset()
    start, start_cpu = time.perf_counter(), time.thread_time()
    out = sample(runner.denoiser, None, scheduler, noise=noise, class_labels=labels,
                 num_inference_steps=args.steps, guidance_scale=args.guidance)
    seconds = {"wall": time.perf_counter() - start, "cpu": time.thread_time() - start_cpu}
    return out.latents, seconds, runner.info()


def denoiser_kind(models: Sequence[str]) -> str:
    """``"U-Net"`` for the embedded U-Net pair (``digits-unet-s``, ``digits-unet``), else ``"DiT"``."""
    return "U-Net" if all("unet" in name for name in models) else "DiT"


def output_names(models: Sequence[str]) -> tuple[str, str]:
    """The results file and figure of a pair: ``results.json``/``frontier.png`` for the DiTs (the default),
    ``results_unet.json``/``frontier_unet.png`` for the U-Nets, and the pair's names as the suffix for any other
    pair, so that the studies sit side by side."""
    if tuple(models) == DEFAULT_MODELS:
        suffix = ""
    elif tuple(models) == UNET_MODELS:
        suffix = "_unet"
    else:
        suffix = "_" + "-".join(models)
    return f"results{suffix}.json", f"frontier{suffix}.png"


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def summarize_info(method: Method, infos: list[dict[str, Any]], num_steps: int,
                   models: Sequence[str] = ("digits-s", "digits-xl")) -> dict[str, Any]:
    """Steps per model (mean per sample), and the adaptive switch steps or the regions' mask fractions."""
    if method.family.startswith("adaptive"):
        switches = [s for info in infos for s in info["switch_steps"]]
        start, end = infos[0]["switch_models"]
        names = list(models)
        mean_switch = statistics.fmean(switches)
        steps = {names[start]: mean_switch, names[end]: num_steps - mean_switch}
        return {"steps_per_model": steps, "switch_step_counts": dict(sorted(Counter(switches).items())),
                "switch_step_median": statistics.median(switches), "switch_step_mean": mean_switch}
    names = list(models) if len(infos[0]["steps"]) == 2 else [models[0], "hybrid", models[1]]
    out: dict[str, Any] = {"steps_per_model": dict(zip(names, infos[0]["steps"], strict=True))}
    if "hybrid_calls" in infos[0]:
        calls = infos[0]["hybrid_calls"]
        out["mask_fraction_per_hybrid_step"] = [c["mask_fraction_used"] for c in calls]
        out["hybrid_modes"] = [c["mode"] for c in calls]
    return out


def sample_chunks(args: argparse.Namespace, chunks: Sequence[int]) -> dict[str, Any]:
    """Run ``chunks`` (indices into the chunk bounds) of every method, interleaved: chunk k of every method
    before the next chunk of any, in :func:`chunk_order`. One process, one thread."""
    torch.set_num_threads(1)
    workload = digits_workload(tuple(args.models))
    small, large = workload.models
    methods = methods_of(args)
    bounds = chunk_bounds(args.samples, args.chunks)
    runners = [build(m, small, large, args.steps) for m in methods]
    warm = list(range(4))
    for runner in runners:  # warm-up, and every method fails now rather than after the first chunk
        run_chunk(runner, copy.deepcopy(workload.scheduler), sample_noise(args.seed + 10**6, warm,
                  workload.sample_shape), sample_labels(warm, workload.num_classes), args)
    out: dict[str, Any] = {"latents": {}, "seconds": {}, "infos": {}}
    begin = time.perf_counter()
    for n, k in enumerate(chunks):
        lo, hi = bounds[k]
        indices = list(range(lo, hi))
        noise = sample_noise(args.seed, indices, workload.sample_shape)
        labels = sample_labels(indices, workload.num_classes)
        for i in chunk_order(len(methods), k):
            latents, secs, info = run_chunk(runners[i], copy.deepcopy(workload.scheduler), noise, labels, args)
            out["latents"][i, k], out["seconds"][i, k], out["infos"][i, k] = latents, secs, info
        logger.warning("chunk %d (%d/%d of this process) done (%.0f s, load %.2f)", k + 1, n + 1, len(chunks),
                       time.perf_counter() - begin, os.getloadavg()[0])
    return out


def study(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    begin = time.perf_counter()
    workload = digits_workload(tuple(args.models))
    classifier = load_classifier()
    methods = methods_of(args)
    labels = sample_labels(list(range(args.samples)), workload.num_classes)
    bounds = chunk_bounds(args.samples, args.chunks)
    sampling_start = time.perf_counter()
    if args.workers == 1:
        done = [sample_chunks(args, range(len(bounds)))]
    else:  # chunk k in process k % workers, each process one thread and every method interleaved
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            done = list(pool.map(sample_chunks, [args] * args.workers,
                                 [range(w, len(bounds), args.workers) for w in range(args.workers)]))
    sampling_seconds = time.perf_counter() - sampling_start
    merged = {key: {ik: v for part in done for ik, v in part[key].items()} for key in done[0]}
    chunk_ids = range(len(bounds))
    parts = {i: [merged["latents"][i, k] for k in chunk_ids] for i in range(len(methods))}
    seconds = {i: [merged["seconds"][i, k] for k in chunk_ids] for i in range(len(methods))}
    infos = {i: [merged["infos"][i, k] for k in chunk_ids] for i in range(len(methods))}

    latents = {i: torch.cat(parts[i]) for i in parts}
    features = {i: workload.features(latents[i]) for i in latents}
    fid_large = FeatureFID(statistics=workload.real_statistics).score_features(features[0])
    with torch.no_grad():
        accuracy = {i: float((classifier.logits(latents[i].clamp(-1, 1)).argmax(1) == labels).float().mean())
                    for i in latents}
    distances = {i: digits_lpips(classifier, latents[i], latents[0]) for i in latents}
    rmse = {i: pixel_rmse(latents[i], latents[0]) for i in latents}
    rows = []
    for i, method in enumerate(methods):
        estimate = jackknife_fid_ratio(features[i], features[0], workload.real_statistics, groups=args.groups)
        times = {clock: ratio_spread([s[clock] for s in seconds[i]], [s[clock] for s in seconds[0]])
                 for clock in ("cpu", "wall")}
        rows.append({
            "family": method.family, "label": method.label, "params": method.params,
            "fid": estimate.ratio * fid_large, "fid_low": estimate.low * fid_large,
            "fid_high": estimate.high * fid_large,
            "fid_ratio": {"ratio": estimate.ratio, "low": estimate.low, "high": estimate.high,
                          "method": estimate.method},
            "accuracy": accuracy[i],
            "distance": mean_interval(distances[i]), "pixel_rmse": mean_interval(rmse[i]),
            "time": {"ratio": times[args.clock].median, "min": times[args.clock].low,
                     "max": times[args.clock].high, "clock": args.clock},
            **{f"time_{clock}": {"ratio": t.median, "min": t.low, "max": t.high} for clock, t in times.items()},
            "chunk_seconds": seconds[i],
            "seconds_per_image": {clock: spread([s[clock] / (hi - lo) for s, (lo, hi)
                                                 in zip(seconds[i], bounds, strict=True)]).median
                                  for clock in ("cpu", "wall")},
            **summarize_info(method, infos[i], args.steps, args.models),
        })
    results = {
        "what": f"T-Stitch and its successors on the digits {denoiser_kind(args.models)}s (issue 22, item 4)",
        "models": list(args.models), "denoiser": denoiser_kind(args.models),
        "num_samples": args.samples, "chunks": args.chunks,
        "steps": args.steps, "scheduler": "DDIM (the family's schedule)", "guidance_scale": args.guidance,
        "seed": args.seed, "noise": "per-sample generator: tstitch.experiments.evaluation_files.sample_noise",
        "labels": "i % 10", "jackknife_groups": args.groups, "clock": args.clock, "workers": args.workers,
        "distance": "uncalibrated LPIPS on the digits classifier's 4 ReLU outputs (unit-normalised over channels, "
                    "squared differences averaged over positions, summed over layers) to digits-xl's image from "
                    "the same noise; interval: mean +- t sd / sqrt(n)".replace("digits-xl", args.models[1]),
        "fid_large": fid_large,
        "machine": {**machine(), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "sampling_seconds": sampling_seconds, "total_seconds": time.perf_counter() - begin,
        "rows": rows,
    }
    results["targets"] = targets(rows, distances, methods, args)
    return results


def targets(rows: list[dict[str, Any]], distances: dict[int, torch.Tensor], methods: list[Method],
            args: argparse.Namespace) -> dict[str, Any]:
    """The four targets of issue 22: (a), (b) from this run; (c), (d) from the files their owners write."""
    best = best_fraction(rows)
    curve = [i for i, r in enumerate(rows) if r["family"] in ("t-stitch", "large alone")]
    curve_times = [rows[i]["time"]["ratio"] for i in curve]
    per_point = []
    for i, row in enumerate(rows):
        if row["family"] not in SUCCESSORS:
            continue
        where = bracket(curve_times, row["time"]["ratio"])
        entry: dict[str, Any] = {"label": row["label"], "family": row["family"], "time": row["time"]["ratio"],
                                 "distance": row["distance"]["mean"]}
        if where is None:
            entry["note"] = "outside T-Stitch's measured time range"
        else:
            a, b, w = where
            reference = (1 - w) * distances[curve[a]] + w * distances[curve[b]]
            entry.update(tstitch_distance=float(reference.mean()),
                         between=[rows[curve[a]]["label"], rows[curve[b]]["label"]], weight=w,
                         ratio=ratio_of_means(distances[i], reference, args.groups))
        per_point.append(entry)
    ratios = [e for e in per_point if "ratio" in e]
    met_b = [e["label"] for e in ratios if e["ratio"]["ratio"] <= DISTANCE_FACTOR]
    external = {}
    for name in ("regions_cost.json", "adaptive_overhead.json"):
        path = Path(args.results_dir) / name
        external[name] = json.loads(path.read_text()) if path.exists() else None
    return {
        "best_fraction_rule": f"largest T-Stitch fraction whose FID-ratio interval ends <= {BEST_FRACTION_LIMIT}",
        "a": target_a(rows, best),
        "b": {"rule": f"successor's mean distance <= {DISTANCE_FACTOR} x T-Stitch's at its time (per-sample "
                      "distances of the two T-Stitch points around that time, mixed linearly in time; ratio of "
                      "means with a paired 20-group jackknife interval)",
              "met": bool(met_b), "passing": met_b, "points": per_point},
        "c": external_target_c(external["regions_cost.json"]),
        "d": external_target_d(external["adaptive_overhead.json"]),
    }


def external_target_c(data: dict[str, Any] | None) -> dict[str, Any]:
    """Target (c) from the regions engineer's ``regions_cost.json``: a region step at mask 0.3 over a full
    DiT-XL/2 step (batch 8) <= 0.45."""
    value = None if data is None else data.get("target", {}).get("measured_ratio")
    return {"file": "benchmarks/results/regions_cost.json", "present": data is not None,
            **verdict_limit(value, 0.45), "machine": None if data is None else data.get("machine")}


def external_target_d(data: dict[str, Any] | None) -> dict[str, Any]:
    """Target (d) from the adaptive engineer's ``adaptive_overhead.json``: an adaptive plan whose samples all
    switch at one step against the equal fraction plan, overhead <= 3% (median ratio - 1; the file's wall-clock
    ratio, its CPU-time ratio beside it)."""
    if data is None:
        return {"file": "benchmarks/results/adaptive_overhead.json", "present": False, **verdict_limit(None, 0.03)}
    wall, cpu = data.get("median_ratio"), data.get("median_cpu_ratio")
    return {"file": "benchmarks/results/adaptive_overhead.json", "present": True,
            **verdict_limit(None if wall is None else wall - 1, 0.03),
            "cpu_overhead": None if cpu is None else cpu - 1, "machinery_share": data.get("machinery_share"),
            "same_latents": data.get("same_latents")}


# -- the figure ----------------------------------------------------------------------------------------------------

STYLES = {"large alone": ("black", "*"), "t-stitch": ("tab:blue", "o"), "large-first": ("tab:red", "v"),
          "adaptive small-first": ("tab:green", "^"), "adaptive large-first": ("tab:olive", "<"),
          "region large-first": ("tab:purple", "s"), "region small-first": ("tab:pink", "D")}


def frontier(rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> list[dict[str, Any]]:
    """The points no faster point beats on ``key`` (lower is better), by time."""
    out, best = [], float("inf")
    for row in sorted(rows, key=lambda r: r["time"]["ratio"]):
        if key(row) < best:
            out.append(row)
            best = key(row)
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    rows = results["rows"]
    small, large = results.get("models", ["digits-s", "digits-xl"])
    panels = ((lambda r: r["fid_ratio"]["ratio"], lambda r: (r["fid_ratio"]["low"], r["fid_ratio"]["high"]),
               f"digits-FID / {large}'s (95% paired jackknife), {results['num_samples']} samples"),
              (lambda r: r["distance"]["mean"], lambda r: (r["distance"]["low"], r["distance"]["high"]),
               f"paired distance to {large}'s image (digits-LPIPS, mean, 95%)"))
    for ax, (value, interval, ylabel) in zip(axes, panels, strict=True):
        for family, (color, marker) in STYLES.items():
            mine = [r for r in rows if r["family"] == family]
            for r in mine:
                low, high = interval(r)
                ax.errorbar(r["time"]["ratio"], value(r), yerr=[[value(r) - low], [high - value(r)]],
                            xerr=[[r["time"]["ratio"] - r["time"]["min"]], [r["time"]["max"] - r["time"]["ratio"]]],
                            color=color, marker=marker, capsize=2, linestyle="none", alpha=0.85,
                            label=family if r is mine[0] else None)
                if family != "large alone":
                    ax.annotate(r["label"].replace("x0-change", "").replace(" @mask ", " m"),
                                (r["time"]["ratio"], value(r)), fontsize=5, xytext=(3, 2),
                                textcoords="offset points")
        curve = sorted((r for r in rows if r["family"] in ("t-stitch", "large alone")),
                       key=lambda r: r["time"]["ratio"])
        ax.plot([r["time"]["ratio"] for r in curve], [value(r) for r in curve], color="tab:blue", alpha=0.5)
        line = frontier(rows, value)
        ax.step([r["time"]["ratio"] for r in line], [value(r) for r in line], where="post", color="grey",
                linestyle="--", alpha=0.8, label="frontier (all methods)")
        ax.set_xlabel(f"{'CPU ' if results['clock'] == 'cpu' else ''}time / {large} alone "
                      f"(median of {results['chunks']} interleaved chunks, min-max)")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_yscale("symlog" if ax is axes[1] else "log", **({"linthresh": 0.05} if ax is axes[1] else {}))
        ax.grid(alpha=0.2)
    axes[0].axhline(BEST_FRACTION_LIMIT, color="grey", linewidth=0.6)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{small} / {large}, DDIM {results['steps']} steps, guidance {results['guidance_scale']:g}: "
                 "T-Stitch and its successors", fontsize=10)
    save_figure(fig, path)


def markdown_table(results: dict[str, Any]) -> str:
    """The table of docs/successors.md, from a results.json."""
    lines = ["| method | plan | steps S / H / XL | CPU time [min-max] | FID | FID ratio [95%] | distance [95%] | acc |",
             "|---|---|---|---|---|---|---|---|"]
    small, large = results.get("models", ["digits-s", "digits-xl"])
    for r in results["rows"]:
        steps = r["steps_per_model"]
        counts = " / ".join(f"{steps[k]:.3g}" if k in steps else "-" for k in (small, "hybrid", large))
        f, d, t = r["fid_ratio"], r["distance"], r["time"]
        lines.append(f"| {r['family']} | {r['label']} | {counts} | {t['ratio']:.3f} [{t['min']:.3f}, {t['max']:.3f}] "
                     f"| {r['fid']:.2f} | {f['ratio']:.3f} [{f['low']:.3f}, {f['high']:.3f}] "
                     f"| {d['mean']:.4f} [{d['low']:.4f}, {d['high']:.4f}] | {r['accuracy']:.3f} |")
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs=2, default=list(DEFAULT_MODELS), metavar=("SMALL", "LARGE"),
                        help="the pair, small then large (zoo names); the U-Nets: digits-unet-s digits-unet "
                        "(region plans are DiT-only)")
    parser.add_argument("--methods", nargs="+", choices=list(METHOD_GROUPS), default=None,
                        help="default: every method (the DiTs), every method but regions (U-Nets)")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--chunks", type=int, default=6, help="interleaved chunks of the samples (timed each)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="processes (one thread each); chunk k runs in "
                        "process k %% workers, every method interleaved within each process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=22, help="held-out samples' seed (21: the probe's)")
    parser.add_argument("--groups", type=int, default=20, help="jackknife groups")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0])
    parser.add_argument("--large-first", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                        help="share of the steps digits-xl runs first, before digits-s")
    parser.add_argument("--adaptive-small", type=float, nargs="+", default=[0.07, 0.08, 0.09],
                        help="small-first thresholds (x0-change above: switch to digits-xl)")
    parser.add_argument("--adaptive-small-bounds", type=float, nargs=2, default=[0.4, 0.8], metavar=("MIN", "MAX"))
    parser.add_argument("--adaptive-large", type=float, nargs="+", default=[0.04, 0.06, 0.1],
                        help="large-first thresholds (x0-change below: switch to digits-s)")
    parser.add_argument("--adaptive-large-bounds", type=float, nargs=2, default=[0.25, 1.0], metavar=("MIN", "MAX"))
    parser.add_argument("--region-large-first", type=float, nargs=2, default=[0.4, 0.4], metavar=("XL", "H"),
                        help="shares of digits-xl then the hybrid stage; digits-s the rest")
    parser.add_argument("--region-small-first", type=float, nargs=2, default=[0.4, 0.2], metavar=("S", "H"),
                        help="shares of digits-s then the hybrid stage; digits-xl the rest")
    parser.add_argument("--masks", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--results-dir", default="benchmarks/results", help="where regions_cost.json and "
                        "adaptive_overhead.json are (targets c and d)")
    parser.add_argument("--table", metavar="RESULTS_JSON", help="print the table of a results.json; run nothing")
    parser.add_argument("--quick", action="store_true", help="a check: 8 steps, 2 chunks, 4 groups, few points")
    parser.add_argument("--out", default="outputs/successors")
    args = parser.parse_args(argv)
    unet = denoiser_kind(args.models) == "U-Net"
    if args.methods is None:
        args.methods = [m for m in METHOD_GROUPS if not (unet and m == "regions")]
    if unet and "regions" in args.methods:
        parser.error("region plans need DiTs (HybridDenoiser computes a token subset); --methods without regions")
    if args.quick:
        args.steps, args.chunks, args.groups = 8, 2, 4
        args.fractions, args.large_first, args.masks = [0.5, 1.0], [0.5], [0.3]
        args.adaptive_small, args.adaptive_large = args.adaptive_small[:1], args.adaptive_large[:1]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.table:
        results = json.loads(Path(args.table).read_text())
        print(markdown_table(results))
        return results
    out = ensure_writable_dir(args.out)
    results = study(args)
    results_name, figure_name = output_names(args.models)
    write_json(out / results_name, results)
    plot(results, out / figure_name)
    for r in results["rows"]:
        print(f"{r['family']:>21} {r['label']:<28} time {r['time']['ratio']:.3f} [{r['time']['min']:.3f}, "
              f"{r['time']['max']:.3f}]  FID {r['fid']:7.3f}  ratio {r['fid_ratio']['ratio']:.3f} "
              f"[{r['fid_ratio']['low']:.3f}, {r['fid_ratio']['high']:.3f}]  dist {r['distance']['mean']:.4f}")
    print(json.dumps({k: v for k, v in results["targets"].items() if k != "b"}, indent=1))
    print("b met:", results["targets"]["b"]["met"], results["targets"]["b"]["passing"])
    return results


if __name__ == "__main__":
    main()
