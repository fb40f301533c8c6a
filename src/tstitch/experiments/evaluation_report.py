# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Scoring the evaluation's schedules and writing its report (process 0 only).

Every schedule of a run starts sample ``i`` from the same noise and label (per-sample seeds), so each
schedule's samples pair with the large model's own: the FID ratio to the large model alone gets a 95%
interval from a paired resampling of the samples' features (:func:`add_fid_intervals`, with
:mod:`tstitch.tune.stats`). The features are kept beside the metrics (``<schedule>/features.npy``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..metrics import (
    DigitsFeatures,
    FeatureSpace,
    InceptionFeatures,
    Reference,
    extract,
    images_to_uint8,
    load_inception,
    load_reference,
    npz_batches,
    score_features,
)
from ..tune.stats import RatioEstimate, gaussian_statistics, jackknife_fid_ratio, paired_fid_ratio
from ..utils import atomic_write, write_csv, write_json
from ..zoo import load_classifier
from ..zoo.data import load_digits_tensors
from .evaluation_files import fingerprint, samples_ok
from .plots import plot_pareto
from .study import Allocation, add_relative_columns

if TYPE_CHECKING:
    from .evaluate import EvaluationRun

logger = logging.getLogger(__name__)

__all__ = ["metric_space", "score_schedule", "result_row", "earlier_rows", "write_report", "format_rows",
           "fid_ratio_interval", "add_fid_intervals"]

FEATURES_FILE = "features.npy"
INTERVAL_RESAMPLES = 300
# The paired delete-a-group jackknife is the interval: no row repeats, so both FIDs keep their bias at (nearly)
# the full sample size. The paired bootstrap's repeated rows inflate both FIDs; on the digits family at 600
# samples its intervals were 2-5x wider than the spread between independent seed sets (the jackknife's
# matched it; README, demo section). The bootstrap is left for runs too small to split into the groups.
JACKKNIFE_GROUPS = 10


def metric_space(run: EvaluationRun) -> tuple[FeatureSpace, Reference, dict[str, Any]]:
    """The feature space, the reference and the metric settings (the key of each ``metrics.json``)."""
    config, device = run.config, run.device
    key: dict[str, Any] = {"metric": run.metric, "pr_k": config.pr_k, "is_splits": config.is_splits}
    if run.metric == "digits":
        space = DigitsFeatures(load_classifier(device=device))
        if config.reference is None:
            digits, _ = load_digits_tensors()
            features, _ = extract(space, [images_to_uint8(digits)])
            reference = Reference(features, source="the 1,797 scikit-learn digits")
        else:
            reference = load_reference(config.reference, space, batch_size=config.metric_batch_size,
                                       cache_dir=run.out)
        key["classifier"] = fingerprint(space.classifier)
    else:
        network = load_inception(config.inception_weights, device=device)
        space = InceptionFeatures(network)
        reference = load_reference(config.reference, space, batch_size=config.metric_batch_size, cache_dir=run.out)
        key["inception"] = fingerprint(network)
    key["reference"] = reference.source
    if config.reference is not None:
        stat = Path(config.reference).stat()
        key["reference_file"] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return space, reference, key


def score_schedule(run: EvaluationRun, schedule: Allocation, space: FeatureSpace, reference: Reference,
           key: dict[str, Any]) -> dict[str, float]:
    """The schedule's metrics (from ``metrics.json`` when it was scored with ``key`` already); its features
    are kept in ``features.npy`` for the FID ratio's interval."""
    folder = run.folder(schedule)
    path = folder / "metrics.json"
    if path.is_file() and (folder / FEATURES_FILE).is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key and stored.get("settings_hash") == run.settings_hash:
            return stored["metrics"]
    npz = folder / "samples.npz"
    features, logits = extract(space, npz_batches(npz, "arr_0", run.config.metric_batch_size))
    array = features.float().cpu().numpy()
    atomic_write(folder / FEATURES_FILE, lambda tmp: np.save(tmp, array))
    with np.load(npz) as stored_samples:
        labels = torch.from_numpy(stored_samples["arr_1"])
    metrics = score_features(features, logits, reference, labels=labels if space.labels_match_logits else None,
                             k=run.config.pr_k, splits=run.config.is_splits)
    write_json(path, {"key": key, "settings_hash": run.settings_hash, "metrics": metrics})
    return metrics


def result_row(run: EvaluationRun, schedule: Allocation, metrics: dict[str, float] | None) -> dict[str, Any]:
    folder = run.folder(schedule)
    info = json.loads((folder / "samples.json").read_text())
    row: dict[str, Any] = {
        "schedule": schedule.label,
        "models": list(schedule.models),
        "fractions": list(schedule.small_fractions),
        "num_samples": run.num_samples,
        "steps": run.num_steps,
        "sampler": f"{run.mode}/{run.scheduler}",
        "guidance": run.guidance,
        "seed": run.config.seed,
        "batch_size": run.batch_size,
        "seconds_per_image": info["sampling_seconds"] / run.num_samples,
        "decode_seconds_per_image": info["decode_seconds"] / run.num_samples,
    }
    if metrics is not None:
        row["metric"] = run.metric
        row.update(metrics)
    row["samples"] = str((folder / "samples.npz").relative_to(run.out))
    row["model_per_step"] = info["model_per_step"]
    return row


def fid_ratio_interval(features: torch.Tensor, alone_features: torch.Tensor, reference: Reference, *,
                       confidence: float = 0.95, seed: int = 0) -> RatioEstimate:
    """The FID ratio of paired sample sets (row ``i`` of each from the same noise and label) with its interval:
    the delete-a-group jackknife (10 groups, the same rows left out of both sets); runs of fewer than
    20 samples take the paired bootstrap (bias-corrected, :func:`~tstitch.tune.stats.paired_fid_ratio`)."""
    if reference.mean is not None and reference.cov is not None:
        real = (torch.as_tensor(reference.mean, dtype=torch.float64),
                torch.as_tensor(reference.cov, dtype=torch.float64))
    else:
        real = gaussian_statistics(reference.features)
    features, alone_features = features.double(), alone_features.double()
    if len(features) < 2 * JACKKNIFE_GROUPS:
        return paired_fid_ratio(features, alone_features, real, resamples=INTERVAL_RESAMPLES,
                                confidence=confidence, seed=seed)
    return jackknife_fid_ratio(features, alone_features, real, groups=JACKKNIFE_GROUPS, confidence=confidence)


def add_fid_intervals(run: EvaluationRun, rows: Sequence[dict[str, Any]], reference: Reference) -> None:
    """Add ``fid_vs_large_low`` / ``fid_vs_large_high`` (95%) and ``fid_vs_large_interval`` (the method) to the
    rows with an FID, from their features paired with the large model alone's (the row without fractions)."""
    alone = [r for r in rows if not any(r["fractions"]) and "fid" in r]
    if not alone:
        return

    def features_of(row: dict[str, Any]) -> torch.Tensor:
        return torch.from_numpy(np.load(run.out / Path(row["samples"]).parent / FEATURES_FILE))

    alone_features = features_of(alone[0])
    for row in rows:
        if "fid" not in row:
            continue
        features = features_of(row)
        if features.shape != alone_features.shape:  # not paired (cannot happen within one manifest)
            logger.warning("no FID interval for %s: %d samples, the large model alone %d", row["schedule"],
                           len(features), len(alone_features))
            continue
        estimate = fid_ratio_interval(features, alone_features, reference, seed=run.config.seed)
        row["fid_vs_large_low"], row["fid_vs_large_high"] = estimate.low, estimate.high
        row["fid_vs_large_interval"] = f"95% {estimate.method}"


def earlier_rows(run: EvaluationRun, space: FeatureSpace | None, reference: Reference | None,
                 key: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows of the schedules that an earlier run finished in ``run.out`` with the same sampling settings but
    that this run does not include (say, a sweep, then one more fraction): the folder's table keeps them."""
    current = {run.folder(schedule).name for schedule in run.schedules}
    rows = []
    for info_path in sorted(run.out.glob("*/samples.json")):
        folder = info_path.parent
        if folder.name in current:
            continue
        try:
            info = json.loads(info_path.read_text())
            schedule = Allocation(tuple(info["models"]), tuple(float(f) for f in info["fractions"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (info.get("settings_hash") != run.settings_hash or run.folder(schedule) != folder
                or not samples_ok(folder / "samples.npz", run.num_samples, run.image_shape)):
            continue
        metrics = score_schedule(run, schedule, space, reference, key) if space is not None else None
        rows.append(result_row(run, schedule, metrics))
    return rows


def write_report(run: EvaluationRun, rows: list[dict[str, Any]], metric_key: dict[str, Any] | None,
                 world: int, earlier: Sequence[str] = ()) -> list[Path]:
    """``results.json`` (with ``earlier_schedules``: the rows of earlier runs), ``results.csv`` and, with a
    metric and two rows or more, ``pareto.png``."""
    alone = [r for r in rows if not any(r["fractions"])]  # the large model alone
    if alone and "fid" in alone[0]:
        for row in rows:
            add_relative_columns(row, alone[0])
    files = [
        write_json(run.out / "results.json", {
            "settings": run.settings, "metric": metric_key, "device": str(run.device), "processes": world,
            "torch_threads": torch.get_num_threads(), "earlier_schedules": list(earlier), "rows": rows,
        }),
        write_csv(run.out / "results.csv", [{k: v for k, v in r.items() if k != "model_per_step"} for r in rows]),
    ]
    if metric_key is not None and len(rows) > 1:
        label = "digits-FID" if run.metric == "digits" else "FID"
        title = (f"{' / '.join(run.loaded.names)}: {label} vs time, {run.mode} {run.scheduler} {run.num_steps} steps, "
                 f"guidance {run.guidance:g}, {run.num_samples} samples")
        files.append(plot_pareto(rows, run.out / "pareto.png", title=title, y_label=label))
    return files



def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A readable results table (for the CLI)."""
    metric_columns = [(k, h) for k, h in (("fid", "FID"), ("inception_score", "IS"), ("precision", "prec"),
                                          ("recall", "recall"), ("accuracy", "acc")) if rows and k in rows[0]]
    width = max([len("schedule"), *(len(r["schedule"]) for r in rows)])
    interval = any("fid_vs_large_high" in r for r in rows)
    lines = [f"{'schedule':<{width}} " + " ".join(f"{h:>8}" for _, h in metric_columns)
             + (f" {'FID/large [95%]':>22}" if interval else "") + f" {'ms/img':>9} {'speed-up':>8}"]
    for row in rows:
        speedup = f"{row['speedup']:>7.2f}x" if "speedup" in row else f"{'':>8}"
        ratio = ""
        if interval:
            ratio = (f" {row['fid_vs_large']:>6.3f} [{row['fid_vs_large_low']:.3f}, {row['fid_vs_large_high']:.3f}]"
                     if "fid_vs_large_high" in row else f" {'':>22}")
        lines.append(f"{row['schedule']:<{width}} " + " ".join(f"{row[k]:>8.3f}" for k, _ in metric_columns)
                     + ratio + f" {1000 * row['seconds_per_image']:>9.3f} {speedup}")
    return "\n".join(lines)

