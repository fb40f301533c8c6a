# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The main job: the paper's central experiment on the embedded digits models, offline on a CPU.

The demo runs in sections, one per model family (:mod:`tstitch.experiments.demo_sections`): the DiTs
(``digits-s`` -> ``digits-xl``, plus S -> B -> XL allocations) and, once it is in the zoo, the U-Net pair.
Each section, for the same initial noise and labels:

1. a short guidance sweep of its single models on the first ``guidance_samples`` samples; the large model's
   best scale is used from there on;
2. every fraction 0, 0.1, ..., 1 of the small model before the large one (and the allocations), generated in
   chunks in round-robin order over the schedules (:mod:`tstitch.experiments.timing`), so every time is a
   median of repetitions taken at interleaved moments, with its spread; the per-step cost of each model
   (:func:`tstitch.tune.cost.measure_step_costs`) gives the ideal time of each schedule;
3. digits-FID and accuracy per schedule, and the FID ratio to the large model alone with a 95% interval from
   a paired delete-a-group jackknife over the samples (:func:`tstitch.tune.stats.jackknife_fid_ratio`: the same
   rows left out of both sets; at 600 samples the paired bootstrap's repeated rows inflate both FIDs and its
   intervals came out 2-5x wider than the spread between independent seed sets, the jackknife's matched it);
4. how the small models' noise and clean-image predictions agree with the large model's along its trajectory.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..metrics import FeatureFID, classifier_accuracy
from ..sampling import scheduler_factory
from ..tune.cost import measure_step_costs
from ..tune.stats import RatioEstimate, fid_ratio, jackknife_fid_ratio
from ..utils import ensure_writable_dir, write_csv, write_json
from ..zoo import load_classifier, scheduler_config
from ..zoo.data import IMAGE_SIZE, NUM_CLASSES, load_digits_tensors, to_unit
from .batches import sample_batches
from .demo_report import format_table, summarize_section
from .demo_sections import DemoSection, default_sections, load_sections
from .plots import plot_grid, plot_similarity, plot_stitch_section
from .study import Allocation, trajectory_agreement
from .timing import ChunkedRun, chunk_bounds, ratio_spread, run_interleaved, spread

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo", "format_table"]


@dataclass
class DemoConfig:
    num_samples: int = 600
    num_steps: int = 20
    guidance_scales: tuple[float, ...] = (1.0, 1.5, 2.0)
    #: the guidance sweep runs on the first this many samples (at most num_samples; the sweep picks the scale)
    guidance_samples: int = 200
    fraction_step: float = 0.1
    three_model: tuple[tuple[float, float], ...] = ((0.2, 0.2), (0.3, 0.3), (0.4, 0.2), (0.2, 0.5))
    #: every schedule is generated in this many chunks (at most num_samples), round-robin over the schedules:
    #: the timing repetitions
    timing_chunks: int = 3
    batch_size: int = 600
    #: groups of the paired jackknife interval of each FID ratio (0: no interval; at most num_samples // 2)
    interval_groups: int = 20
    similarity_samples: int = 100
    seed: int = 0
    device: str = "cpu"
    weights_dir: str | None = None
    #: the model families to run (default: :func:`~tstitch.experiments.demo_sections.default_sections`)
    sections: tuple[DemoSection, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """Under a minute on a 2-core CPU: fewer samples and steps, no guidance sweep."""
        settings = {"num_samples": 200, "num_steps": 10, "guidance_scales": (1.0,), "guidance_samples": 100,
                    "three_model": ((0.2, 0.2), (0.4, 0.2)), "similarity_samples": 50}
        return cls(**{**settings, **overrides})

    def validate(self) -> None:
        if not 2 <= self.num_samples <= 1797:
            raise ValueError(f"num_samples must be in [2, 1797] (the size of the digits set), got {self.num_samples}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.guidance_samples < 2:
            raise ValueError(f"guidance_samples must be >= 2, got {self.guidance_samples}")
        if self.timing_chunks < 1:
            raise ValueError(f"timing_chunks must be >= 1, got {self.timing_chunks}")
        if self.interval_groups < 0 or self.interval_groups == 1:
            raise ValueError(f"interval_groups must be 0 (no interval) or >= 2, got {self.interval_groups}")
        scale_sets = [self.guidance_scales] + [s.guidance_scales for s in self.sections or () if s.guidance_scales]
        for scales in scale_sets:
            if not scales or any(not math.isfinite(g) or g < 1.0 for g in scales):
                raise ValueError(f"guidance_scales must be finite and >= 1, got {scales}")
            if len(set(scales)) != len(scales):
                raise ValueError(f"guidance_scales repeat a value: {scales}")
        if self.sections is not None and not self.sections:
            raise ValueError("sections is empty: give at least one DemoSection (or None for the default)")


def _initial_noise(seed: int, count: int, shape: tuple[int, ...],
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` initial latents from ``seed`` (sections with latents of one shape get the same noise)."""
    generator = generator or torch.Generator().manual_seed(seed)
    return torch.randn(count, *shape, generator=generator)


def _latent_shape(model: Any) -> tuple[int, int, int]:
    """``(channels, height, width)`` of a diffusers model's samples (``sample_size`` an int or a pair)."""
    config = model.config
    size = config.get("sample_size", IMAGE_SIZE)
    height, width = (size, size) if isinstance(size, int) else size
    return int(config.get("in_channels", 1)), int(height), int(width)


def run_demo(out_dir: str | Path, config: DemoConfig | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run every section and write ``results.json``, ``results.csv`` and each section's ``pareto``, ``grid``
    and ``similarity`` figures into ``out_dir``. Returns the results dictionary (``files``: what was written)."""
    config = config or DemoConfig()
    config.validate()
    out = ensure_writable_dir(out_dir)
    load_at_start = os.getloadavg()
    device = torch.device(config.device)
    loaded, skipped = load_sections(config.sections or default_sections(), config.weights_dir, device)
    classifier = load_classifier(config.weights_dir, device=device)
    reference, _ = load_digits_tensors()
    metric = FeatureFID(classifier, reference.to(device))

    # The first section's noise comes first from the seed; the metric floor's subsets after it.
    generator = torch.Generator().manual_seed(config.seed)
    first_noise = _initial_noise(config.seed, config.num_samples, _latent_shape(loaded[0][1][loaded[0][0].large]),
                                 generator)
    # The metric's own floor: real data against the reference set, at the generated sets' size.
    subset = reference[torch.randperm(len(reference), generator=generator)[: config.num_samples]]
    half = len(reference) // 2
    shuffled = reference[torch.randperm(len(reference), generator=generator)]
    floor = {
        "num_samples": config.num_samples,
        "subset_vs_reference": metric.score(subset.to(device)),
        "half_vs_half": FeatureFID(classifier, shuffled[:half].to(device)).score(shuffled[half:].to(device)),
    }
    labels = (torch.arange(config.num_samples) % NUM_CLASSES).to(device)

    sections, files = [], []
    for index, (section, models) in enumerate(loaded):
        shape = _latent_shape(models[section.large])
        noise = first_noise if index == 0 else _initial_noise(config.seed, config.num_samples, shape)
        result, written = _run_section(section, models, noise.to(device), labels, metric, classifier, config,
                                       out, progress=progress)
        sections.append(result)
        files += written

    first = sections[0]
    results = {
        "config": {**{k: v for k, v in asdict(config).items() if k not in ("extra", "sections")},
                   "sections": [section["name"] for section in sections]},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        # the machine's load (1, 5 and 15 minute averages): times on a shared CPU depend on it
        "load_average": {"start": list(load_at_start), "end": list(os.getloadavg())},
        "floor": floor,
        "sections": sections,
        "skipped_sections": skipped,
        # Every section's rows (each names its section and models; the web page picks its models' rows), and the
        # first section's guidance, sweep, similarity and summary under the keys of earlier versions.
        "rows": [row for section in sections for row in section["rows"]],
        "best_guidance": first["best_guidance"],
        "guidance_sweep": first["guidance_sweep"],
        "similarity": first["similarity"],
        "targets": first["summary"],
    }
    write_json(out / "results.json", results)
    csv_rows = [{k: v for k, v in row.items() if not isinstance(v, list | dict)} for row in results["rows"]]
    write_csv(out / "results.csv", csv_rows)
    results["files"] = ["results.json", "results.csv", *files]
    return results


def _run_section(section: DemoSection, models: dict[str, Any], noise: torch.Tensor, labels: torch.Tensor,
                 metric: FeatureFID, classifier: Any, config: DemoConfig, out: Path,
                 *, progress: bool) -> tuple[dict[str, Any], list[str]]:
    """One section's sweep, rows, summary and figures."""
    # DDIM on the family's noise schedule, final alpha not set to one (as the DiT pipelines ship)
    new_scheduler = scheduler_factory("ddim", {**scheduler_config(), "set_alpha_to_one": False})
    logger.info("demo section %s: %s", section.name, " -> ".join(section.model_names))

    def score(latents: torch.Tensor, count: int) -> tuple[torch.Tensor, float, float]:
        images = latents.clamp(-1, 1)
        features = metric.features(images)
        return features, metric.score_features(features), classifier_accuracy(classifier, images, labels[:count])

    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = now - clock
        clock = now

    # 1. A short guidance sweep of the single models on a subset; the large model's best scale is used from here.
    scales = section.guidance_scales or config.guidance_scales
    count = min(config.guidance_samples, config.num_samples)
    guidance_rows = []
    if len(scales) > 1:
        for guidance in tqdm(scales, desc=f"{section.name}: guidance sweep", disable=not progress):
            for name in reversed(section.model_names):
                latents, seconds, _ = sample_batches(
                    [models[name]], [], new_scheduler, noise[:count], labels[:count], num_steps=config.num_steps,
                    guidance_scale=guidance, batch_size=config.batch_size)
                _, fid, accuracy = score(latents, count)
                guidance_rows.append({"model": name, "guidance": guidance, "num_samples": count, "fid": fid,
                                      "accuracy": accuracy, "seconds_per_image": seconds / count})
    best_guidance = min(scales, key=lambda g: next(r["fid"] for r in guidance_rows
                                                   if r["model"] == section.large and r["guidance"] == g)) \
        if guidance_rows else scales[0]

    lap("guidance_sweep")

    # 2. Each model's cost per step at the chunks' batch size, then every schedule in interleaved chunks.
    chunks = min(config.timing_chunks, config.num_samples)
    bounds = chunk_bounds(config.num_samples, chunks)
    batch = min(config.batch_size, bounds[0][1] - bounds[0][0])
    costs = measure_step_costs([models[name] for name in section.model_names], tuple(noise.shape[1:]),
                               batch_size=batch, num_classes=NUM_CLASSES, guidance_scale=best_guidance,
                               device=noise.device)
    lap("step_costs")
    step_cost = dict(zip(section.model_names, costs.seconds_per_step, strict=True))
    schedules = [*section.fraction_sweep(config.fraction_step), *section.three_model(config.three_model)]

    def run_chunk(schedule: Allocation, start: int, stop: int) -> tuple[torch.Tensor, float, list[int]]:
        return sample_batches([models[name] for name in schedule.models], schedule.small_fractions, new_scheduler,
                              noise[start:stop], labels[start:stop], num_steps=config.num_steps,
                              guidance_scale=best_guidance, batch_size=config.batch_size)

    runs = run_interleaved(schedules, run_chunk, config.num_samples, chunks, progress=progress,
                           desc=f"{section.name}: schedules x {chunks} chunks")

    lap("schedules")

    # 3. Quality with intervals, times with their spread, against the large model alone (r = 0, the first run).
    rows, grid = _rows(section, runs, score, metric, step_cost, batch, best_guidance, config), []
    for run in runs[: len(section.fraction_sweep(config.fraction_step))]:
        grid.append(to_unit(run.latents[:10].clamp(-1, 1)).cpu())

    lap("scores_and_intervals")

    # 4. The small models' predictions along the large model's trajectory.
    count = min(config.similarity_samples, config.num_samples)
    smalls = {name: models[name] for name in section.model_names[:-1]}
    agreement = trajectory_agreement(smalls, models[section.large], new_scheduler(), noise[:count], labels[:count],
                                     num_steps=config.num_steps, guidance_scale=best_guidance)
    similarity = {f"{name} vs {section.large}": found.as_dict() for name, found in agreement.items()}

    lap("similarity")
    summary = summarize_section(rows, costs.seconds_per_step, config.fraction_step)
    sweep = section.fraction_sweep(config.fraction_step)
    result = {
        "name": section.name,
        "models": list(section.model_names),
        "best_guidance": best_guidance,
        "guidance_sweep": guidance_rows,
        "step_costs": {**costs.as_dict(), "models": list(section.model_names)},
        "rows": rows,
        "similarity": similarity,
        "summary": summary,
        "files": [section.file(stem) for stem in ("pareto", "grid", "similarity")],
    }
    title = f"{section.name}: DDIM {config.num_steps} steps, guidance {best_guidance:g}, {config.num_samples} samples"
    plot_stitch_section(rows, out / section.file("pareto"), title=title)
    plot_grid(grid, [f"r={s.small_fractions[0]:g}" for s in sweep], out / section.file("grid"),
              title=f"fraction r of {section.small} before {section.large}: same seeds and labels per column")
    plot_similarity(similarity, out / section.file("similarity"),
                    title=f"{section.name}: predictions along {section.large}'s trajectory ({count} samples)")
    lap("figures")
    result["phase_seconds"] = phases
    logger.info("demo section %s took %.0f s: %s", section.name, sum(phases.values()),
                ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()))
    return result, result["files"]


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread: the interval's many small 64 x 64 matrix operations run ~50x slower on two
    threads when the cores are busy with other work (measured on the 2-core machine under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _interval(features: torch.Tensor, reference: torch.Tensor, real: tuple[torch.Tensor, torch.Tensor],
              config: DemoConfig) -> RatioEstimate:
    """The FID ratio with its 95% paired jackknife interval, in at most ``interval_groups`` groups of two or more
    samples (NaN bounds when ``interval_groups`` is 0 or there are under 4 samples)."""
    groups = min(config.interval_groups, len(features) // 2)
    if groups < 2:
        return RatioEstimate(fid_ratio(features, reference, real), math.nan, math.nan, 0.95, "none", len(features))
    return jackknife_fid_ratio(features, reference, real, groups=groups)


def _rows(section: DemoSection, runs: list[ChunkedRun], score: Any, metric: FeatureFID, step_cost: dict[str, float],
          batch: int, guidance: float, config: DemoConfig) -> list[dict[str, Any]]:
    real = metric.reference_statistics()
    scored = [score(run.latents, config.num_samples) for run in runs]
    reference_features, reference_fid, _ = scored[0]
    reference_times = runs[0].seconds_per_image
    rows = []
    for run, (features, fid, accuracy) in zip(runs, scored, strict=True):
        schedule = run.schedule
        with _one_thread():
            ratio = _interval(features.double().cpu(), reference_features.double().cpu(), real, config)
        seconds, relative = spread(run.seconds_per_image), ratio_spread(run.seconds_per_image, reference_times)
        rows.append({
            "section": section.name,
            "schedule": schedule.label,
            "models": list(schedule.models),
            "fractions": list(schedule.small_fractions),
            "guidance": guidance,
            "steps": config.num_steps,
            "num_samples": config.num_samples,
            "fid": fid,
            "accuracy": accuracy,
            "fid_vs_large": fid / reference_fid,
            "fid_vs_large_low": ratio.low,
            "fid_vs_large_high": ratio.high,
            "seconds_per_image": seconds.median,
            "seconds_per_image_low": seconds.low,
            "seconds_per_image_high": seconds.high,
            "seconds_per_image_chunks": run.seconds_per_image,
            "ideal_seconds_per_image": sum(step_cost[schedule.models[i]] for i in run.model_per_step) / batch,
            "time_vs_large": relative.median,
            "time_vs_large_low": relative.low,
            "time_vs_large_high": relative.high,
            "speedup": 1.0 / relative.median,
            "model_per_step": run.model_per_step,
        })
    return rows
