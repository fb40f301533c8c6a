# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The figures of the studies and the benchmark (matplotlib, written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..utils import atomic_write
from .study import pareto_front

__all__ = ["pyplot", "save_figure", "plot_pareto", "plot_grid", "plot_similarity"]


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))
    finally:
        plt.close(fig)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "",
                x: str = "seconds_per_image", y: str = "fid", y_label: str = "FID") -> Path:
    """Every schedule as a point (FID against time per image), the Pareto frontier drawn."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_grid(images: Sequence[torch.Tensor], row_labels: Sequence[str], path: str | Path,
              *, title: str = "") -> Path:
    """One row of images in [0, 1] (``(N, C, H, W)``) per schedule, the same seeds in every row."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_similarity(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                    *, title: str = "") -> Path:
    """Cosine similarity per step along the large model's trajectory, one curve per small model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (_, values) in curves.items():
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=label)
    ax.set_xlabel("sampling step (0 = pure noise)")
    ax.set_ylabel("cosine similarity of predictions")
    ax.set_title(title or "Small vs large model predictions along the large model's trajectory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
