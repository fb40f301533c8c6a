# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Counting the steps of a diffusers scheduler, and the record of what a stitched run did.

The current step is counted on the scheduler itself: ``set_timesteps`` resets the count, ``set_begin_index``
moves it, and every ``step()`` call advances it. A second-order scheduler (Heun, KDPM2) calls ``step()``
twice per step (``scheduler.order == 2``), so the model can only change between whole steps; extra
denoiser calls within a step (classifier-free guidance as two calls, ControlNet) see the same model because
nothing is counted per call.

A scheduler holds the state of one run at a time, so a run belongs to the thread that started it
(``set_timesteps``): a scheduler call or denoiser call from another thread while it lasts raises
:data:`THREAD_ERROR` there, and marks the run so that its own thread raises too at its next denoiser call.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["StitchRecord", "StepCounter", "THREAD_ERROR", "num_steps_of", "model_name"]

THREAD_ERROR = (
    "a stitched pipeline (or StitchedDenoiser) is not thread-safe: it was used from two threads at once, and "
    "its scheduler counts the steps of one run at a time. Give each thread its own pipeline and scheduler, or "
    "hold a lock around each call"
)


@dataclass
class StitchRecord:
    """What happened during the last sampling run of a stitched denoiser.

    ``calls`` holds one ``(step, model_index)`` pair per denoiser call, in order; ``seconds`` and
    ``num_calls`` are per model. Times are wall-clock around each call; on CUDA they only mean something
    when the denoiser was built with ``sync_timing=True``. An adaptive plan's run also has ``switch_steps``:
    the step at which each sample (row of the scheduler's sample) switched from model ``switch_models[0]`` to
    ``switch_models[1]`` (``num_steps``: never); a call whose batch was split adds one entry per model.
    """

    model_names: list[str]
    num_steps: int = 0
    calls: list[tuple[int, int]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    num_calls: list[int] = field(default_factory=list)
    switch_steps: list[int] | None = None
    switch_models: tuple[int, int] | None = None
    _timesteps: Any = None  # the scheduler's timesteps of this run, read lazily (no device sync per call)
    _call_positions: list[int] = field(default_factory=list)

    def reset(self, num_steps: int, timesteps: Any) -> None:
        self.num_steps = num_steps
        self.calls.clear()
        self._call_positions.clear()
        self.seconds = [0.0] * len(self.model_names)
        self.num_calls = [0] * len(self.model_names)
        self._timesteps = timesteps
        self.switch_steps = self.switch_models = None

    def add(self, step: int, position: int, model_index: int, seconds: float) -> None:
        self.calls.append((step, model_index))
        self._call_positions.append(position)
        self.seconds[model_index] += seconds
        self.num_calls[model_index] += 1

    @property
    def timesteps(self) -> list[float]:
        """The scheduler timestep of each call (``nan`` where the scheduler had none)."""
        if self._timesteps is None:
            return [math.nan] * len(self.calls)
        values = torch.as_tensor(self._timesteps).detach().cpu().tolist()
        return [values[p] if p < len(values) else math.nan for p in self._call_positions]

    def model_per_step(self) -> list[int]:
        """The model index of each scheduler step that ran (the first call of the step decides)."""
        per_step: dict[int, int] = {}
        for step, model_index in self.calls:
            per_step.setdefault(step, model_index)
        return [per_step[s] for s in sorted(per_step)]

    def steps_per_model(self) -> list[int]:
        """How many scheduler steps each model ran."""
        per_step = self.model_per_step()
        return [per_step.count(i) for i in range(len(self.model_names))]

    def model_per_step_per_sample(self) -> list[list[int]] | None:
        """Adaptive plans: for each sample, the model index of every step (``None`` for a fixed plan)."""
        if self.switch_steps is None:
            return None
        start, end = self.switch_models
        return [[start if k < switch else end for k in range(self.num_steps)] for switch in self.switch_steps]

    def as_dict(self) -> dict[str, Any]:
        adaptive = {} if self.switch_steps is None else {
            "switch_steps": list(self.switch_steps), "model_per_step_per_sample": self.model_per_step_per_sample()}
        return {
            "model_names": list(self.model_names),
            "num_steps": self.num_steps,
            "model_per_step": self.model_per_step(),
            "calls": [
                {"step": s, "timestep": t, "model": m}
                for (s, m), t in zip(self.calls, self.timesteps, strict=True)
            ],
            "seconds": list(self.seconds),
            "num_calls": list(self.num_calls),
            **adaptive,
        }


def model_name(model: Any, index: int) -> str:
    """A model's name in a record: its ``_tstitch_name`` (set by the loaders), else its class and index."""
    return getattr(model, "_tstitch_name", None) or f"{type(model).__name__}[{index}]"


class StepCounter:
    """Counts the ``step()`` calls of one scheduler instance, for the thread whose run it is.

    The scheduler's methods are wrapped once per scheduler, however many counters listen to it (stitched
    pipelines may share one scheduler), and the originals come back when the last counter detaches: one
    counter detaching never silences another.
    """

    _HOOKED = ("set_timesteps", "set_begin_index", "step", "scale_model_input")

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.calls = 0
        #: a new run began (``set_timesteps`` or a new scheduler): the next denoiser call resets the record
        self.new_run = False
        #: a run is under way: ``set_timesteps`` was seen (or the scheduler was picked up mid-run) and not every
        #: timestep has been stepped yet. A hooked model runs unstitched outside its pipeline's runs.
        self.in_run = True
        self.owner: int | None = None  # the thread of the current run
        self.conflict = False  # another thread touched the scheduler during the run
        #: ``listener(position, args, kwargs)`` before each ``step()`` call is counted (adaptive plans' signal)
        self.on_step: list[Callable[[int, tuple, dict], None]] = []
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> Any:
        raise RuntimeError(
            "a stitched pipeline (or a scheduler it counts steps on) cannot be deep-copied: call "
            "tstitch.unstitch(pipe) first, copy it, then stitch the original and the copy"
        )

    def attach(self, scheduler: Any) -> None:
        if scheduler is self.scheduler:
            return
        self.detach()
        self.scheduler = scheduler
        # A scheduler swapped in after stitch() is picked up at the first call of a run: its step state
        # says where the run stands (schedulers that track it), else the run is at its beginning.
        step_index = getattr(scheduler, "_step_index", None)
        begin_index = getattr(scheduler, "_begin_index", None)
        self.calls = step_index if step_index is not None else (begin_index or 0)
        self.new_run = self.in_run = True
        self.owner, self.conflict = None, False
        counters = scheduler.__dict__.get(_COUNTERS)
        if counters is None:
            counters, saved = [], {}
            for name in self._HOOKED:
                original = getattr(scheduler, name, None)
                if original is None:
                    continue
                saved[name] = scheduler.__dict__.get(name, _MISSING)
                setattr(scheduler, name, _hooked(scheduler, name, original))
            scheduler.__dict__[_SAVED] = saved
            scheduler.__dict__[_COUNTERS] = counters
        counters.append(self)

    def check_thread(self, name: str = "denoiser") -> None:
        """Raise :data:`THREAD_ERROR` if the current run belongs to another thread (or was disturbed by one)."""
        if name == "set_timesteps":
            return  # a new run may start from any thread; the old run's thread then fails at its next call
        me = threading.get_ident()
        with self._lock:
            if self.owner is None:
                self.owner = me
            if self.owner != me:
                self.conflict = True
                raise RuntimeError(THREAD_ERROR)
            if self.conflict and name == "denoiser":
                raise RuntimeError(THREAD_ERROR)

    def notify(self, name: str, args: tuple, kwargs: dict) -> None:
        with self._lock:
            if name == "step":
                for listener in self.on_step:
                    listener(self.calls, args, kwargs)
                self.calls += 1
                timesteps = getattr(self.scheduler, "timesteps", None)
                if timesteps is not None and self.calls >= len(timesteps):
                    self.in_run = False
            elif name == "set_timesteps":
                self.calls = 0
                self.new_run = self.in_run = True
                self.owner, self.conflict = threading.get_ident(), False
            elif name == "set_begin_index":
                self.calls = args[0] if args else kwargs.get("begin_index", 0)

    def detach(self) -> None:
        scheduler = self.scheduler
        if scheduler is not None:
            counters = scheduler.__dict__.get(_COUNTERS, [])
            counters[:] = [counter for counter in counters if counter is not self]
            if not counters:
                for name, saved in scheduler.__dict__.pop(_SAVED, {}).items():
                    if saved is _MISSING:
                        scheduler.__dict__.pop(name, None)
                    else:
                        setattr(scheduler, name, saved)
                scheduler.__dict__.pop(_COUNTERS, None)
        self.scheduler = None


def _hooked(scheduler: Any, name: str, original: Callable) -> Callable:
    """``original`` (a method of ``scheduler``), checked and told to every counter attached to ``scheduler``."""

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counters = list(scheduler.__dict__.get(_COUNTERS, ()))
        for counter in counters:
            counter.check_thread(name)
        result = original(*args, **kwargs)
        for counter in counters:
            counter.notify(name, args, kwargs)
        return result

    return wrapper


_COUNTERS = "_tstitch_counters"  # on a hooked scheduler: the step counters attached to it
_SAVED = "_tstitch_saved"  # on a hooked scheduler: its hooked attributes as they were before
_MISSING = object()


def num_steps_of(scheduler: Any) -> int:
    """Number of solver steps of the scheduler's current run."""
    num = getattr(scheduler, "num_inference_steps", None)
    if num:
        return int(num)
    timesteps = getattr(scheduler, "timesteps", None)
    order = getattr(scheduler, "order", 1) or 1
    return math.ceil(len(timesteps) / order) if timesteps is not None else 0
