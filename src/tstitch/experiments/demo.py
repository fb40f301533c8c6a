# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The main job: the paper's central experiment on the embedded digits family, offline on a CPU.

For the same initial noise and labels it samples with DDIM at every fraction 0, 0.1, ..., 1 of the small
model before the large one, plus a few S -> B -> XL allocations, and measures digits-FID, classifier
accuracy and seconds per image on real stitched runs. The guidance scale is the one that gives the large
model its best FID in a short sweep, which is also reported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..metrics import FeatureFID, classifier_accuracy
from ..sampling import sample_batches, scheduler_factory
from ..utils import ensure_writable_dir, write_csv, write_json
from ..zoo import load_classifier, load_family, scheduler_config
from ..zoo.data import load_digits_tensors, to_unit
from .plots import plot_grid, plot_pareto, plot_similarity
from .study import Allocation, add_relative_columns, trajectory_similarity, two_model_sweep

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo"]

SMALL, MIDDLE, LARGE = "digits-s", "digits-b", "digits-xl"


@dataclass
class DemoConfig:
    num_samples: int = 600
    num_steps: int = 20
    guidance_scales: tuple[float, ...] = (1.0, 1.5, 2.0)
    fraction_step: float = 0.1
    three_model: tuple[tuple[float, float], ...] = ((0.2, 0.2), (0.3, 0.3), (0.4, 0.2), (0.2, 0.5))
    batch_size: int = 600
    similarity_samples: int = 100
    seed: int = 0
    device: str = "cpu"
    weights_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """Under a minute on a 2-core CPU: fewer samples and steps, no guidance sweep."""
        settings = {"num_samples": 300, "num_steps": 10, "guidance_scales": (1.0,),
                    "three_model": ((0.2, 0.2), (0.4, 0.2)), "similarity_samples": 50}
        return cls(**{**settings, **overrides})

    def validate(self) -> None:
        if not 2 <= self.num_samples <= 1797:
            raise ValueError(f"num_samples must be in [2, 1797] (the size of the digits set), got {self.num_samples}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.guidance_scales or any(not math.isfinite(g) or g < 1.0 for g in self.guidance_scales):
            raise ValueError(f"guidance_scales must be finite and >= 1, got {self.guidance_scales}")
        if len(set(self.guidance_scales)) != len(self.guidance_scales):
            raise ValueError(f"guidance_scales repeat a value: {self.guidance_scales}")


def run_demo(out_dir: str | Path, config: DemoConfig | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run the study and write ``results.json``, ``results.csv``, ``pareto.png``, ``grid.png`` and
    ``similarity.png`` into ``out_dir``. Returns the results dictionary."""
    config = config or DemoConfig()
    config.validate()
    out = ensure_writable_dir(out_dir)
    device = torch.device(config.device)
    models = load_family(directory=config.weights_dir, device=device)
    classifier = load_classifier(config.weights_dir, device=device)
    reference, _ = load_digits_tensors()
    metric = FeatureFID(classifier, reference.to(device))
    # DDIM on the family's noise schedule, final alpha not set to one (as the DiT pipelines ship)
    new_scheduler = scheduler_factory("ddim", {**scheduler_config(), "set_alpha_to_one": False})

    generator = torch.Generator().manual_seed(config.seed)
    noise = torch.randn(config.num_samples, 1, 8, 8, generator=generator).to(device)
    labels = (torch.arange(config.num_samples) % 10).to(device)

    # The metric's own floor: real data against the reference set, at the generated sets' size.
    subset = reference[torch.randperm(len(reference), generator=generator)[: config.num_samples]]
    half = len(reference) // 2
    shuffled = reference[torch.randperm(len(reference), generator=generator)]
    floor = {
        "num_samples": config.num_samples,
        "subset_vs_reference": metric.score(subset.to(device)),
        "half_vs_half": FeatureFID(classifier, shuffled[:half].to(device)).score(shuffled[half:].to(device)),
    }

    cache: dict[tuple[Allocation, float], dict[str, Any]] = {}
    grid_images: dict[tuple[Allocation, float], torch.Tensor] = {}

    def evaluate(schedule: Allocation, guidance: float) -> dict[str, Any]:
        key = (schedule, guidance)
        if key not in cache:
            latents, seconds, per_step = sample_batches(
                [models[name] for name in schedule.models], schedule.small_fractions, new_scheduler, noise, labels,
                num_steps=config.num_steps, guidance_scale=guidance, batch_size=config.batch_size,
            )
            images = latents.clamp(-1, 1)
            cache[key] = {
                "schedule": schedule.label,
                "models": list(schedule.models),
                "fractions": list(schedule.small_fractions),
                "guidance": guidance,
                "steps": config.num_steps,
                "num_samples": config.num_samples,
                "fid": metric.score(images),
                "accuracy": classifier_accuracy(classifier, images, labels),
                "seconds_per_image": seconds / config.num_samples,
                "model_per_step": per_step,
            }
            grid_images[key] = to_unit(images[:10]).cpu()
        return cache[key]

    two_model = two_model_sweep(SMALL, LARGE, config.fraction_step)
    three_model = [Allocation((SMALL, MIDDLE, LARGE), fractions) for fractions in config.three_model]
    large_alone, small_alone = two_model[0], two_model[-1]
    middle_alone = Allocation((MIDDLE, LARGE), (1.0,))
    total = len(config.guidance_scales) * 3 + len(two_model) - 2 + len(three_model)
    bar = tqdm(total=total, desc="demo schedules", disable=not progress)

    # 1. A short guidance sweep of the single models; the large model's best scale is used from here on.
    guidance_rows = []
    for guidance in config.guidance_scales:
        for schedule, name in ((large_alone, LARGE), (middle_alone, MIDDLE), (small_alone, SMALL)):
            row = dict(evaluate(schedule, guidance), model=name)
            guidance_rows.append({k: row[k] for k in ("model", "guidance", "fid", "accuracy", "seconds_per_image")})
            bar.update()
    best_guidance = min(config.guidance_scales, key=lambda g: cache[(large_alone, g)]["fid"])

    # 2. The fraction sweep and the three-model allocations at that scale.
    for schedule in [*two_model, *three_model]:
        evaluate(schedule, best_guidance)
        bar.update(0 if schedule in (large_alone, small_alone) else 1)
    bar.close()

    reference_row = cache[(large_alone, best_guidance)]
    rows = []
    for schedule in [*two_model, *three_model]:
        rows.append(add_relative_columns(dict(cache[(schedule, best_guidance)]), reference_row))

    # 3. The motivating figure: predictions along the large model's trajectory.
    count = min(config.similarity_samples, config.num_samples)
    curves = {
        f"{name} vs {LARGE}": trajectory_similarity(
            models[name], models[LARGE], new_scheduler(), noise[:count], labels[:count],
            num_steps=config.num_steps, guidance_scale=best_guidance,
        )
        for name in (SMALL, MIDDLE)
    }

    results = {
        "config": {k: v for k, v in asdict(config).items() if k != "extra"},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "best_guidance": best_guidance,
        "floor": floor,
        "guidance_sweep": guidance_rows,
        "rows": rows,
        "similarity": {label: {"timesteps": ts, "cosine": vs} for label, (ts, vs) in curves.items()},
        "targets": summarize_targets(rows, guidance_rows, best_guidance),
    }
    write_json(out / "results.json", results)
    write_csv(out / "results.csv", [{k: v for k, v in row.items() if k != "model_per_step"} for row in rows])
    plot_pareto(rows, out / "pareto.png",
                title=f"digits: FID vs time, DDIM {config.num_steps} steps, guidance {best_guidance:g}",
                y_label="digits-FID")
    plot_grid([grid_images[(s, best_guidance)] for s in two_model], [f"r={s.small_fractions[0]:g}" for s in two_model],
              out / "grid.png", title=f"fraction r of {SMALL} before {LARGE}: same seeds and labels per column")
    plot_similarity(curves, out / "similarity.png")
    return results


def summarize_targets(rows: list[dict[str, Any]], guidance_rows: list[dict[str, Any]],
                      best_guidance: float) -> dict[str, Any]:
    """The issue's targets, computed from the measured rows."""
    at_best = {r["model"]: r["fid"] for r in guidance_rows if r["guidance"] == best_guidance}
    two = [r for r in rows if len(r["models"]) == 2]
    candidates = [r for r in two if r["fractions"][0] >= 0.4 - 1e-9 and r["fid_vs_large"] <= 1.05
                  and r["time_vs_large"] <= 0.65]
    best = max(candidates, key=lambda r: r["fractions"][0], default=None)
    return {
        "size_gap_small_over_large": at_best[SMALL] / at_best[LARGE],
        "stitch_point": None if best is None else {
            "fraction": best["fractions"][0], "fid_vs_large": best["fid_vs_large"],
            "time_vs_large": best["time_vs_large"],
        },
    }


def format_table(results: dict[str, Any]) -> str:
    """A readable table of the rows, for the CLI."""
    lines = [f"{'schedule':<44} {'FID':>7} {'xFID':>6} {'acc':>6} {'ms/img':>8} {'speed-up':>8}"]
    for row in results["rows"]:
        lines.append(
            f"{row['schedule']:<44} {row['fid']:>7.3f} {row['fid_vs_large']:>6.3f} {row['accuracy']:>6.3f} "
            f"{1000 * row['seconds_per_image']:>8.3f} {row['speedup']:>7.2f}x"
        )
    floor = results["floor"]
    lines.append(
        f"metric floor at n={floor['num_samples']}: real subset vs reference {floor['subset_vs_reference']:.3f}, "
        f"half vs half {floor['half_vs_half']:.3f}"
    )
    lines.append("guidance sweep (single models): " + ", ".join(
        f"{r['model']}@{r['guidance']:g}={r['fid']:.2f}" for r in results["guidance_sweep"]))
    targets = results["targets"]
    lines.append(f"best guidance for {LARGE}: {results['best_guidance']:g}; size gap (FID S / FID XL): "
                 f"{targets['size_gap_small_over_large']:.2f}x")
    point = targets["stitch_point"]
    lines.append("T-Stitch point (r >= 0.4, FID <= 1.05x, time <= 0.65x): " + (
        "none" if point is None else
        f"r={point['fraction']:g}: FID {point['fid_vs_large']:.3f}x, time {point['time_vs_large']:.3f}x"))
    return "\n".join(lines)
