# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The timed runs of a ``tstitch serve`` request: every schedule and the large model alone, from the same noise.

Times are honest in the way the demo's are (:mod:`tstitch.experiments.timing`): every schedule is sampled
``repetitions`` times, in round-robin order over the schedules, and each time is reported as the median of
its repetitions with their spread; a speed-up is the median of the paired per-repetition ratios against the
large model alone. Fraction 0 *is* the large model alone: it is not run twice, and its ratio is 1 by
construction. :mod:`tstitch.serve.views` draws the results.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from tstitch.experiments.generate import RunResult, SampleOptions, generate
from tstitch.experiments.timing import Spread, ratio_spread, round_robin, spread
from tstitch.models.loaded import ClassConditionalModels, LoadedModels
from tstitch.sampling.timing import warmup_fractions
from tstitch.tune.cost import CostModel, measure_step_costs

from .request import PageRequest, Schedule

logger = logging.getLogger(__name__)

__all__ = ["REPETITIONS", "PageResult", "PageRun", "Progress", "paired_distance", "run_request", "step_costs"]

#: Every time on the page is the median of this many repetitions (run in round-robin order).
REPETITIONS = 3


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
