# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Sweeps over stitching schedules: timed sampling runs, the Pareto frontier, and the plots.

Shared by ``tstitch demo`` (the embedded family) and ``tstitch evaluate`` (any model pair).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .sampling import guided_output, num_classes_of, sample
from .utils import atomic_write

__all__ = [
    "Schedule",
    "two_model_sweep",
    "three_model_allocations",
    "pareto_front",
    "add_relative_columns",
    "timed_sample",
    "trajectory_similarity",
    "plot_pareto",
    "plot_grid",
    "plot_similarity",
]


@dataclass(frozen=True)
class Schedule:
    """Models by name (smallest first, the large model last) and the shares of all but the last."""

    models: tuple[str, ...]
    fractions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.fractions) != len(self.models) - 1:
            raise ValueError(f"{len(self.models)} models need {len(self.models) - 1} fractions, got {self.fractions}")

    @property
    def label(self) -> str:
        if len(self.models) == 1:
            return f"{self.models[0]} alone"
        shares = [*self.fractions, round(1.0 - sum(self.fractions), 6)]
        return " -> ".join(f"{m}:{s:g}" for m, s in zip(self.models, shares, strict=True))


def _grid(step: float) -> list[float]:
    count = round(1.0 / step)
    return [round(i * step, 6) for i in range(count + 1)]


def two_model_sweep(small: str, large: str, step: float = 0.1) -> list[Schedule]:
    """Fractions 0, step, ..., 1 of ``small`` before ``large``."""
    return [Schedule((small, large), (r,)) for r in _grid(step)]


def three_model_allocations(small: str, middle: str, large: str, step: float = 0.1, *,
                            include_edges: bool = False) -> list[Schedule]:
    """Every allocation (f_small, f_middle) on the ``step`` grid with both > 0 and a sum below 1.

    ``include_edges``: also the allocations where a model gets no step (a share 0, or a sum of 1): every
    point of the grid, the two-model stitches and the single models among them.
    """
    grid = _grid(step)
    if include_edges:
        return [Schedule((small, middle, large), (a, b)) for a in grid for b in grid if a + b <= 1 + 1e-9]
    return [
        Schedule((small, middle, large), (a, b))
        for a in grid
        for b in grid
        if a > 0 and b > 0 and a + b < 1 - 1e-9
    ]


def add_relative_columns(row: dict[str, Any], reference: Mapping[str, Any], *, x: str = "seconds_per_image",
                         y: str = "fid") -> dict[str, Any]:
    """Add ``fid_vs_large``, ``time_vs_large`` and ``speedup`` to ``row``, relative to ``reference`` (the
    large model alone); returns ``row``."""
    row["fid_vs_large"] = row[y] / reference[y]
    row["time_vs_large"] = row[x] / reference[x]
    row["speedup"] = 1.0 / row["time_vs_large"]
    return row


def pareto_front(rows: Sequence[Mapping[str, Any]], x: str = "seconds_per_image", y: str = "fid") -> list[int]:
    """Indices of the rows no other row beats on both ``x`` and ``y`` (lower is better), by ``x``."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][x], rows[i][y]))
    front, best = [], float("inf")
    for i in order:
        if rows[i][y] < best:
            front.append(i)
            best = rows[i][y]
    return front


def timed_sample(
    models: Sequence[nn.Module],
    fractions: Sequence[float],
    scheduler_factory: Callable[[], Any],
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int,
    guidance_scale: float,
    batch_size: int,
    progress: bool = False,
    generators: Sequence[torch.Generator] | None = None,
) -> tuple[torch.Tensor, float, list[int]]:
    """A real stitched sampling run over all of ``noise`` in batches.

    ``generators``: one per sample, for stochastic schedulers (each sample's step noise then depends on
    its own generator only, not on the batch it is in).

    Returns the latents, the wall-clock seconds of the sampling (model calls and scheduler steps, not
    the metric), and the model index of each step.
    """
    outputs, seconds, per_step = [], 0.0, []
    for start in range(0, len(noise), batch_size):
        batch_noise, batch_labels = noise[start : start + batch_size], labels[start : start + batch_size]
        generator = None if generators is None else list(generators[start : start + batch_size])
        scheduler = scheduler_factory()
        if noise.device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        result = sample(
            list(models), list(fractions), scheduler, noise=batch_noise, class_labels=batch_labels,
            num_inference_steps=num_steps, guidance_scale=guidance_scale, progress=progress, generator=generator,
        )
        if noise.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - begin
        outputs.append(result.latents)
        per_step = result.record.model_per_step()
    return torch.cat(outputs), seconds, per_step


@torch.no_grad()
def trajectory_similarity(
    small: nn.Module,
    large: nn.Module,
    scheduler: Any,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int,
    guidance_scale: float,
) -> tuple[list[float], list[float]]:
    """Per step, the mean cosine similarity of the small and large model's predictions at the same
    points of the large model's trajectory. Returns ``(timesteps, similarities)``."""
    channels = noise.shape[1]
    use_cfg = guidance_scale > 1.0
    model_labels = labels
    if use_cfg:
        model_labels = torch.cat([labels, torch.full_like(labels, num_classes_of(large))])
    scheduler.set_timesteps(num_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    timesteps, similarities = [], []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if use_cfg else latents, t)
        timestep = t.expand(model_input.shape[0])
        outputs = [
            guided_output(m(model_input, timestep=timestep, class_labels=model_labels), channels,
                          guidance_scale)
            for m in (small, large)
        ]
        cosine = torch.nn.functional.cosine_similarity(outputs[0].flatten(1), outputs[1].flatten(1), dim=1)
        timesteps.append(float(t))
        similarities.append(float(cosine.mean()))
        latents = scheduler.step(outputs[1], t, latents).prev_sample
    return timesteps, similarities


# -- plots ---------------------------------------------------------------------------------------------


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "",
                x: str = "seconds_per_image", y: str = "fid", y_label: str = "FID") -> Path:
    """Every schedule as a point (FID against time per image), the Pareto frontier drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(len(row["models"]), []).append(row)
    styles = {1: ("black", "s", "single model"), 2: ("tab:blue", "o", "two models"),
              3: ("tab:orange", "^", "three models")}
    for count, members in sorted(groups.items()):
        color, marker, label = styles.get(count, ("gray", "x", f"{count} models"))
        ax.scatter([r[x] for r in members], [r[y] for r in members], c=color, marker=marker, label=label,
                   alpha=0.8, zorder=3)
        if count == 2:
            for r in members:
                ax.annotate(f"{r['fractions'][0]:g}", (r[x], r[y]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=color)
    front = pareto_front(rows, x, y)
    ax.plot([rows[i][x] for i in front], [rows[i][y] for i in front], "--", color="tab:green",
            label="Pareto frontier", zorder=2)
    ax.set_xlabel("seconds per image (measured)")
    ax.set_ylabel(y_label)
    ax.set_title(title or "T-Stitch: quality against time (labels: fraction of the small model)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_grid(images: Sequence[torch.Tensor], row_labels: Sequence[str], path: str | Path,
              *, title: str = "") -> Path:
    """One row of images in [0, 1] (``(N, C, H, W)``) per schedule, the same seeds in every row."""
    plt = _pyplot()
    rows, cols = len(images), len(images[0])
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6 + 1.2, rows * 0.6 + 0.4), squeeze=False)
    for r, (row, label) in enumerate(zip(images, row_labels, strict=True)):
        for c in range(cols):
            ax = axes[r][c]
            picture = row[c].detach().cpu().float()
            ax.imshow(picture[0] if picture.shape[0] == 1 else picture.permute(1, 2, 0),
                      cmap="gray_r" if picture.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_similarity(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                    *, title: str = "") -> Path:
    """Cosine similarity per step along the large model's trajectory, one curve per small model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (_, values) in curves.items():
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=label)
    ax.set_xlabel("sampling step (0 = pure noise)")
    ax.set_ylabel("cosine similarity of predictions")
    ax.set_title(title or "Small vs large model predictions along the large model's trajectory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
