# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Scoring the evaluation's schedules and writing its report (process 0 only)."""

from __future__ import annotations

import json
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
from ..utils import write_csv, write_json
from .evaluation_files import fingerprint, samples_ok
from .plots import plot_pareto
from .study import Allocation, add_relative_columns

if TYPE_CHECKING:
    from .evaluate import EvaluationRun

__all__ = ["metric_space", "score_schedule", "result_row", "earlier_rows", "write_report", "format_rows"]


def metric_space(run: EvaluationRun) -> tuple[FeatureSpace, Reference, dict[str, Any]]:
    """The feature space, the reference and the metric settings (the key of each ``metrics.json``)."""
    config, device = run.config, run.device
    key: dict[str, Any] = {"metric": run.metric, "pr_k": config.pr_k, "is_splits": config.is_splits}
    if run.metric == "digits":
        from ..zoo import load_classifier
        from ..zoo.data import load_digits_tensors

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
    folder = run.folder(schedule)
    path = folder / "metrics.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key and stored.get("settings_hash") == run.settings_hash:
            return stored["metrics"]
    npz = folder / "samples.npz"
    features, logits = extract(space, npz_batches(npz, "arr_0", run.config.metric_batch_size))
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
    lines = [f"{'schedule':<{width}} " + " ".join(f"{h:>8}" for _, h in metric_columns)
             + f" {'ms/img':>9} {'speed-up':>8}"]
    for row in rows:
        speedup = f"{row['speedup']:>7.2f}x" if "speedup" in row else f"{'':>8}"
        lines.append(f"{row['schedule']:<{width}} " + " ".join(f"{row[k]:>8.3f}" for k, _ in metric_columns)
                     + f" {1000 * row['seconds_per_image']:>9.3f} {speedup}")
    return "\n".join(lines)

