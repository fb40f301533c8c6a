# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The stitched denoiser and ``stitch()`` / ``unstitch()`` for diffusers pipelines.

A :class:`StitchedDenoiser` stands in for a pipeline's ``transformer`` or ``unet``. It holds every model
of the stitch (smallest first, the pipeline's own model last) and, at each call, runs the model that the
:class:`~tstitch.plan.Plan` assigns to the current *scheduler step*.

The current step is counted on the scheduler itself: ``set_timesteps`` resets the count, ``set_begin_index``
moves it, and every ``step()`` call advances it. A second-order scheduler (Heun, KDPM2) calls ``step()``
twice per step (``scheduler.order == 2``), so the model can only change between whole steps; extra
denoiser calls within a step (classifier-free guidance as two calls, ControlNet) see the same model because
nothing is counted per call.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .plan import Plan, is_scalar

__all__ = ["StitchedDenoiser", "StitchRecord", "stitch", "unstitch", "get_record", "DENOISER_NAMES"]

#: Pipeline attributes that hold the denoiser, in the order they are looked up.
DENOISER_NAMES = ("transformer", "unet")

#: Config fields that must agree between stitched models (compared when both configs have them).
COMPATIBLE_FIELDS = (
    ("in_channels", "latent channels"),
    ("out_channels", "output channels (learned sigma)"),
    ("sample_size", "sample size"),
    ("num_embeds_ada_norm", "class count"),
    ("num_class_embeds", "class count"),
    ("cross_attention_dim", "cross-attention width"),
    ("joint_attention_dim", "cross-attention width"),
    ("caption_channels", "cross-attention width"),
    ("pooled_projection_dim", "pooled text width"),
    ("encoder_hid_dim", "text projection width"),
    ("addition_embed_type", "added conditioning"),
    ("addition_time_embed_dim", "added conditioning"),
    ("projection_class_embeddings_input_dim", "added conditioning"),
    ("time_cond_proj_dim", "guidance embedding"),
    ("prediction_type", "prediction type"),
)


@dataclass
class StitchRecord:
    """What happened during the last sampling run of a stitched denoiser.

    ``calls`` holds one ``(step, model_index)`` pair per denoiser call, in order; ``seconds`` and
    ``num_calls`` are per model. Times are wall-clock around each call; on CUDA they only mean something
    when the denoiser was built with ``sync_timing=True``.
    """

    model_names: list[str]
    num_steps: int = 0
    calls: list[tuple[int, int]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    num_calls: list[int] = field(default_factory=list)
    _timesteps: Any = None  # the scheduler's timesteps of this run, read lazily (no device sync per call)
    _call_positions: list[int] = field(default_factory=list)

    def reset(self, num_steps: int, timesteps: Any) -> None:
        self.num_steps = num_steps
        self.calls.clear()
        self._call_positions.clear()
        self.seconds = [0.0] * len(self.model_names)
        self.num_calls = [0] * len(self.model_names)
        self._timesteps = timesteps

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

    def as_dict(self) -> dict[str, Any]:
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
        }


class _StepCounter:
    """Counts the ``step()`` calls of one scheduler instance.

    Three of the scheduler's methods are wrapped once per scheduler, however many counters listen to it
    (stitched pipelines may share one scheduler), and the originals come back when the last counter
    detaches: one counter detaching never silences another.
    """

    _HOOKED = ("set_timesteps", "set_begin_index", "step")

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.calls = 0
        #: a new run began (``set_timesteps`` or a new scheduler): the next denoiser call resets the record
        self.new_run = False

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
        self.new_run = True
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

    def notify(self, name: str, args: tuple, kwargs: dict) -> None:
        if name == "step":
            self.calls += 1
        elif name == "set_timesteps":
            self.calls = 0
            self.new_run = True
        else:  # set_begin_index(begin_index=0)
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
    """``original`` (a method of ``scheduler``), telling every counter attached to ``scheduler``."""

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        for counter in list(scheduler.__dict__.get(_COUNTERS, ())):
            counter.notify(name, args, kwargs)
        return result

    return wrapper


_COUNTERS = "_tstitch_counters"  # on a hooked scheduler: the step counters attached to it
_SAVED = "_tstitch_saved"  # on a hooked scheduler: its hooked attributes as they were before
_MISSING = object()


def _num_steps(scheduler: Any) -> int:
    """Number of solver steps of the scheduler's current run."""
    num = getattr(scheduler, "num_inference_steps", None)
    if num:
        return int(num)
    timesteps = getattr(scheduler, "timesteps", None)
    order = getattr(scheduler, "order", 1) or 1
    return math.ceil(len(timesteps) / order) if timesteps is not None else 0


def _model_name(model: nn.Module, index: int) -> str:
    return getattr(model, "_tstitch_name", None) or f"{type(model).__name__}[{index}]"


class StitchedDenoiser(nn.Module):
    """Runs one of several denoisers at each scheduler step, behaving like the last (large) one.

    Args:
        models: the denoisers, ordered by use: smallest first, the large model last.
        schedule: the share of the steps of each model (a :class:`Plan`).
        sync_timing: synchronize CUDA around each call so that the per-model times in :attr:`record`
            are real (costs a little speed; off by default).

    The scheduler whose steps are counted is given by :meth:`bind`: a scheduler, or a callable returning
    one (``stitch()`` passes the pipeline's current ``scheduler``, so swapping schedulers keeps working).
    Attributes not found here (``config``, ``dtype``, ``add_embedding``, LoRA methods ...) are the large
    model's.
    """

    def __init__(self, models: Sequence[nn.Module], schedule: Plan, sync_timing: bool = False):
        super().__init__()
        if len(models) != schedule.num_models:
            raise ValueError(f"{len(models)} models but {schedule.num_models} fractions in the schedule")
        self.models = nn.ModuleList(models)
        self.schedule = schedule
        self.sync_timing = sync_timing
        #: Optional ``before_call(model_index)``, called before each model call, outside the timed part (for
        #: example to move that model onto the GPU: :func:`tstitch.fastpaths.enable_offload`).
        self.before_call: Callable[[int], None] | None = None
        self.record = StitchRecord([_model_name(m, i) for i, m in enumerate(models)])
        self._counter = _StepCounter()
        self._scheduler_source: Callable[[], Any] | None = None
        self._previous_bindings: list[Any] = []  # what each bind() replaced, for unbind() to restore
        # Expose the large model's forward signature (pipelines inspect it) on a per-instance forward.
        forward = functools.partial(StitchedDenoiser._dispatch, self)
        forward = functools.update_wrapper(forward, type(models[-1]).forward)
        forward.__signature__ = inspect.signature(models[-1].forward)
        self.forward = forward

    # -- the pipeline-facing surface ------------------------------------------------------------
    @property
    def large(self) -> nn.Module:
        return self.models[-1]

    @property
    def config(self) -> Any:
        return self.large.config

    @property
    def dtype(self) -> torch.dtype:
        return self.large.dtype

    @property
    def device(self) -> torch.device:
        return self.large.device

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            models = self.__dict__.get("_modules", {}).get("models")
            if models is None:
                raise
            return getattr(models[-1], name)

    # -- step tracking -------------------------------------------------------------------------------
    def bind(self, scheduler: Any) -> StitchedDenoiser:
        """Count steps on ``scheduler`` (or on whatever a zero-argument callable returns at each call).

        :meth:`unbind` undoes it and restores the binding it replaced, so that :func:`tstitch.sample` can
        borrow the denoiser of a stitched pipeline without unstitching the pipeline.
        """
        previous = self._scheduler_source if self._scheduler_source is not None else self._counter.scheduler
        self._previous_bindings.append(previous)
        self._bind(scheduler)
        return self

    def _bind(self, scheduler: Any) -> None:
        self._scheduler_source = scheduler if callable(scheduler) and not hasattr(scheduler, "step") else None
        if self._scheduler_source is None:
            self._counter.attach(scheduler)

    def unbind(self) -> None:
        """Stop counting steps where the last :meth:`bind` said; go back to the binding before it, if any."""
        self._counter.detach()
        self._scheduler_source = None
        previous = self._previous_bindings.pop() if self._previous_bindings else None
        if previous is not None:
            self._bind(previous)

    def _release(self) -> None:
        """Drop every binding (the denoiser leaves its pipeline)."""
        self._previous_bindings.clear()
        self.unbind()

    def _on_new_run(self, scheduler: Any) -> None:
        self.record.reset(_num_steps(scheduler), getattr(scheduler, "timesteps", None))

    def current_model_index(self) -> tuple[int, int, int]:
        """``(model_index, step, position)`` for a call made now."""
        if self._scheduler_source is not None:
            self._counter.attach(self._scheduler_source())
        scheduler = self._counter.scheduler
        if scheduler is None:
            raise RuntimeError("StitchedDenoiser is not bound to a scheduler: call bind(scheduler) first")
        if self._counter.new_run:
            # The record is reset at the first call of a run rather than in set_timesteps, so that a run of
            # another pipeline sharing this scheduler leaves this denoiser's record alone.
            self._counter.new_run = False
            self._on_new_run(scheduler)
        position = self._counter.calls
        order = getattr(scheduler, "order", 1) or 1
        step = position // order
        return self.schedule.model_index(step, self.record.num_steps), step, position

    def _dispatch(self, *args: Any, **kwargs: Any) -> Any:
        index, step, position = self.current_model_index()
        model = self.models[index]
        if self.before_call is not None:
            self.before_call(index)
        sync = self.sync_timing and self.large.device.type == "cuda"
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = model(*args, **kwargs)
        if sync:
            torch.cuda.synchronize()
        self.record.add(step, position, index, time.perf_counter() - start)
        return output

    def extra_repr(self) -> str:
        return f"schedule={self.schedule}"


# -- stitch() / unstitch() ----------------------------------------------------------------------------


def _find_denoiser(pipe: Any) -> tuple[str, nn.Module]:
    for name in DENOISER_NAMES:
        model = getattr(pipe, name, None)
        if isinstance(model, nn.Module):
            return name, model
    raise ValueError(
        f"{type(pipe).__name__} has no denoiser to stitch: expected a torch module in one of the "
        f"attributes {', '.join(DENOISER_NAMES)}"
    )


def _config_value(model: nn.Module, key: str) -> Any:
    value = getattr(model, "config", {}).get(key, _MISSING) if hasattr(model, "config") else _MISSING
    if key in ("in_channels", "out_channels") and isinstance(model.__dict__.get(key), int):
        return model.__dict__[key]  # the effective value (DiT stores out_channels=None in its config)
    return value


def _as_model(candidate: Any, position: str) -> tuple[nn.Module, Any]:
    """A model, or the denoiser and scheduler of a pipeline."""
    if isinstance(candidate, StitchedDenoiser):
        raise ValueError(f"{position} is itself a stitched denoiser; pass the plain model")
    if isinstance(candidate, nn.Module):
        return candidate, None
    if hasattr(candidate, "components"):
        _, model = _find_denoiser(candidate)
        return model, getattr(candidate, "scheduler", None)
    raise ValueError(
        f"{position} must be a torch module or a diffusers pipeline, got {type(candidate).__name__}"
    )


def check_compatible(large: nn.Module, small: nn.Module, name: str = "small model") -> None:
    """Raise ``ValueError`` naming the first config field where ``small`` cannot stand in for ``large``."""
    for key, meaning in COMPATIBLE_FIELDS:
        want, got = _config_value(large, key), _config_value(small, key)
        if want is _MISSING or got is _MISSING:
            continue
        if isinstance(want, list):
            want = tuple(want)
        if isinstance(got, list):
            got = tuple(got)
        if want != got:
            raise ValueError(
                f"{name} does not match the pipeline's model: its {meaning} (config.{key}) is {got!r}, "
                f"the pipeline's is {want!r}"
            )


def stitch(
    pipe: Any,
    models: Any,
    fractions: float | Sequence[float],
    *,
    sync_timing: bool = False,
) -> Any:
    """Make ``pipe`` sample with trajectory stitching, in place; returns ``pipe``.

    Args:
        pipe: a diffusers pipeline with a ``transformer`` or ``unet``.
        models: one model (or pipeline) or a list ordered by use, smallest first. The pipeline's own
            denoiser is always the last model and takes the remaining share of the steps.
        fractions: each model's share of the denoiser steps: a float for one model, else one per model.
            With ``N`` steps, the first ``floor(fraction * N + 1e-6)`` steps run the first model, and so on
            (cumulatively) for the next ones.
        sync_timing: see :class:`StitchedDenoiser`.

    Stitching a stitched pipeline re-stitches it around its original model. Bad input raises
    ``ValueError`` before anything is changed.
    """
    name, current = _find_denoiser(pipe)
    large = current.large if isinstance(current, StitchedDenoiser) else current

    small_list = list(models) if isinstance(models, (list, tuple)) else [models]
    if not is_scalar(fractions):
        if len(fractions) != len(small_list):
            raise ValueError(
                f"got {len(small_list)} models but {len(fractions)} fractions; give one per model"
            )
    elif len(small_list) != 1:
        raise ValueError(f"got {len(small_list)} models and a single fraction; give a list of fractions")
    schedule = Plan.from_small_fractions(fractions)

    pipe_prediction = getattr(getattr(pipe, "scheduler", None), "config", {}).get("prediction_type")
    resolved = []
    for i, candidate in enumerate(small_list):
        label = f"models[{i}]"
        model, scheduler = _as_model(candidate, label)
        check_compatible(large, model, label)
        small_prediction = getattr(scheduler, "config", {}).get("prediction_type") if scheduler else None
        if pipe_prediction and small_prediction and small_prediction != pipe_prediction:
            raise ValueError(
                f"{label} does not match the pipeline's model: its prediction type is {small_prediction!r}, "
                f"the pipeline's is {pipe_prediction!r}"
            )
        resolved.append(model)

    # Validation is over: from here on the pipeline changes.
    for model in resolved:
        if model is not large and (model.dtype != large.dtype or model.device != large.device):
            model.to(device=large.device, dtype=large.dtype)
    if isinstance(current, StitchedDenoiser):
        current._release()
    denoiser = StitchedDenoiser([*resolved, large], schedule, sync_timing=sync_timing)
    pipe_ref = weakref.ref(pipe)
    denoiser.bind(lambda: pipe_ref().scheduler)
    # Bypass DiffusionPipeline.__setattr__, which would rewrite the pipeline's config for the new class.
    object.__setattr__(pipe, name, denoiser)
    return pipe


def unstitch(pipe: Any) -> Any:
    """Put the pipeline's original denoiser back (a no-op on a pipeline that is not stitched)."""
    for name in DENOISER_NAMES:
        current = getattr(pipe, name, None)
        if isinstance(current, StitchedDenoiser):
            current._release()
            object.__setattr__(pipe, name, current.large)
    return pipe


def get_record(pipe_or_denoiser: Any) -> StitchRecord:
    """The :class:`StitchRecord` of the last run of a stitched pipeline or denoiser."""
    if isinstance(pipe_or_denoiser, StitchedDenoiser):
        return pipe_or_denoiser.record
    for name in DENOISER_NAMES:
        current = getattr(pipe_or_denoiser, name, None)
        if isinstance(current, StitchedDenoiser):
            return current.record
    raise ValueError(f"{type(pipe_or_denoiser).__name__} is not stitched")
