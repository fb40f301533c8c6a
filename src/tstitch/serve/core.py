# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What the ``tstitch serve`` page computes, without the page: which model sets can be loaded, the checked
request, and the timed runs (every fraction and the large model alone, from the same noise).

Times are honest in the way the demo's are (:mod:`tstitch.experiments.timing`): every schedule is sampled
``repetitions`` times, in round-robin order over the schedules, and each time is reported as the median of
its repetitions with their spread; a speed-up is the median of the paired per-repetition ratios against the
large model alone. Fraction 0 *is* the large model alone: it is not run twice, and its ratio is 1 by
construction. :mod:`tstitch.serve.views` draws the results and :mod:`tstitch.serve.app` puts them on a page.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

# -- the tstitch API this page uses: one place, so that a refactor of the library repoints only these lines --
from tstitch.experiments.generate import RunResult, SampleOptions, generate
from tstitch.experiments.sample_plans import check_plan, plan_text
from tstitch.experiments.timing import Spread, ratio_spread, round_robin, spread
from tstitch.models.availability import checkpoint_dirs, is_available
from tstitch.models.hub import offline_mode
from tstitch.models.loaded import ClassConditionalModels, LoadedModels
from tstitch.models.loading import load_models, load_preset
from tstitch.models.presets import PRESETS
from tstitch.plan import Plan
from tstitch.planfile import load_plan
from tstitch.sampling.schedulers import SCHEDULERS
from tstitch.sampling.timing import warmup_fractions
from tstitch.tune.cost import CostModel, measure_step_costs

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PRESET",
    "EMBEDDED_SETS",
    "FRONTIER_FILES",
    "MAX_WORK",
    "REPETITIONS",
    "PageRequest",
    "PageResult",
    "PageRun",
    "Progress",
    "RequestJob",
    "Schedule",
    "ServeState",
    "find_tune_plans",
    "paired_distance",
    "parse_allocation",
    "parse_request",
    "preset_availability",
    "run_request",
    "scheduler_names",
]

DEFAULT_PRESET = "digits"
#: Where the page looks for a measured frontier, first found wins: a ``tstitch tune`` result, then the demo's.
FRONTIER_FILES = ("outputs/tune/frontier.json", "outputs/demo/results.json")
#: Model sets the page offers besides the presets: embedded models, always at hand (no network, no files).
EMBEDDED_SETS = {"digits-unet": ("digits-unet-s", "digits-unet")}
CUSTOM = "custom"  # the model-choice name of the models given with ``tstitch serve --model``
MAX_IMAGES = 64
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1  # a seed is a signed 64-bit number in torch
MAX_GUIDANCE = 100.0
#: The most work one request may ask for: steps x images x runs (each run is timed ``REPETITIONS`` times).
MAX_WORK = 20_000
#: Every time on the page is the median of this many repetitions (run in round-robin order).
REPETITIONS = 3
#: The longest a request waits, after its first round, for the page to show the tiles (seconds).
PAUSE_LIMIT = 60.0
#: Where :func:`find_tune_plans` looks, below the server's working directory, and what it skips.
PLAN_SEARCH_DEPTH = 4
_SKIPPED_FOLDERS = {"node_modules", "__pycache__", "site-packages"}


def scheduler_names() -> list[str]:
    """The schedulers the page offers (the ``--scheduler`` table of :mod:`tstitch.sampling.schedulers`)."""
    return list(SCHEDULERS)


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


# -- plans from tstitch tune --------------------------------------------------------------------------------


def find_tune_plans(root: str | os.PathLike, depth: int = PLAN_SEARCH_DEPTH) -> dict[str, Plan]:
    """The plans of the ``tstitch tune --out`` folders below ``root`` (a ``plan.json`` beside a
    ``frontier.json``), at most ``depth`` folders down, keyed by their folder relative to ``root``. Hidden
    folders and links are not entered; a plan that cannot be read is left out with one warning."""
    root = Path(root)
    found: dict[str, Plan] = {}
    for folder, names, files in os.walk(root):
        here = Path(folder)
        level = len(here.relative_to(root).parts)
        names[:] = sorted(n for n in names if not n.startswith(".") and n not in _SKIPPED_FOLDERS
                          and level < depth)
        if "plan.json" in files and "frontier.json" in files and not (here / "plan.json").is_symlink():
            try:
                found[here.relative_to(root).as_posix()] = load_plan(here / "plan.json")
            except (OSError, ValueError) as error:
                logger.warning("not offering the plan in %s: %s", here, error)
    return found


# -- the request --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """One run of a request: the large model alone (``allocation`` all zeros, the reference), the small
    models' shares ``allocation``, or a per-step ``plan`` (``allocation`` ``None``)."""

    allocation: tuple[float, ...] | None
    plan: Plan | None = None
    #: For a plan: where it came from (an uploaded file's name or a tune folder).
    source: str | None = None

    @property
    def is_reference(self) -> bool:
        return self.plan is None and self.allocation is not None and not any(self.allocation)

    def label(self, names: Sequence[str]) -> str:
        """``r 0.4`` (the small models' shares), ``r 0 (digits-xl alone)`` or ``plan S8 > XL12``."""
        if self.plan is not None:
            return f"plan {plan_text(self.plan, names) or self.plan}"
        shares = ",".join(f"{f:g}" for f in self.allocation)
        return f"r {shares} ({names[-1]} alone)" if self.is_reference else f"r {shares}"


@dataclass(frozen=True)
class PageRequest:
    """One press of *Generate*, checked. ``allocations``: the small models' shares of each stitched run (the
    reference, all zeros, is not among them: it always runs)."""

    model: str
    allocations: tuple[tuple[float, ...], ...]
    steps: int
    scheduler: str | None
    guidance: float
    seed: int
    num_images: int
    class_labels: tuple[int, ...] | None = None
    prompt: str | None = None
    #: A per-step plan (``tstitch tune``'s plan.json), sampled as one more run; ``plan_source`` names it.
    plan: Plan | None = None
    plan_source: str | None = None
    num_models: int = 2

    def schedules(self) -> list[Schedule]:
        """The runs, the reference (the large model alone) first."""
        runs = [Schedule((0.0,) * (self.num_models - 1))] + [Schedule(a) for a in self.allocations]
        if self.plan is not None:
            runs.append(Schedule(None, self.plan, self.plan_source))
        return runs

    @property
    def num_runs(self) -> int:
        return 1 + len(self.allocations) + (self.plan is not None)

    @property
    def work(self) -> int:
        """Steps x images x runs: what :data:`MAX_WORK` caps."""
        return self.steps * self.num_images * self.num_runs


def _whole(value: Any, name: str, low: int, high: int, shown_high: str | None = None) -> int:
    """``value`` (a number or its text) as an int in ``[low, high]``; ``ValueError`` naming ``name``."""
    bounds = f"in [{low}, {shown_high or high}]"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty: give a whole number {bounds}")
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}")
    number: int | float
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text)  # exact for long digit strings ("18446744073709551616")
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}") from None
    if isinstance(number, float) and (not math.isfinite(number) or number != int(number)):
        raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}")
    return int(number)


def _real(value: Any, name: str, low: float, high: float) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty: give a number in [{low:g}, {high:g}]")
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):  # NaN fails too
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return number


def parse_allocation(text: Any, num_models: int) -> tuple[float, ...]:
    """``"0.4"`` (two models) or ``"0.4,0.2"`` (three): the shares of the small models, smallest first."""
    try:
        shares = tuple(float(part) for part in str(text).replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"fractions: {text!r} is not a number (or comma-separated numbers)") from None
    if len(shares) != num_models - 1:
        raise ValueError(f"fractions: {num_models} models take {num_models - 1} comma-separated shares, "
                         f"got {text!r}")
    if any(not 0.0 <= s <= 1.0 for s in shares) or sum(shares) > 1.0 + 1e-6:  # NaN fails the first test
        raise ValueError(f"fractions must be in [0, 1] and sum to at most 1, got {text!r}")
    return shares


def _labels(text: Any, num_classes: int | None) -> tuple[int, ...] | None:
    if text is None or not str(text).strip():
        return None
    parts = str(text).replace(",", " ").split()
    if len(parts) > MAX_IMAGES:
        raise ValueError(f"class labels: at most {MAX_IMAGES} (one per image), got {len(parts):,}")
    try:
        labels = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"class labels must be whole numbers separated by spaces, got {str(text)[:80]!r}") from None
    if num_classes is not None:
        bad = [y for y in labels if not 0 <= y < num_classes]
        if bad:
            raise ValueError(f"class labels must be in [0, {num_classes - 1}] for these models, got {bad}")
    return labels


def parse_request(model: str, fractions: Any, steps: Any, scheduler: Any, guidance: Any, seed: Any,
                  num_images: Any, labels: Any, prompt: Any, *, num_models: int, class_conditional: bool,
                  num_classes: int | None = None, plan: Plan | None = None, plan_source: str | None = None,
                  max_work: int = MAX_WORK) -> PageRequest:
    """Check the page's inputs: ``ValueError`` naming the field and the value, before any work.

    Numbers may come as numbers or as their text (the HTTP API); ``fractions`` are the small models' shares
    (``"0.4"``, ``"0.4,0.2"`` for three models); a fraction of 0 is the reference, which always runs.
    ``plan``: a per-step plan sampled as one more run. A request asking for more than ``max_work``
    steps x images x runs is refused, naming the three."""
    if fractions is None:
        fractions = []
    if isinstance(fractions, (str, int, float)):
        fractions = [fractions]
    if not isinstance(fractions, (list, tuple)) or len(fractions) > 100:
        raise ValueError(f"fractions must be a list of at most 100 fractions, got {str(fractions)[:80]}")
    allocations = tuple(dict.fromkeys(parse_allocation(f, num_models) for f in fractions))
    allocations = tuple(a for a in allocations if any(a))  # 0 is the reference
    if not fractions and plan is None:
        raise ValueError("fractions: choose at least one fraction (or a plan)")
    steps = _whole(steps, "steps", 1, MAX_STEPS)
    if plan is not None:
        try:
            check_plan(plan, None, steps, [f"model {i}" for i in range(num_models)])
        except ValueError as error:
            where = f"plan {plan_source}" if plan_source else "plan"
            raise ValueError(f"{where}: {str(error).replace('(--steps)', '(the steps field)')}") from None
    guidance = _real(guidance, "guidance", 0.0, MAX_GUIDANCE)
    if scheduler not in (None, "") and scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {str(scheduler)[:80]!r} is not offered; offered: {', '.join(SCHEDULERS)}")
    seed = _whole(seed, "seed", 0, MAX_SEED, shown_high="2**63 - 1")
    num_images = _whole(num_images, "images", 1, MAX_IMAGES)
    class_labels = _labels(labels, num_classes) if class_conditional else None
    if not class_conditional and not (prompt and str(prompt).strip()):
        raise ValueError("prompt is empty: give a prompt")
    request = PageRequest(model, allocations, steps, scheduler or None, guidance, seed, num_images, class_labels,
                          str(prompt).strip() if prompt and not class_conditional else None, plan, plan_source,
                          num_models)
    if request.work > max_work:
        raise ValueError(f"too much work for one request: steps x images x runs = {steps} x {num_images} x "
                         f"{request.num_runs} = {request.work:,}, more than {max_work:,}; ask for fewer steps, "
                         "images or fractions")
    return request


# -- the runs -----------------------------------------------------------------------------------------------


@dataclass
class PageRun:
    """One schedule of a request: its first repetition's images and steps, and its timings."""

    schedule: Schedule
    result: RunResult
    names: list[str]
    #: Wall-clock seconds of each repetition (all images, denoising and decoding).
    seconds: list[float] = field(default_factory=list)
    #: The large model alone's time over this one's, paired per repetition (1 by construction for r 0).
    speedup: Spread | None = None
    #: Seconds the per-step costs predict for the model calls of one repetition (``None``: no cost model).
    predicted_seconds: float | None = None
    predicted_speedup: float | None = None
    #: Paired distance of the images to the reference's (0: the same images; see :func:`paired_distance`).
    distance: float | None = None

    @property
    def label(self) -> str:
        return self.schedule.label(self.names)

    @property
    def allocation(self) -> tuple[float, ...] | None:
        return self.schedule.allocation

    @property
    def time(self) -> Spread | None:
        return spread(self.seconds) if self.seconds else None

    @property
    def within_noise(self) -> bool:
        """The speed-up's spread reaches 1 (the reference itself is not 'within noise': it is the reference)."""
        s = self.speedup
        return s is not None and not self.schedule.is_reference and s.low <= 1.0 <= s.high

    def step_models(self) -> list[str]:
        """The name of the model that ran each denoising step, in order."""
        return [self.names[i] for i in self.result.model_per_step]

    def steps_per_model(self) -> dict[str, int]:
        counts = {name: 0 for name in self.names}
        for name in self.step_models():
            counts[name] += 1
        return {name: count for name, count in counts.items() if count}

    def as_dict(self) -> dict[str, Any]:
        time_spread, speed = self.time, self.speedup
        return {
            "label": self.label, "reference": self.schedule.is_reference,
            "allocation": None if self.allocation is None else list(self.allocation),
            "plan": None if self.schedule.plan is None else str(self.schedule.plan),
            "plan_source": self.schedule.source,
            "models": list(self.names), "steps_per_model": self.steps_per_model(),
            "model_per_step": list(self.result.model_per_step), "step_models": self.step_models(),
            "seconds": list(self.seconds), "seconds_median": None if time_spread is None else time_spread.median,
            "seconds_low": None if time_spread is None else time_spread.low,
            "seconds_high": None if time_spread is None else time_spread.high,
            "speedup": None if speed is None else speed.median, "speedup_low": None if speed is None else speed.low,
            "speedup_high": None if speed is None else speed.high, "within_noise": self.within_noise,
            "predicted_seconds": self.predicted_seconds, "predicted_speedup": self.predicted_speedup,
            "distance": self.distance,
        }


@dataclass
class PageResult:
    """A request's runs (the reference first) and what was timed."""

    runs: list[PageRun]
    repetitions: int
    batch_size: int
    steps: int
    threads: int
    device: str
    costs: CostModel | None
    #: ``True`` while only the first round is in (images and one repetition of each time).
    partial: bool = False

    def timing_text(self) -> str:
        """What the times are, in one sentence for the page."""
        what = (f"the first of {self.repetitions} repetitions (the others are running)" if self.partial
                else f"the median of {self.repetitions} repetitions, with the lowest and highest")
        text = (f"Times: {what}, run in turn (round-robin over the runs); "
                f"each repetition samples all {self.batch_size} images in one batch, {self.steps} steps, on "
                f"{self.device} with {self.threads} torch thread{'s' if self.threads != 1 else ''}, decoding "
                "included. Speed-up: the large model alone's time over the run's, paired per repetition; "
                "'within noise' when its range reaches 1.")
        if self.costs is not None:
            text += (f" Predicted: the sum of per-step costs measured at batch {self.costs.batch_size} "
                     f"({self.costs.repetitions} repetitions, model calls only).")
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"runs": [run.as_dict() for run in self.runs], "repetitions": self.repetitions,
                "batch_size": self.batch_size, "steps": self.steps, "threads": self.threads, "device": self.device,
                "step_costs": None if self.costs is None else self.costs.as_dict(), "partial": self.partial}


@dataclass(frozen=True)
class Progress:
    """Where a request is: ``run`` of ``runs`` (1-based), ``step`` of ``steps`` in it, timing round
    ``repetition`` of ``repetitions``; ``done`` of ``total`` denoising steps in all."""

    run: int
    runs: int
    step: int
    steps: int
    repetition: int
    repetitions: int
    done: int
    total: int
    label: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def __str__(self) -> str:
        return (f"run {self.run} of {self.runs}, step {self.step} of {self.steps} "
                f"(timing round {self.repetition} of {self.repetitions}{', ' + self.label if self.label else ''})")


class _Cancelled(Exception):
    """Raised before a model call once the request is cancelled: the sampling stops within one step."""


class _StepWatch:
    """Forward pre-hooks on the denoisers, for the duration of a request: every model call (one per denoising
    step, in every sampler: the bare loop, the published DiT sampler and stitched pipelines) checks the cancel
    flag and counts the step."""

    def __init__(self, models: Sequence[torch.nn.Module], cancel: threading.Event, on_step: Callable[[], None]):
        self.models, self.cancel, self.on_step = list(models), cancel, on_step
        self.counting = False
        self.handles: list[Any] = []

    def __enter__(self) -> _StepWatch:
        self.handles = [model.register_forward_pre_hook(self._before) for model in self.models]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def _before(self, *args: Any) -> None:
        if self.cancel.is_set():
            raise _Cancelled
        if self.counting:
            self.on_step()


def _denoisers(loaded: LoadedModels) -> list[torch.nn.Module]:
    if isinstance(loaded, ClassConditionalModels):
        return list(loaded.models)
    return [*loaded.small_models, loaded.large]


def paired_distance(images: torch.Tensor, reference: torch.Tensor) -> float | None:
    """How far ``images`` are from the ``reference`` images of the same noise, as ``tstitch tune`` measures it
    (:mod:`tstitch.tune.quality`, here on the pixels): the mean paired distance over the mean distance between
    different reference images, so 0 is "the same images" and 1 "as different as two unrelated samples".
    ``None`` for a single image (no unrelated pair to scale by)."""
    if len(reference) < 2:
        return None
    flat, ref = images.flatten(1).double(), reference.flatten(1).double()
    scale = float((ref - ref.roll(1, dims=0)).norm(dim=1).mean())
    return float((flat - ref).norm(dim=1).mean()) / scale if scale > 0 else None


def run_request(loaded: LoadedModels, request: PageRequest, *, repetitions: int = REPETITIONS,
                cancel: threading.Event | None = None, on_progress: Callable[[Progress], None] | None = None,
                on_first_round: Callable[[PageResult], None] | None = None,
                costs: CostModel | None = None) -> PageResult | None:
    """Sample every schedule of ``request`` ``repetitions`` times, in round-robin order, after one untimed
    warm-up at the request's batch size; ``None`` when ``cancel`` is set meanwhile (the sampling stops
    before its next model call). ``on_first_round`` sees the images and first times once every schedule ran
    once; ``costs`` (per-step costs at the request's batch size) give the predicted times."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    cancel = cancel or threading.Event()
    names = list(loaded.names)
    schedules = request.schedules()
    options = SampleOptions(
        num_steps=request.steps, scheduler=request.scheduler, guidance_scale=request.guidance,
        class_labels=list(request.class_labels) if request.class_labels else None,
        prompts=[request.prompt] if request.prompt else None, num_images=request.num_images,
        seed=request.seed, progress=False, warmup=False,
    )

    def options_for(schedule: Schedule) -> SampleOptions:
        if schedule.plan is not None:
            return replace(options, plan=schedule.plan)
        return replace(options, fractions=list(schedule.allocation))

    order = round_robin(len(schedules), repetitions)
    position = {"job": 0, "step": 0}

    def report() -> None:
        position["step"] += 1
        if on_progress:
            repetition, index = order[position["job"]]
            on_progress(Progress(index + 1, len(schedules), min(position["step"], request.steps), request.steps,
                                 repetition + 1, repetitions, position["job"] * request.steps + position["step"],
                                 len(order) * request.steps, schedules[index].label(names)))

    runs: list[PageRun | None] = [None] * len(schedules)
    watch = _StepWatch(_denoisers(loaded), cancel, report)
    try:
        with watch:
            k = len(names)  # the warm-up: every model takes a step, at the request's batch size (untimed)
            generate(loaded, replace(options, fractions=list(warmup_fractions(k)[:-1]), num_steps=max(k, 2)))
            watch.counting = True
            for job, (repetition, index) in enumerate(order):
                position.update(job=job, step=0)
                result = generate(loaded, options_for(schedules[index])).stitched
                if runs[index] is None:
                    runs[index] = PageRun(schedules[index], result, names)
                runs[index].seconds.append(result.seconds)
                if repetition == 0 and index == len(schedules) - 1 and repetitions > 1 and on_first_round:
                    on_first_round(_result(runs, request, repetitions, loaded, costs, partial=True))
    except _Cancelled:
        logger.info("request cancelled: the sampling stopped before its next step")
        return None
    return _result(runs, request, repetitions, loaded, costs)


def _result(runs: list[PageRun], request: PageRequest, repetitions: int, loaded: LoadedModels,
            costs: CostModel | None, partial: bool = False) -> PageResult:
    reference = runs[0]
    for run in runs:
        if run.schedule.is_reference:
            run.speedup = Spread(1.0, 1.0, 1.0)
        else:
            run.speedup = ratio_spread(reference.seconds, run.seconds[: len(reference.seconds)])
        run.distance = paired_distance(run.result.images, reference.result.images)
        if costs is not None:
            run.predicted_seconds = costs.plan_seconds(run.result.model_per_step)
            run.predicted_speedup = costs.plan_seconds(reference.result.model_per_step) / run.predicted_seconds
    return PageResult(list(runs), repetitions, request.num_images, request.steps, torch.get_num_threads(),
                      str(loaded.device), costs, partial)


def step_costs(loaded: LoadedModels, request: PageRequest) -> CostModel | None:
    """Per-step costs of the models at the request's batch size (class-conditional models only: a pipeline's
    denoiser needs its text conditioning)."""
    if not isinstance(loaded, ClassConditionalModels):
        return None
    return measure_step_costs(loaded.models, loaded.latent_shape, batch_size=request.num_images,
                              num_classes=loaded.num_classes, guidance_scale=request.guidance, device=loaded.device)


class RequestJob:
    """One request sampled on a thread of its own, so that the page can show progress, pause after the first
    round (to draw the tiles while nothing is being timed) and cancel it: :meth:`cancel` stops the sampling
    before its next denoising step. Holds ``state.lock`` while sampling."""

    def __init__(self, state: ServeState, loaded: LoadedModels, request: PageRequest, *,
                 repetitions: int = REPETITIONS, pause_after_first_round: bool = True):
        self.state, self.loaded, self.request, self.repetitions = state, loaded, request, repetitions
        self.pause = pause_after_first_round
        self.cancelled = threading.Event()
        self.resumed = threading.Event()
        self.progress: Progress | None = None
        self.status = "waiting for the models"
        self.first_round: PageResult | None = None
        self.result: PageResult | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="tstitch-serve-request", daemon=True)

    def start(self) -> RequestJob:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and self._thread.ident is not None

    def cancel(self) -> None:
        self.cancelled.set()
        self.resumed.set()

    def resume(self) -> None:
        """The page has shown the first round: timing goes on."""
        self.resumed.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _on_progress(self, progress: Progress) -> None:
        self.progress = progress
        self.status = str(progress)

    def _on_first_round(self, result: PageResult) -> None:
        self.first_round = result
        if self.pause:  # a page that never answers does not keep the models locked
            self.resumed.wait(PAUSE_LIMIT)

    def _run(self) -> None:
        begin = time.perf_counter()
        try:
            with self.state.lock:
                if self.cancelled.is_set():
                    return
                self.status = "measuring per-step costs"
                costs = self.state.step_costs(self.request.model, self.loaded, self.request)
                self.status = "warming up"
                self.result = run_request(self.loaded, self.request, repetitions=self.repetitions,
                                          cancel=self.cancelled, on_progress=self._on_progress,
                                          on_first_round=self._on_first_round, costs=costs)
        except BaseException as error:  # handed to the page, which reports it
            self.error = error
        finally:
            self.seconds = time.perf_counter() - begin


# -- the server's state -------------------------------------------------------------------------------------


@dataclass
class ServeState:
    """The models the page can use, loaded on first use and kept, the lock that keeps one request at a time
    on them (the page also queues its generate event with a concurrency limit of 1), the tune plans offered
    and the per-step costs measured so far."""

    available: list[str]
    missing: dict[str, str] = field(default_factory=dict)
    custom_models: list[str] | None = None
    device: str = "cpu"
    checkpoint_dir: str | None = None
    frontier_files: tuple[str, ...] = FRONTIER_FILES
    #: The ``tstitch tune`` plans offered, by folder (:func:`find_tune_plans`); the page offers no other path.
    tune_plans: dict[str, Plan] = field(default_factory=dict)
    max_work: int = MAX_WORK
    repetitions: int = REPETITIONS
    loaded: dict[str, LoadedModels] = field(default_factory=dict)
    costs: dict[tuple[str, int, float], CostModel] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def choices(self) -> list[str]:
        return ([CUSTOM] if self.custom_models else []) + list(self.available) + list(EMBEDDED_SETS)

    def models(self, name: str) -> LoadedModels:
        """The loaded models of choice ``name`` (a preset, an embedded set or ``custom``); ``ValueError`` for
        one not offered."""
        if name not in self.choices:
            reason = f": {self.missing[name]}" if name in self.missing else ""
            raise ValueError(f"models: {str(name)[:80]!r} is not offered{reason}; offered: {', '.join(self.choices)}")
        if name not in self.loaded:
            logger.info("loading %s", name)
            if name == CUSTOM:
                self.loaded[name] = load_models(self.custom_models, device=self.device)
            elif name in EMBEDDED_SETS:
                self.loaded[name] = load_models(list(EMBEDDED_SETS[name]), device=self.device)
            else:
                self.loaded[name] = load_preset(name, device=self.device, checkpoint_dir=self.checkpoint_dir)
        return self.loaded[name]

    def plans_for(self, num_models: int) -> list[str]:
        """The tune folders whose plan is for ``num_models`` models."""
        return [folder for folder, plan in self.tune_plans.items() if plan.num_models == num_models]

    def step_costs(self, name: str, loaded: LoadedModels, request: PageRequest) -> CostModel | None:
        """:func:`step_costs`, measured once per model choice, batch size and guidance."""
        key = (name, request.num_images, request.guidance)
        if key not in self.costs:
            found = step_costs(loaded, request)
            if found is None:
                return None
            self.costs[key] = found
        return self.costs[key]
