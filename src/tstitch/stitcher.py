# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Trajectory stitching for diffusers pipelines: ``stitch`` / ``unstitch``, the hook on the pipeline's own model.

The routing itself is a :class:`~tstitch.denoiser.StitchedDenoiser` (every model of the stitch, the plan's
model at each scheduler step); this module attaches one to a pipeline and takes it off again.

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
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .compat import check_compatible
from .conditioning import Adapter, capture_prompts, per_model, release_prompts
from .denoiser import StitchedDenoiser
from .plan import Plan
from .stepcount import StitchRecord

__all__ = [
    "StitchedDenoiser", "StitchRecord", "stitch", "unstitch", "get_record", "get_stitch", "check_compatible",
    "DENOISER_NAMES", "suspended",
]

#: Pipeline attributes that hold the denoiser, in the order they are looked up.
DENOISER_NAMES = ("transformer", "unet")

_STITCH_ATTR = "_tstitch_stitch"  # on a stitched pipeline: its StitchedDenoiser
_HOOK_ATTR = "_tstitch_hook"  # on a hooked large model: its _StitchForward


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
        return running.forward(*args, **kwargs) if running is not None else self.inner(*args, **kwargs)

    @torch.compiler.disable
    def _running(self) -> StitchedDenoiser | None:
        running = [denoiser for denoiser in self.denoisers if denoiser.in_run()]
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
        denoiser.large_forward = hook.inner
    object.__setattr__(large, attr, hook)
    object.__setattr__(large, _HOOK_ATTR, hook)
    return hook


def _uninstall(large: nn.Module) -> _StitchForward | None:
    """Take the stitch hook out of ``large``'s forward chain, wherever later hooks left it."""
    hook = vars(large).pop(_HOOK_ATTR, None)
    if hook is None:
        return None
    for denoiser in hook.denoisers:
        denoiser.large_forward = None
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
    denoiser.large_forward = hook.inner
    return pipe


def unstitch(pipe: Any) -> Any:
    """Remove the stitch: the pipeline and its model are as before (a no-op on a pipeline that is not stitched)."""
    denoiser = vars(pipe).pop(_STITCH_ATTR, None)
    release_prompts(pipe)
    if denoiser is not None:
        for extension in list(denoiser.extensions.values()):  # e.g. tstitch.caching's hooks
            extension.remove()
        denoiser.extensions.clear()
        denoiser.release()
        denoiser.large_forward = None
        hook = vars(denoiser.large).get(_HOOK_ATTR)
        if hook is not None:
            hook.denoisers = [d for d in hook.denoisers if d is not denoiser]
            if not hook.denoisers:
                _uninstall(denoiser.large)
    return pipe
