# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The :class:`StitchedDenoiser`: several denoisers behind one call, the plan's model at each scheduler step.

It holds every model of a stitch (smallest first, the large model last) and, at each call, runs the model
that its :class:`~tstitch.plan.Plan` assigns to the current *scheduler step*, counted on the scheduler by
:class:`~tstitch.stepcount.StepCounter` (an adaptive plan: the model of each sample, :mod:`tstitch.switching`).
Called directly it is a bare denoiser; :mod:`tstitch.stitcher` hooks it onto a pipeline's own model.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .conditioning import Adapter, adapted_call, per_model
from .plan import Plan
from .stepcount import StepCounter, StitchRecord, model_name, num_steps_of
from .switching import Switching

__all__ = ["StitchedDenoiser"]


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


class StitchedDenoiser(nn.Module):
    """Runs one of several denoisers at each scheduler step, behaving like the last (large) one.

    Args:
        models: the denoisers, ordered by use: smallest first, the large model last.
        plan: a :class:`Plan` (or the small models' fractions) saying which model runs each step.
        sync_timing: synchronize CUDA around each call so that the per-model times in :attr:`record`
            are real (costs a little speed; off by default).
        conditioning: one adapter per small model (``None``: it shares the call's conditioning), see
            :mod:`tstitch.conditioning`.

    Called directly, it is a bare denoiser for a sampling loop of your own (:func:`tstitch.sample`); the
    scheduler whose steps are counted is given by :meth:`bind`. In a pipeline, :func:`stitch` makes one and
    hooks it onto the large model. Attributes not found here (``config``, ``dtype``, ...) are the large model's.
    Not thread-safe: a call from a second thread during a run raises ``RuntimeError``.
    """

    def __init__(self, models: Sequence[nn.Module], plan: Plan | float | Sequence[float], sync_timing: bool = False,
                 conditioning: Sequence[Adapter | None] | None = None):
        super().__init__()
        self.plan = Plan.coerce(plan, len(models))
        self.conditioning = per_model(conditioning, len(models))
        self.models = nn.ModuleList(models)
        self.sync_timing = sync_timing
        #: Called as ``callback(model_index)`` before each model call, in order, outside the timed part (model
        #: offloading, feature caches): features append themselves and remove only themselves.
        self.before_call: list[Callable[[int], None]] = []
        #: Features that come off with the stitch: ``name -> object with remove()`` (``tstitch.caching``).
        self.extensions: dict[str, Any] = {}
        self.record = StitchRecord([model_name(m, i) for i, m in enumerate(models)])
        self._counter = StepCounter()
        #: an adaptive plan's per-sample state (tstitch.switching), fed by every scheduler step
        self.switching = None if self.plan.adaptive is None else Switching(self.plan.adaptive)
        if self.switching is not None:
            if any(adapter is not None for adapter in self.conditioning):
                raise ValueError("an adaptive plan cannot split the batch of a model with its own conditioning yet")
            self._counter.on_step.append(self.switching.on_step)
        self._sources: list[Callable[[], Any]] = []  # where the scheduler comes from, latest bind() last
        self.large_forward: Callable | None = None  # set while hooked on the large model: its own forward
        # Expose the large model's forward signature (pipelines inspect it) on a per-instance forward.
        forward = functools.partial(StitchedDenoiser._dispatch, self)
        forward = functools.update_wrapper(forward, type(models[-1]).forward)
        forward.__signature__ = self._signature = inspect.signature(models[-1].forward)
        self.forward = forward

    @property
    def large(self) -> nn.Module:
        return self.models[-1]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            models = self.__dict__.get("_modules", {}).get("models")
            if models is None:
                raise
            return getattr(models[-1], name)

    # -- step tracking -------------------------------------------------------------------------------
    def bind(self, scheduler: Any, *, running: bool = True) -> StitchedDenoiser:
        """Count steps on ``scheduler``, or on whatever a zero-argument callable returns at each call (a
        pipeline's ``scheduler`` attribute, which may be swapped). ``running=False``: no run is under way yet.

        :meth:`unbind` goes back to the binding before it, so that :func:`tstitch.sample` can borrow the
        denoiser of a stitched pipeline without unstitching the pipeline.
        """
        source = scheduler if callable(scheduler) and not hasattr(scheduler, "step") else (lambda: scheduler)
        self._sources.append(source)
        self._counter.detach()
        if self._scheduler() is not None:
            self._counter.in_run = running
        return self

    def unbind(self) -> None:
        """Stop counting steps where the last :meth:`bind` said; go back to the binding before it, if any."""
        if self._sources:
            self._sources.pop()
        self._counter.detach()

    def release(self) -> None:
        """Drop every binding (the denoiser leaves its pipeline)."""
        self._sources.clear()
        self._counter.detach()

    def _scheduler(self) -> Any:
        """The bound scheduler now (``None`` when unbound, or when its pipeline was garbage-collected)."""
        scheduler = self._sources[-1]() if self._sources else None
        if scheduler is None:
            self._counter.detach()
        else:
            self._counter.attach(scheduler)  # a no-op for the scheduler it counts on already
        return scheduler

    def in_run(self) -> bool:
        """Whether a run of the bound scheduler is under way (a hooked stitch routes calls only then)."""
        return self._scheduler() is not None and self._counter.in_run

    def current_model_index(self) -> tuple[int, int, int]:
        """``(model_index, step, position)`` for a call made now."""
        scheduler = self._scheduler()
        if scheduler is None:
            raise RuntimeError("StitchedDenoiser is not bound to a scheduler: call bind(scheduler) first")
        self._counter.check_thread()
        if self._counter.new_run:
            # The record is reset at the first call of a run rather than in set_timesteps, so that a run of
            # another pipeline sharing this scheduler leaves this denoiser's record alone.
            num_steps = num_steps_of(scheduler)
            if self.switching is None:
                self.plan.model_index(0, num_steps)  # a per-step plan for another step count raises here
            self._counter.new_run = False
            self.record.reset(num_steps, getattr(scheduler, "timesteps", None))
            if self.switching is not None:
                self.switching.reset(scheduler, self.record)
        position = self._counter.calls
        order = getattr(scheduler, "order", 1) or 1
        step = position // order
        if self.switching is not None:  # -1: the samples are on different models at this step
            return self.switching.model_at(step), step, position
        return self.plan.model_index(step, self.record.num_steps), step, position

    # The routing runs outside torch.compile: a compiled large model traces its forward, which is the stitch
    # hook; only the model calls themselves are traced, so the routing never causes a recompilation.
    @torch.compiler.disable(recursive=False)
    def _dispatch(self, *args: Any, **kwargs: Any) -> Any:
        index, step, position = self.current_model_index()
        if self.switching is not None:
            self.switching.observe_input(step, args, kwargs)
            if index < 0:  # each model runs the rows of its samples
                return self.switching.split(lambda i, a, k: self._run(i, step, position, a, k), args, kwargs)
        return self._run(index, step, position, args, kwargs)

    def _run(self, index: int, step: int, position: int, args: tuple, kwargs: dict) -> Any:
        call = self._begin_call(index, step, position, args, kwargs)
        output = call(*args, **kwargs)
        self._end_call()
        return output

    @torch.compiler.disable
    def _begin_call(self, index: int, step: int, position: int, args: tuple, kwargs: dict) -> Callable:
        model = self.models[index]
        for callback in self.before_call:
            callback(index)
        if self.large_forward is not None and index == len(self.models) - 1:
            call = self.large_forward  # hooked: the large model's own forward, under the hook
        else:
            call = model
            if self.large_forward is not None:
                _follow(model, self.large, _first_tensor(args, kwargs))
        if self.conditioning[index] is not None:
            call = adapted_call(call, self.conditioning[index], self._signature)
        if self.sync_timing and self.large.device.type == "cuda":
            torch.cuda.synchronize()
        self._call_state = (index, step, position, time.perf_counter())
        return call

    @torch.compiler.disable
    def _end_call(self) -> None:
        index, step, position, start = self._call_state
        if self.sync_timing and self.large.device.type == "cuda":
            torch.cuda.synchronize()
        self._counter.check_thread()  # a run started by another thread meanwhile must not get this call
        self.record.add(step, position, index, time.perf_counter() - start)

    def extra_repr(self) -> str:
        return f"plan={self.plan}"


def _follow(small: nn.Module, large: nn.Module, sample: torch.Tensor | None) -> None:
    """Move a hooked stitch's small model to where the call runs and to the large model's dtype.

    The small models are not part of the pipeline, so ``pipe.to(...)`` and offloading move only the large one.
    """
    param = next(small.parameters(), None)
    large_param = next(large.parameters(), None)
    if param is None or large_param is None:
        return
    device = sample.device if sample is not None else large_param.device
    if param.device != device or param.dtype != large_param.dtype:
        small.to(device=device, dtype=large_param.dtype)
