# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What the ``tstitch serve`` page shows of a request's results (no Gradio): the tiles with their per-step
strips, their captions, the legend, the table of the runs, the progress line and the speed/quality frontier.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from .runs import PageResult, PageRun, Progress

logger = logging.getLogger(__name__)

__all__ = ["MODEL_COLOURS", "Frontier", "caption", "tile", "legend", "summary_table", "status_html",
           "load_frontier", "marked_rows", "frontier_figure", "plot_frontier", "contrast_ratio"]

#: Colours of the models in the per-step strips and the legend, smallest model first (the last one is the
#: large model's). Each has a contrast of at least 4.5:1 with white (the legend's text on it).
MODEL_COLOURS = ((176, 84, 0), (30, 120, 50), (120, 70, 180), (30, 90, 190))
TILE_SIDE = 64  # smaller images (the 8x8 digits) are enlarged pixel for pixel to this side


def _colour(index: int, num_models: int) -> tuple[int, int, int]:
    return MODEL_COLOURS[-1] if index == num_models - 1 else MODEL_COLOURS[index % (len(MODEL_COLOURS) - 1)]


def contrast_ratio(a: Sequence[int], b: Sequence[int]) -> float:
    """The WCAG contrast ratio of two sRGB colours (1 to 21)."""

    def luminance(rgb: Sequence[int]) -> float:
        linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# -- tiles and captions -------------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def caption(run: PageRun, partial: bool = False) -> str:
    """Short enough for a gallery tile: ``r 0.4: 0.084 s, 1.52x (1.40-1.61)``, ``within noise`` when the
    speed-up's range reaches 1, ``r 0 (digits-xl alone): 0.128 s, the reference (1.00x)``; while only the
    first repetition is in (``partial``), ``r 0.4: 0.084 s, 1.52x (first repetition)``."""
    time = run.time
    seconds = _seconds(time.median) if time is not None else "-"
    if run.schedule.is_reference:
        return f"{run.label}: {seconds}, the reference (1.00x)"
    speed = run.speedup
    if speed is None:
        return f"{run.label}: {seconds}"
    if partial:
        return f"{run.label}: {seconds}, {speed.median:.2f}x (first repetition)"
    text = f"{run.label}: {seconds}, {speed.median:.2f}x ({speed.low:.2f}-{speed.high:.2f})"
    return text + ", within noise" if run.within_noise else text


def _picture(image: torch.Tensor) -> Image.Image:
    picture = image.detach().float().clamp(0, 1)
    if picture.shape[0] == 1:
        picture = 1.0 - picture  # the digits: dark on light, as the study's grids show them
    array = (picture * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).convert("RGB")
    if max(pil.size) < TILE_SIDE:
        factor = math.ceil(TILE_SIDE / max(pil.size))
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)
    return pil


def tile(run: PageRun, columns: int = 4) -> Image.Image:
    """The run's images (same seeds in the same places in every tile) above a strip with one cell per
    denoising step, coloured by the model that ran it (the large model's colour is the last of
    :data:`MODEL_COLOURS`)."""
    pictures = [_picture(image) for image in run.result.images]
    width, height = pictures[0].size
    columns = min(columns, len(pictures))
    rows = math.ceil(len(pictures) / columns)
    gap, strip = 2, max(10, width // 6)
    canvas = Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) + strip + gap), "white")
    for i, picture in enumerate(pictures):
        canvas.paste(picture, ((i % columns) * (width + gap), (i // columns) * (height + gap)))
    per_step = run.result.model_per_step
    draw = ImageDraw.Draw(canvas)
    top = rows * (height + gap)
    for step, index in enumerate(per_step):
        left = round(step * canvas.width / len(per_step))
        right = round((step + 1) * canvas.width / len(per_step)) - 1
        draw.rectangle((left, top, max(left, right - 1), top + strip - 1), fill=_colour(index, len(run.names)))
    return canvas


def legend(names: Sequence[str]) -> str:
    """Which colour is which model in the strips, as HTML (white text on each colour, >= 4.5:1)."""
    cells = []
    for i, name in enumerate(names):
        r, g, b = _colour(i, len(names))
        cells.append(f'<span class="model-swatch" style="background:rgb({r},{g},{b});color:#fff">'
                     f"{html.escape(name)}</span>")
    return ("<p>Strip under each tile: one cell per denoising step, in order, coloured by the model that ran it: "
            + " ".join(cells) + "</p>")


# -- the table ----------------------------------------------------------------------------------------------


def _range(value: float, low: float, high: float, unit: str = "") -> str:
    return f"{value:.3f}{unit} ({low:.3f}-{high:.3f})" if unit else f"{value:.2f}x ({low:.2f}-{high:.2f})"


def summary_table(result: PageResult, frontier: Frontier | None = None) -> str:
    """The runs as an HTML table (one row per run; on a narrow screen each row stacks its cells): time and
    speed-up with their ranges, the predicted time and speed-up, the paired distance to the reference, the
    frontier's FID where it measured the run's allocation, the steps per model and the model of every step
    (the model's index, smallest first; the string wraps)."""
    names = result.runs[0].names
    marked = marked_rows(frontier.rows, result.runs, len(names)) if frontier is not None else [None] * len(result.runs)
    headers = ["run", "time", "predicted", "speed-up", "predicted speed-up", "distance to r 0",
               "FID (frontier)", "steps per model", "model per step"]
    times = (f"the first of {result.repetitions} repetitions" if result.partial
             else f"median of {result.repetitions} repetitions (lowest-highest)")
    caption_text = (f"The runs of this request, {result.batch_size} images each, {times}. Model per step: "
                    + ", ".join(f"{i} = {html.escape(n)}" for i, n in enumerate(names)) + ".")
    lines = [f'<table class="runs"><caption>{caption_text}</caption>',
             "<thead><tr>" + "".join(f'<th scope="col">{h}</th>' for h in headers) + "</tr></thead><tbody>"]
    for run, row in zip(result.runs, marked, strict=True):
        time, speed = run.time, run.speedup
        cells = [
            html.escape(run.label),
            _range(time.median, time.low, time.high, " s") if time else "-",
            f"{run.predicted_seconds:.3f} s" if run.predicted_seconds is not None else "-",
            "1.00x (reference)" if run.schedule.is_reference else (
                _range(speed.median, speed.low, speed.high) + (" within noise" if run.within_noise else "")
                if speed else "-"),
            f"{run.predicted_speedup:.2f}x" if run.predicted_speedup is not None else "-",
            f"{run.distance:.3f}" if run.distance is not None else "-",
            _fid_text(row),
            ", ".join(f"{html.escape(n)} {s}" for n, s in run.steps_per_model().items()),
            f'<code>{"".join(str(i) for i in run.result.model_per_step)}</code>',
        ]
        lines.append("<tr>" + "".join(f'<td data-label="{h}">{c}</td>' for h, c in zip(headers, cells, strict=True))
                     + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _fid_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    text = f"{row['fid']:.2f}"
    low, high = row.get("fid_vs_large_low"), row.get("fid_vs_large_high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and math.isfinite(low) and math.isfinite(high):
        text += f", {row.get('fid_vs_large', math.nan):.2f}x the reference's ({low:.2f}-{high:.2f})"
    if row.get("num_samples"):
        text += f", {row['num_samples']} samples"
    return text


def status_html(text: str, progress: Progress | None = None) -> str:
    """The progress line (announced to screen readers: the page's element is a live region)."""
    bar = ""
    if progress is not None:
        bar = (f'<progress max="{progress.total}" value="{progress.done}" '
               f'aria-label="denoising steps done">{progress.done} of {progress.total}</progress> ')
    return f"<p>{bar}{html.escape(text)}</p>"


# -- the frontier -------------------------------------------------------------------------------------------


@dataclass
class Frontier:
    """Measured rows of one model set (``models``, ``fractions``, ``fid``, ``speedup`` each), the file they
    came from and what they were timed at (``None`` where the file does not say)."""

    rows: list[dict[str, Any]]
    source: Path
    batch_size: int | None = None
    steps: int | None = None
    num_samples: int | None = None


def load_frontier(paths: Sequence[str | os.PathLike], names: Sequence[str]) -> Frontier | None:
    """The measured rows of ``names`` (the loaded models, smallest first) from the first file of ``paths``
    that has any: the demo's ``results.json`` (``rows``) or a list of rows (``{"rows": [...]}`` too); each
    row needs ``models``, ``fractions``, ``fid`` and ``speedup``."""
    for path in map(Path, paths):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as error:
            logger.warning("ignoring the frontier file %s: %s", path, error)
            continue
        rows = data.get("rows", []) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            continue
        keep = [row for row in rows if isinstance(row, dict) and list(row.get("models", ())) == list(names)
                and all(isinstance(row.get(key), (int, float)) for key in ("fid", "speedup"))
                and isinstance(row.get("fractions"), list)]
        if keep:
            return Frontier(keep, path, _batch_size(data, names), keep[0].get("steps"), keep[0].get("num_samples"))
    return None


def _batch_size(data: Any, names: Sequence[str]) -> int | None:
    """The batch the demo timed its rows at: the per-step costs of its section that has these models (a
    section of three models also holds the rows of its pairs), else its configuration's."""
    if not isinstance(data, dict):
        return None
    for section in data.get("sections", []):
        if isinstance(section, dict) and set(names) <= set(section.get("models", ())):
            batch = section.get("step_costs", {}).get("batch_size")
            if isinstance(batch, int):
                return batch
    batch = data.get("config", {}).get("batch_size") if isinstance(data.get("config"), dict) else None
    return batch if isinstance(batch, int) else None


def marked_rows(rows: Sequence[dict[str, Any]], runs: Sequence[PageRun],
                num_models: int) -> list[dict[str, Any] | None]:
    """For each run of the page, the frontier row measured at its allocation (``None`` if none is, and for a
    plan). The reference (r 0) is marked too."""
    found = []
    for run in runs:
        match = [] if run.allocation is None else [
            row for row in rows if _same(row["fractions"][: num_models - 1], run.allocation)]
        found.append(match[0] if match else None)
    return found


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def _place_labels(axes: Any, points: Sequence[tuple[float, float]], texts: Sequence[str], *, colour: str,
                  avoid: list[Any]) -> list[Any]:
    """Annotate each point with its text at the first of a few offsets whose box stays inside the axes and
    overlaps no box in ``avoid`` (display pixels: the legend, the points, the labels placed so far; each new
    label's box is added to it)."""
    renderer = axes.figure.canvas.get_renderer()
    inside = axes.get_window_extent(renderer)
    offsets = [(6, 6), (6, -14), (-30, 6), (-30, -14), (6, 18), (6, -26), (-30, 18), (-30, -26), (14, 0), (-42, 0),
               (-12, 26), (-12, -34)]
    placed = []
    for (x, y), text in zip(points, texts, strict=True):
        for dx, dy in offsets:
            label = axes.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), color=colour, fontsize=8)
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if fits and not any(box.overlaps(other) for other in avoid):
                break
            label.remove()
        else:
            label = axes.annotate(text, (x, y), textcoords="offset points", xytext=offsets[0], color=colour,
                                  fontsize=8)
            box = label.get_window_extent(renderer)
        avoid.append(box)
        placed.append(label)
    return placed


def _point_boxes(axes: Any, points: Sequence[tuple[float, float]], half: float = 5.0) -> list[Any]:
    """Small display-pixel boxes around the plotted points (a label must not cover a marker)."""
    from matplotlib.transforms import Bbox

    boxes = []
    for x, y in axes.transData.transform(points):
        boxes.append(Bbox([[x - half, y - half], [x + half, y + half]]))
    return boxes


def frontier_figure(frontier: Frontier, result: PageResult) -> tuple[Any, list[Any]]:
    """The frontier's FID (log axis) against its speed-up, each point labelled with its fractions, and this
    page's runs at the speed-up measured here (diamonds with their range, at the frontier's FID of their
    allocation; a dashed line where the frontier has none). Returns the figure and its labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    runs, names = result.runs, result.runs[0].names
    ordered = sorted(frontier.rows, key=lambda row: row["speedup"])
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    where = f"batch {frontier.batch_size}" if frontier.batch_size else "its own batch size"
    samples = f", {frontier.num_samples} samples per point" if frontier.num_samples else ""
    axes.plot([r["speedup"] for r in ordered], [r["fid"] for r in ordered], "o-", color="0.35", ms=4,
              label=f"measured in {frontier.source.name} ({where}{samples})")
    axes.set_yscale("log")  # r 1 (FID 45 on the digits) would squash the region worth reading
    axes.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    some = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "1235" else "")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(some)
    page = f"this page (batch {result.batch_size}, median and range of {result.repetitions})"
    if frontier.batch_size and frontier.batch_size != result.batch_size:
        page += ": another batch size than the frontier's"
    lines = []
    page_points, page_texts = [], []
    for run, row in zip(runs, marked_rows(frontier.rows, runs, len(names)), strict=True):
        speed = run.speedup
        if speed is None:
            continue
        short = run.label.split(" (")[0]
        if row is not None:
            axes.errorbar([speed.median], [row["fid"]], xerr=[[speed.median - speed.low], [speed.high - speed.median]],
                          fmt="D", color="#b01030", ms=7, capsize=3, zorder=3)
            page_points.append((speed.median, row["fid"]))
            page_texts.append(short)
        else:
            lines.append(axes.axvline(speed.median, color="#b01030", ls="--", lw=1))
            page_points.append((speed.median, None))
            page_texts.append(short + " (no FID)")
    axes.plot([], [], "D", color="#b01030", label=page)
    axes.set_xlabel(f"speed-up vs {names[-1]} alone (log axis)", fontsize=9)
    axes.set_ylabel("FID, log axis (lower is better)", fontsize=9)
    axes.set_title(f"{' -> '.join(names)}: speed/quality frontier", fontsize=9)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: it hides no point
    axes.grid(alpha=0.3, which="both")
    figure.tight_layout()
    figure.canvas.draw()
    low = axes.get_ylim()[0]
    frontier_points = [(r["speedup"], r["fid"]) for r in ordered]
    page_points = [(x, y if y is not None else low) for x, y in page_points]
    avoid = _point_boxes(axes, frontier_points + page_points)
    labels = _place_labels(axes, frontier_points,
                           [",".join(f"{f:g}" for f in r["fractions"][: len(names) - 1]) for r in ordered],
                           colour="0.25", avoid=avoid)
    labels += _place_labels(axes, page_points, page_texts, colour="#b01030", avoid=avoid)
    return figure, labels


def plot_frontier(frontier: Frontier, result: PageResult) -> Image.Image:
    """:func:`frontier_figure` as an image."""
    from io import BytesIO

    import matplotlib.pyplot as plt

    figure, _ = frontier_figure(frontier, result)
    try:
        buffer = BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def frontier_alt(frontier: Frontier, result: PageResult) -> str:
    """The frontier image's alternative text: what it plots, in words."""
    names = result.runs[0].names
    rows = sorted(frontier.rows, key=lambda row: row["speedup"])
    points = "; ".join(f"r {','.join(f'{f:g}' for f in r['fractions'][: len(names) - 1])}: "
                       f"{r['speedup']:.2f}x, FID {r['fid']:.1f}" for r in rows)
    page = "; ".join(f"{run.label.split(' (')[0]} {run.speedup.median:.2f}x" for run in result.runs if run.speedup)
    return (f"Speed/quality frontier of {' -> '.join(names)} from {frontier.source.name}, FID against speed-up: "
            f"{points}. This page's runs: {page}.")
