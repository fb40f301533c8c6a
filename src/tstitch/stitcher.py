# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Trajectory stitching for diffusers pipelines (``stitch`` / ``unstitch``) and bare denoisers.

A :class:`StitchedDenoiser` holds every model of a stitch (smallest first, the large model last) and, at each
call, runs the model that its :class:`~tstitch.plan.Plan` assigns to the current *scheduler step*, counted on
the scheduler by :class:`~tstitch.stepcount.StepCounter`.

``stitch(pipe, ...)`` leaves the pipeline's own ``transformer``/``unet`` in place and hooks its ``forward``: while
a run of the pipeline is under way, the hook routes each call to the model of the current step (the large
model's own forward, or a small model beside it); other calls run the large model unchanged. The small
models are not submodules of the large one, so ``save_pretrained``, LoRA loading, CPU offload and diffusers'
cache hooks see the large model exactly as without stitching. The hook is a plain
forward wrapper rather than a ``diffusers.hooks.HookRegistry`` hook: model CPU offload re-installs
accelerate's hook on the large model after every pipeline call, which resets ``forward`` and would drop a
registry hook; the wrapper is placed under accelerate's hook (``_old_forward``) when there is one, and so
survives. ``unstitch`` removes it and leaves the model as it was.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .compat import check_compatible
from .conditioning import Adapter, adapted_call, capture_prompts, per_model, release_prompts
from .plan import Plan
from .stepcount import StepCounter, StitchRecord, model_name, num_steps_of
from .switching import Switching

__all__ = [
    "StitchedDenoiser", "StitchRecord", "stitch", "unstitch", "get_record", "get_stitch", "check_compatible",
    "DENOISER_NAMES", "suspended",
]

#: Pipeline attributes that hold the denoiser, in the order they are looked up.
DENOISER_NAMES = ("transformer", "unet")

_STITCH_ATTR = "_tstitch_stitch"  # on a stitched pipeline: its StitchedDenoiser
_HOOK_ATTR = "_tstitch_hook"  # on a hooked large model: its _StitchForward


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
        self._large_forward: Callable | None = None  # set while hooked on the large model: its own forward
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

    def _release(self) -> None:
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

    def _in_run(self) -> bool:
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
        if self._large_forward is not None and index == len(self.models) - 1:
            call = self._large_forward  # hooked: the large model's own forward, under the hook
        else:
            call = model
            if self._large_forward is not None:
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


# -- checks ---------------------------------------------------------------------------------------------------


def _find_denoiser(pipe: Any) -> tuple[str, nn.Module]:
    """``(attribute, denoiser)`` of a pipeline: its model, or the model's :class:`StitchedDenoiser` if stitched."""
    for name in DENOISER_NAMES:
        model = getattr(pipe, name, None)
        if isinstance(model, nn.Module):
            return name, vars(pipe).get(_STITCH_ATTR, model)
    raise ValueError(
        f"{type(pipe).__name__} has no denoiser to stitch: expected a torch module in one of the "
        f"attributes {', '.join(DENOISER_NAMES)}"
    )


def _as_model(candidate: Any, position: str) -> tuple[nn.Module, Any]:
    """A model, or the denoiser and scheduler of a pipeline."""
    if isinstance(candidate, StitchedDenoiser):
        raise ValueError(f"{position} is itself a stitched denoiser; pass the plain model")
    if isinstance(candidate, nn.Module) and _HOOK_ATTR in vars(candidate):
        raise ValueError(f"{position} is the model of a stitched pipeline; unstitch that pipeline first")
    if isinstance(candidate, nn.Module):
        return candidate, None
    if hasattr(candidate, "components"):
        _, model = _find_denoiser(candidate)
        if isinstance(model, StitchedDenoiser):
            raise ValueError(f"{position} is a stitched pipeline; unstitch it first")
        return model, getattr(candidate, "scheduler", None)
    raise ValueError(
        f"{position} must be a torch module or a diffusers pipeline, got {type(candidate).__name__}"
    )


# -- the hook on the large model ------------------------------------------------------------------------------


class _StitchForward:
    """The large model's ``forward`` while stitched: routes each call through the stitch whose run is under way.

    Several pipelines may stitch the same model object (each with its own scheduler). A call made while none of
    their runs is under way (another pipeline sharing the model, a direct call) runs the large model unchanged.
    """

    def __init__(self, inner: Callable):
        self.inner = inner
        self.denoisers: list[StitchedDenoiser] = []
        functools.update_wrapper(self, inner)  # the large model's signature, for pipelines that inspect it

    @torch.compiler.disable(recursive=False)
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        running = self._running()
        return running._dispatch(*args, **kwargs) if running is not None else self.inner(*args, **kwargs)

    @torch.compiler.disable
    def _running(self) -> StitchedDenoiser | None:
        running = [denoiser for denoiser in self.denoisers if denoiser._in_run()]
        if len(running) > 1:
            raise RuntimeError(
                f"{len(running)} stitched pipelines share this model and are all in the middle of a run (they "
                "share a scheduler object, or run in several threads): give each pipeline its own scheduler"
            )
        return running[0] if running else None

    def __deepcopy__(self, memo: dict) -> Any:
        raise RuntimeError(
            "a stitched pipeline (or its stitched model) cannot be deep-copied: call tstitch.unstitch(pipe) "
            "first, copy it, then stitch the original and the copy"
        )

    def __reduce__(self) -> Any:
        raise RuntimeError("a stitched model cannot be pickled: call tstitch.unstitch(pipe) first")


def _install(large: nn.Module, hook: _StitchForward | None = None) -> _StitchForward:
    """Put a stitch hook (``hook``, or a new one) on ``large``; the one already there is returned as is."""
    if _HOOK_ATTR in vars(large):
        return vars(large)[_HOOK_ATTR]
    # Under accelerate's hook when there is one: it calls ``_old_forward`` and restores it when removed.
    attr = "_old_forward" if "_hf_hook" in vars(large) and "_old_forward" in vars(large) else "forward"
    if hook is None:
        hook = _StitchForward(getattr(large, attr))
    else:
        hook.inner = getattr(large, attr)
    for denoiser in hook.denoisers:
        denoiser._large_forward = hook.inner
    object.__setattr__(large, attr, hook)
    object.__setattr__(large, _HOOK_ATTR, hook)
    return hook


def _uninstall(large: nn.Module) -> _StitchForward | None:
    """Take the stitch hook out of ``large``'s forward chain, wherever later hooks left it."""
    hook = vars(large).pop(_HOOK_ATTR, None)
    if hook is None:
        return None
    for denoiser in hook.denoisers:
        denoiser._large_forward = None
    inner = hook.inner
    for attr in ("forward", "_old_forward"):
        if vars(large).get(attr) is hook:
            if attr == "forward" and getattr(inner, "__self__", None) is large and (
                getattr(inner, "__func__", None) is type(large).forward
            ):
                del large.__dict__["forward"]  # back to the class's forward: the module as it was
            else:
                object.__setattr__(large, attr, inner)
            return hook
    registry = vars(large).get("_diffusers_hook")  # a diffusers hook registered on top of the stitch
    for ref in getattr(registry, "_fn_refs", ()):
        for field_name in ("forward", "original_forward"):
            if getattr(ref, field_name, None) is hook:
                setattr(ref, field_name, inner)
                return hook
    return hook


@contextlib.contextmanager
def suspended(pipe_or_model: Any) -> Iterator[StitchedDenoiser]:
    """Within the block, the stitched model runs alone, as if unstitched; the same stitch comes back after it."""
    denoiser = get_stitch(pipe_or_model)
    large = denoiser.large
    hook = _uninstall(large)
    try:
        yield denoiser
    finally:
        if hook is not None:
            _install(large, hook)


def get_stitch(pipe_or_model: Any) -> StitchedDenoiser:
    """The :class:`StitchedDenoiser` of a stitched pipeline or model (or the denoiser itself)."""
    if isinstance(pipe_or_model, StitchedDenoiser):
        return pipe_or_model
    denoiser = vars(pipe_or_model).get(_STITCH_ATTR) if hasattr(pipe_or_model, "__dict__") else None
    if isinstance(denoiser, StitchedDenoiser):
        return denoiser
    hook = vars(pipe_or_model).get(_HOOK_ATTR) if isinstance(pipe_or_model, nn.Module) else None
    if hook is not None and hook.denoisers:
        return hook.denoisers[-1]  # the latest stitch of this model
    raise ValueError(f"{type(pipe_or_model).__name__} is not stitched")


def get_record(pipe_or_denoiser: Any) -> StitchRecord:
    """The :class:`StitchRecord` of the last run of a stitched pipeline or denoiser."""
    return get_stitch(pipe_or_denoiser).record


# -- stitch() / unstitch() ----------------------------------------------------------------------------


def stitch(
    pipe: Any,
    models: Any,
    plan: Plan | float | Sequence[float],
    *,
    sync_timing: bool = False,
    conditioning: Sequence[Adapter | None] | Adapter | None = None,
) -> Any:
    """Make ``pipe`` sample with trajectory stitching, in place; returns ``pipe``.

    Args:
        pipe: a diffusers pipeline with a ``transformer`` or ``unet``.
        models: one model (or pipeline) or a list ordered by use, smallest first. The pipeline's own
            denoiser is always the last model.
        plan: a :class:`Plan` over all the models (the pipeline's last), or each small model's share of the
            steps: a float for one model, else one per model. With ``N`` steps, the first
            ``floor(fraction * N + 1e-6)`` steps run the first model, and so on (cumulatively).
        sync_timing: see :class:`StitchedDenoiser`.
        conditioning: one adapter per small model, for models that do not share the pipeline's
            conditioning (:mod:`tstitch.conditioning`; e.g. ``TextEncoderConditioning``); ``None`` for one that does.

    ``pipe.transformer`` (or ``pipe.unet``) stays the same object. Stitching a stitched pipeline replaces
    its stitch. Bad input raises ``ValueError`` before anything is changed.
    """
    name, large = _find_denoiser(pipe)
    if isinstance(large, StitchedDenoiser):  # stitched already: the new stitch goes around its large model
        large = large.large
    small_list = list(models) if isinstance(models, (list, tuple)) else [models]
    plan = Plan.coerce(plan, len(small_list) + 1)
    adapters = per_model(conditioning, len(small_list) + 1, pipe)

    pipe_prediction = getattr(getattr(pipe, "scheduler", None), "config", {}).get("prediction_type")
    resolved = []
    for i, candidate in enumerate(small_list):
        label = f"models[{i}]"
        model, scheduler = _as_model(candidate, label)
        if model is large:
            raise ValueError(f"{label} is the pipeline's own {name}; pass the small models only")
        check_compatible(large, model, label, own_conditioning=adapters[i] is not None)
        small_prediction = getattr(scheduler, "config", {}).get("prediction_type") if scheduler else None
        if pipe_prediction and small_prediction and small_prediction != pipe_prediction:
            raise ValueError(
                f"{label} does not match the pipeline's model: its prediction type is {small_prediction!r}, "
                f"the pipeline's is {pipe_prediction!r}"
            )
        resolved.append(model)

    # Validation is over: from here on the pipeline changes.
    unstitch(pipe)
    for model in resolved:
        if model.dtype != large.dtype or model.device != large.device:
            model.to(device=large.device, dtype=large.dtype)
    denoiser = StitchedDenoiser([*resolved, large], plan, sync_timing=sync_timing, conditioning=adapters[:-1])
    capture_prompts(pipe, adapters)
    pipe_ref = weakref.ref(pipe)
    denoiser.bind(lambda: getattr(pipe_ref(), "scheduler", None), running=False)  # its next run begins anew
    object.__setattr__(pipe, _STITCH_ATTR, denoiser)
    hook = _install(large)
    hook.denoisers.append(denoiser)
    denoiser._large_forward = hook.inner
    return pipe


def unstitch(pipe: Any) -> Any:
    """Remove the stitch: the pipeline and its model are as before (a no-op on a pipeline that is not stitched)."""
    denoiser = vars(pipe).pop(_STITCH_ATTR, None)
    release_prompts(pipe)
    if denoiser is not None:
        for extension in list(denoiser.extensions.values()):  # e.g. tstitch.caching's hooks
            extension.remove()
        denoiser.extensions.clear()
        denoiser._release()
        denoiser._large_forward = None
        hook = vars(denoiser.large).get(_HOOK_ATTR)
        if hook is not None:
            hook.denoisers = [d for d in hook.denoisers if d is not denoiser]
            if not hook.denoisers:
                _uninstall(denoiser.large)
    return pipe
