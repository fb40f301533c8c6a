# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The figures of the studies and the benchmark (matplotlib, written atomically)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..utils import pyplot, save_figure
from .study import pareto_front

__all__ = ["pyplot", "save_figure", "plot_pareto", "plot_grid", "plot_similarity", "plot_stitch_section"]


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


def plot_stitch_section(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """The demo's two panels for one model family. Left: seconds per image against the small model's fraction
    (median of the timing chunks, bars from the lowest to the highest chunk) with the ideal time from the
    per-step costs. Right: FID ratio to the large model alone (bars: 95% interval) against time, the Pareto
    frontier dashed."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    two = sorted((r for r in rows if len(r["models"]) == 2), key=lambda r: r["fractions"][0])
    three = [r for r in rows if len(r["models"]) == 3]

    def ms(row: Mapping[str, Any], key: str = "seconds_per_image") -> float:
        return 1000 * row[key]

    def time_bars(members: Sequence[Mapping[str, Any]]) -> list[list[float]]:
        return [[ms(r) - ms(r, "seconds_per_image_low") for r in members],
                [ms(r, "seconds_per_image_high") - ms(r) for r in members]]

    fractions = [r["fractions"][0] for r in two]
    left.errorbar(fractions, [ms(r) for r in two], yerr=time_bars(two), fmt="o", color="tab:blue", capsize=3,
                  label="measured: median of the chunks (bars: min-max)", zorder=3)
    left.plot(fractions, [ms(r, "ideal_seconds_per_image") for r in two], "--", color="gray",
              label="ideal: r t_small + (1 - r) t_large from per-step costs")
    left.set_xlabel(f"fraction r of the steps on {two[0]['models'][0]}")
    left.set_ylabel("ms per image")
    left.set_title("time against fraction", fontsize=9)

    for members, color, marker, label in ((two, "tab:blue", "o", "two models"),
                                          (three, "tab:orange", "^", "three models")):
        if not members:
            continue
        ratio = [r["fid_vs_large"] for r in members]
        has_interval = all(math.isfinite(r["fid_vs_large_low"]) for r in members)
        yerr = [[y - r["fid_vs_large_low"] for y, r in zip(ratio, members, strict=True)],
                [r["fid_vs_large_high"] - y for y, r in zip(ratio, members, strict=True)]] if has_interval else None
        right.errorbar([ms(r) for r in members], ratio, xerr=time_bars(members), yerr=yerr, fmt=marker, color=color,
                       capsize=2, label=label + (" (bars: 95% interval, time min-max)" if has_interval else ""),
                       zorder=3)
    for r in two:
        right.annotate(f"{r['fractions'][0]:g}", (ms(r), r["fid_vs_large"]), textcoords="offset points",
                       xytext=(4, 4), fontsize=7, color="tab:blue")
    front = pareto_front(rows, "seconds_per_image", "fid_vs_large")
    right.plot([ms(rows[i]) for i in front], [rows[i]["fid_vs_large"] for i in front], "--", color="tab:green",
               label="Pareto frontier", zorder=2)
    right.axhline(1.05, color="crimson", lw=0.8, alpha=0.6, label="FID ratio 1.05")
    right.set_yscale("log")
    right.set_xlabel("ms per image (measured)")
    right.set_ylabel(f"FID / FID of {two[0]['models'][-1]} alone")
    right.set_title("quality against time (labels: fraction r)", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_similarity(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                    *, title: str = "") -> Path:
    """How each small model's predictions agree with the large model's along its trajectory, by timestep
    (high noise on the left): the relative L2 distance of the clean-image (x0) predictions, and the cosine
    similarity of the x0 and of the noise predictions. ``curves``: label -> the fields of
    :class:`~tstitch.experiments.study.TrajectoryAgreement`."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for index, (label, curve) in enumerate(curves.items()):
        color = f"C{index}"
        steps = curve["timesteps"]
        left.plot(steps, curve["x0_relative_l2"], marker="o", markersize=3, color=color, label=label)
        right.plot(steps, curve["x0_cosine"], marker="o", markersize=3, color=color, label=f"{label}: x0")
        right.plot(steps, curve["eps_cosine"], ls=":", color=color, label=f"{label}: noise")
    left.set_ylabel("|x0 small - x0 large| / |x0 large|")
    left.set_title("clean-image (x0) predictions: relative distance", fontsize=9)
    right.set_ylabel("cosine similarity")
    right.set_title("cosine similarity: x0 predictions (solid), noise predictions (dotted)", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("timestep t (sampling runs from left to right)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Small vs large model predictions along the large model's trajectory", fontsize=10)
    return save_figure(fig, path)
