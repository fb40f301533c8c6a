# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What the ``tstitch serve`` page computes, without the page: which presets can be loaded, the checked
request, the runs (every fraction and the large model alone, from the same noise), the tiles with their
per-step strips, captions and the frontier plot. :mod:`tstitch.serve.app` puts it on a Gradio page.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

# -- the tstitch API this page uses: one place, so that a refactor of the library repoints only these lines --
from tstitch.experiments.generate import RunResult, SampleOptions, generate
from tstitch.experiments.sample_plans import check_plan
from tstitch.models.availability import checkpoint_dirs, is_available
from tstitch.models.hub import offline_mode
from tstitch.models.loaded import LoadedModels
from tstitch.models.loading import load_models, load_preset
from tstitch.models.presets import PRESETS
from tstitch.plan import Plan
from tstitch.planfile import load_plan
from tstitch.sampling.schedulers import SCHEDULERS

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PRESET",
    "FRONTIER_FILES",
    "PageRequest",
    "PageRun",
    "ServeState",
    "preset_availability",
    "parse_request",
    "run_request",
    "caption",
    "tile",
    "load_frontier",
    "plot_frontier",
    "marked_rows",
    "scheduler_names",
]

DEFAULT_PRESET = "digits"
#: Where the page looks for a measured frontier, first found wins: a ``tstitch tune`` result, then the demo's.
FRONTIER_FILES = ("outputs/tune/frontier.json", "outputs/demo/results.json")
#: Colours of the models in the per-step strips, smallest model first (the last one is the large model's).
MODEL_COLOURS = ((230, 140, 30), (60, 160, 80), (140, 90, 200), (40, 100, 200))
TILE_SIDE = 64  # smaller images (the 8x8 digits) are enlarged pixel for pixel to this side
MAX_IMAGES = 64
CUSTOM = "custom"  # the model-choice name of the models given with ``tstitch serve --model``


def scheduler_names() -> list[str]:
    """The schedulers the page offers (the ``--scheduler`` table of :mod:`tstitch.sampling.schedulers`)."""
    return list(SCHEDULERS)


def _colour(index: int, num_models: int) -> tuple[int, int, int]:
    return MODEL_COLOURS[-1] if index == num_models - 1 else MODEL_COLOURS[index % (len(MODEL_COLOURS) - 1)]


# -- which presets can be loaded ----------------------------------------------------------------------------


def _missing_reason(source: Any, dirs: list[Path], offline: bool) -> str | None:
    """A short reason for the page (the loaders' own messages say every way to get the file)."""
    if is_available(source, dirs, offline):
        return None
    ways = []
    if source.files:
        ways.append(f"no file {' / '.join(source.files)} in {', '.join(str(d) for d in dirs)}")
    if source.hub:
        ways.append(f"{source.hub[0]} is not in the local Hugging Face cache and the hub is off")
    return f"{source.label}: {'; '.join(ways)}"


def preset_availability(checkpoint_dir: str | os.PathLike | None = None,
                        offline: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """The presets whose weights are at hand, and for each other one the reason it is not.

    Files are looked for where :func:`tstitch.load_preset` looks (``checkpoint_dir``,
    ``$TSTITCH_CHECKPOINT_DIR``, ``./pretrained_models``); hub models count when cached, or when the hub
    may be used (``offline`` ``None`` follows ``HF_HUB_OFFLINE``).
    """
    dirs, offline = checkpoint_dirs(checkpoint_dir), offline_mode(offline)
    available, missing = [], {}
    for name, preset in PRESETS.items():
        sources = [*preset.models, *([preset.vae] if preset.vae is not None else [])]
        reasons = [r for r in (_missing_reason(s, dirs, offline) for s in sources) if r]
        if reasons:
            missing[name] = "; ".join(reasons)
        else:
            available.append(name)
    return available, missing


# -- the request --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageRequest:
    """One press of *Generate*, checked. ``allocations``: the small models' shares of each stitched run."""

    model: str
    allocations: tuple[tuple[float, ...], ...]
    steps: int
    scheduler: str | None
    guidance: float
    seed: int
    num_images: int
    class_labels: tuple[int, ...] | None = None
    prompt: str | None = None
    #: A per-step plan (``tstitch tune``'s plan.json), sampled as one more stitched run.
    plan: Plan | None = None

    @property
    def num_runs(self) -> int:
        """The gallery's tiles: the large model alone, each allocation and the plan."""
        return 1 + len(self.allocations) + (self.plan is not None)


def _integer(value: Any, name: str, low: int, high: int | None = None) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if number < low or (high is not None and number > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {int(number)}")
    return int(number)


def parse_allocation(text: str, num_models: int) -> tuple[float, ...]:
    """``"0.4"`` (two models) or ``"0.4,0.2"`` (three): the shares of the small models, smallest first."""
    try:
        shares = tuple(float(part) for part in str(text).replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"fraction {text!r} is not a number (or comma-separated numbers)") from None
    if len(shares) != num_models - 1:
        raise ValueError(f"{num_models} models take {num_models - 1} comma-separated fractions, got {text!r}")
    if any(not 0.0 <= s <= 1.0 for s in shares) or sum(shares) > 1.0 + 1e-6:  # NaN fails the first test
        raise ValueError(f"fractions must be in [0, 1] and sum to at most 1, got {text!r}")
    return shares


def parse_request(model: str, fractions: Sequence[str], steps: Any, scheduler: str | None, guidance: Any,
                  seed: Any, num_images: Any, labels: str | None, prompt: str | None, *, num_models: int,
                  class_conditional: bool, plan: str | None = None) -> PageRequest:
    """Check the page's inputs; ``ValueError`` naming the field and the value, before any work. ``plan``: a
    plan file or the folder of ``tstitch tune --out`` (its plan.json), sampled as one more run."""
    page_plan = load_page_plan(plan, num_models) if plan and str(plan).strip() else None
    if not fractions and page_plan is None:
        raise ValueError("choose at least one fraction (or give a plan file)")
    allocations = tuple(dict.fromkeys(parse_allocation(f, num_models) for f in fractions))
    steps = _integer(steps, "steps", 1, 1000)
    if page_plan is not None:
        check_plan(page_plan, None, steps, [f"model {i}" for i in range(num_models)])
    try:
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise ValueError(f"guidance must be a number, got {guidance!r}") from None
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if scheduler and scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}")
    class_labels = None
    if class_conditional and labels and labels.strip():
        try:
            class_labels = tuple(int(part) for part in labels.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"class labels must be whole numbers separated by spaces, got {labels!r}") from None
    if not class_conditional and not (prompt and prompt.strip()):
        raise ValueError("give a prompt")
    return PageRequest(model, allocations, steps, scheduler or None, guidance, _integer(seed, "seed", 0),
                       _integer(num_images, "images", 1, MAX_IMAGES), class_labels,
                       prompt.strip() if prompt and not class_conditional else None, page_plan)


def load_page_plan(path: str, num_models: int) -> Plan:
    """The plan of a plan file, or of the plan.json in a folder (``tstitch tune --out``), for ``num_models``."""
    target = Path(str(path).strip()).expanduser()
    plan = load_plan(target)  # a file or a tune folder; FileNotFoundError / ValueError naming the file
    if plan.num_models != num_models:
        raise ValueError(f"plan {plan} ({target}) is for {plan.num_models} models, these are {num_models}")
    return plan


# -- the runs -----------------------------------------------------------------------------------------------


@dataclass
class PageRun:
    """One gallery tile: a stitched run (``allocation`` the small models' shares) or the large model alone
    (``allocation`` ``None``), and its speed-up against the large model alone (measured in the same request)."""

    allocation: tuple[float, ...] | None
    result: RunResult
    speedup: float | None = None

    @property
    def label(self) -> str:
        names = self.result.model_names
        if self.result.plan is not None:
            return f"plan {self.result.plan}"
        if self.allocation is None:
            return f"{names[-1]} alone"
        return " + ".join(f"{n} {f:g}" for n, f in zip(names, self.result.fractions, strict=True) if f > 0) or names[-1]

    def step_models(self) -> list[str]:
        """The name of the model that ran each denoising step, in order."""
        return [self.result.model_names[i] for i in self.result.model_per_step]

    def as_dict(self) -> dict[str, Any]:
        return {**self.result.as_dict(), "label": self.label, "step_models": self.step_models(),
                "allocation": None if self.allocation is None else list(self.allocation), "speedup": self.speedup}


def run_request(loaded: LoadedModels, request: PageRequest,
                on_progress: Callable[[int, int, str], None] | None = None) -> Iterator[list[PageRun]]:
    """Sample every allocation of ``request`` and the large model alone from the same noise and labels,
    yielding the runs so far after each one (the large model alone first). One warm-up comes first
    (untimed), so every time is that of a single warm run. Raises ``ValueError`` before any sampling."""
    options = SampleOptions(
        num_steps=request.steps, scheduler=request.scheduler, guidance_scale=request.guidance,
        class_labels=list(request.class_labels) if request.class_labels else None,
        prompts=[request.prompt] if request.prompt else None, num_images=request.num_images,
        seed=request.seed, progress=False,
    )
    total = request.num_runs
    runs: list[PageRun] = []
    # each stitched run: its allocation (None for the plan) and its options
    jobs = [(a, replace(options, fractions=list(a))) for a in request.allocations]
    if request.plan is not None:
        jobs.append((None, replace(options, plan=request.plan)))
    first_allocation, first = jobs[0]
    if on_progress:
        on_progress(0, total, f"warm-up, the large model alone, {len(jobs)} stitched runs")
    # The first request carries the warm-up and the large model alone (generate's ``compare``).
    result = generate(loaded, first, compare=True)
    baseline = PageRun(None, result.baseline, 1.0)
    runs += [baseline, PageRun(first_allocation, result.stitched, result.speedup)]
    if on_progress:
        on_progress(2, total, "sampled " + runs[-1].label)
    yield list(runs)
    for done, (allocation, job) in enumerate(jobs[1:], start=3):
        result = generate(loaded, replace(job, warmup=False))
        speedup = baseline.result.seconds / result.stitched.seconds if result.stitched.seconds > 0 else None
        runs.append(PageRun(allocation, result.stitched, speedup))
        if on_progress:
            on_progress(done, total, "sampled " + runs[-1].label)
        yield list(runs)


# -- what the page shows ------------------------------------------------------------------------------------


def caption(run: PageRun) -> str:
    """Short enough for a gallery tile: ``r 0.4: 0.084 s, 1.52x speed-up`` (``r``: the small models' shares),
    or ``digits-xl alone: 0.128 s (reference)``."""
    seconds = f"{run.result.seconds:.3f} s"
    if run.result.plan is not None:
        speed = f"{run.speedup:.2f}x speed-up" if run.speedup is not None else "no speed-up"
        return f"{run.label}: {seconds}, {speed}"
    if run.allocation is None:
        return f"{run.label}: {seconds} (reference)"
    speed = f"{run.speedup:.2f}x speed-up" if run.speedup is not None else "no speed-up"
    return f"r {','.join(f'{f:g}' for f in run.allocation)}: {seconds}, {speed}"


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


def tile(run: PageRun, names: Sequence[str], columns: int = 4) -> Image.Image:
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
    for step, name in enumerate(run.step_models()):
        left = round(step * canvas.width / len(per_step))
        right = round((step + 1) * canvas.width / len(per_step)) - 1
        draw.rectangle((left, top, max(left, right - 1), top + strip - 1), fill=_colour(names.index(name), len(names)))
    return canvas


def legend(names: Sequence[str]) -> str:
    """Which colour is which model in the strips, as HTML."""
    cells = []
    for i, name in enumerate(names):
        r, g, b = _colour(i, len(names))
        cells.append(f'<span style="background:rgb({r},{g},{b});color:white;padding:1px 6px;'
                     f'border-radius:3px">{name}</span>')
    return "Strip under each tile: one cell per denoising step, in order, coloured by the model that ran it: " + \
        " ".join(cells)


def summary_table(runs: Sequence[PageRun], names: Sequence[str]) -> str:
    """A Markdown table of the runs: steps per model, time, speed-up and the model of every step (its index
    in ``names``, the loaded models smallest first)."""
    lines = ["| run | steps per model | time (single run) | speed-up | model per step |", "|---|---|---|---|---|"]
    for run in runs:
        result = run.result
        steps = ", ".join(f"{n} {s}" for n, s in zip(result.model_names, result.steps_per_model, strict=True) if s)
        speed = "1.00x (reference)" if run.allocation is None and run.result.plan is None else (
            f"{run.speedup:.2f}x" if run.speedup is not None else "-")
        sequence = "".join(str(names.index(name)) for name in run.step_models())
        lines.append(f"| {run.label} | {steps} | {result.seconds:.3f} s | {speed} | `{sequence}` |")
    return "\n".join(lines)


# -- the frontier -------------------------------------------------------------------------------------------


def load_frontier(paths: Sequence[str | os.PathLike], names: Sequence[str]) -> tuple[list[dict[str, Any]], Path] | None:
    """The measured rows of ``names`` (the loaded models, smallest first) from the first file of ``paths``
    that has any: the demo's ``results.json`` (``rows``) or a tune ``frontier.json`` (a list of rows or
    ``{"rows": [...]}``); each row needs ``models``, ``fractions``, ``fid`` and ``speedup``."""
    for path in map(Path, paths):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            logger.warning("ignoring the frontier file %s: %s", path, error)
            continue
        rows = data.get("rows", []) if isinstance(data, dict) else data
        keep = [row for row in rows if isinstance(row, dict) and list(row.get("models", ())) == list(names)
                and all(key in row for key in ("fractions", "fid", "speedup"))]
        if keep:
            return keep, path
    return None


def plot_frontier(rows: Sequence[dict[str, Any]], source: Path, runs: Sequence[PageRun],
                  names: Sequence[str]) -> Image.Image:
    """FID against speed-up of the measured rows, with this page's choices marked: at their measured FID
    when the file has their allocation, and as a line at the page's own measured speed-up."""
    import matplotlib

    matplotlib.use("Agg")
    from io import BytesIO

    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
        ordered = sorted(rows, key=lambda row: row["speedup"])
        axes.plot([r["speedup"] for r in ordered], [r["fid"] for r in ordered], "o-", color="0.55", ms=4,
                  label=f"measured ({ordered[0].get('num_samples', '?')} samples per point)")
        for run, row in zip(runs, marked_rows(rows, runs, names), strict=True):
            if row is not None:
                axes.plot(row["speedup"], row["fid"], "*", color="crimson", ms=14, zorder=3)
                axes.annotate(", ".join(f"{f:g}" for f in run.allocation), (row["speedup"], row["fid"]),
                              textcoords="offset points", xytext=(6, 6), color="crimson")
            if run.allocation is not None and run.speedup is not None:
                axes.axvline(run.speedup, color="crimson", alpha=0.25, lw=1)
        axes.plot([], [], "*", color="crimson", ms=10, label="this page's fractions (lines: speed-up measured here)")
        axes.set_xlabel(f"speed-up vs {names[-1]} alone")
        axes.set_ylabel("FID (lower is better)")
        axes.set_title(f"{' -> '.join(names)}: speed/quality frontier from {source.name}", fontsize=9)
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        buffer = BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def marked_rows(rows: Sequence[dict[str, Any]], runs: Sequence[PageRun],
                names: Sequence[str]) -> list[dict[str, Any] | None]:
    """For each stitched run of the page, the frontier row measured at its allocation (``None`` if none is,
    and for the large model alone)."""
    found = []
    for run in runs:
        match = [] if run.allocation is None else [
            row for row in rows if _same(_small_shares(row["fractions"], len(names)), run.allocation)]
        found.append(match[0] if match else None)
    return found


def _small_shares(fractions: Sequence[float], num_models: int) -> Sequence[float]:
    """The small models' shares of a frontier row, which gives them alone (the demo) or with the large one's."""
    return fractions[: num_models - 1]


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


# -- the server's state -------------------------------------------------------------------------------------


@dataclass
class ServeState:
    """The models the page can use, loaded on first use and kept, and the lock that keeps one request at a
    time on them (the page also queues its generate event with a concurrency limit of 1)."""

    available: list[str]
    missing: dict[str, str] = field(default_factory=dict)
    custom_models: list[str] | None = None
    device: str = "cpu"
    checkpoint_dir: str | None = None
    frontier_files: tuple[str, ...] = FRONTIER_FILES
    loaded: dict[str, LoadedModels] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def choices(self) -> list[str]:
        return ([CUSTOM] if self.custom_models else []) + list(self.available)

    def models(self, name: str) -> LoadedModels:
        """The loaded models of choice ``name`` (a preset, or ``custom``); ``ValueError`` for one not offered."""
        if name not in self.choices:
            reason = f": {self.missing[name]}" if name in self.missing else ""
            raise ValueError(f"model choice {name!r} is not available{reason}; available: {', '.join(self.choices)}")
        if name not in self.loaded:
            logger.info("loading %s", name)
            if name == CUSTOM:
                self.loaded[name] = load_models(self.custom_models, device=self.device)
            else:
                self.loaded[name] = load_preset(name, device=self.device, checkpoint_dir=self.checkpoint_dir)
        return self.loaded[name]
