# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The one sampling loop for bare denoisers (no diffusers pipeline needed).

:func:`denoise` is the loop: the step index is passed explicitly to ``pick(step)``, which returns what to
call at that step, and an optional ``callback`` sees every step (as k-diffusion's ``callback({'x', 'i',
'denoised'})``). :func:`sample` (``tstitch.sample``) runs it with a
:class:`~tstitch.stitcher.StitchedDenoiser` (the one ``stitch()`` puts into pipelines, so a bare loop and a
pipeline follow one schedule logic); the benchmark's plain baseline runs it with the models picked
directly; the studies and evaluation run it through :func:`sample_batches`.

The denoisers follow diffusers' ``DiTTransformer2DModel`` call convention, ``model(x, timestep=t,
class_labels=y)``, returning a tensor or an object with ``.sample``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..plan import Plan
from ..stitcher import StitchedDenoiser
from .checks import (
    check_class_labels,
    check_generator,
    check_guidance_scale,
    check_noise,
    check_num_steps,
    check_scheduler_object,
)
from .guidance import Guidance, num_classes_of
from .output import SampleOutput

__all__ = ["denoise", "sample", "SampleOutput", "StepCallback"]

#: ``callback(state)`` after every step; ``state`` holds ``x`` (the latents the step started from), ``i``
#: (the step), ``t`` (its timestep), ``model_output`` (the guided prediction), ``denoised`` (the
#: scheduler's predicted clean latents, or None) and ``next`` (the latents after the step).
StepCallback = Callable[[dict[str, Any]], None]


def _config_int(model: Any, key: str) -> int | None:
    config = getattr(model, "config", None)
    value = config.get(key) if hasattr(config, "get") else getattr(config, key, None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _model_device(model: Any) -> torch.device | None:
    parameter = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return parameter.device if parameter is not None else None


def _model_dtype(model: Any) -> torch.dtype | None:
    """The dtype the model's inputs must have (None: any; a fast-path forward that casts its inputs)."""
    if getattr(getattr(model, "__dict__", {}).get("forward"), "casts_io", False):
        return None
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    parameter = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return parameter.dtype if parameter is not None else None


@torch.no_grad()
def denoise(
    pick: Callable[[int], Callable[..., Any]],
    scheduler: Any,
    noise: torch.Tensor,
    *,
    class_labels: torch.Tensor | Sequence[int] | None = None,
    num_inference_steps: int = 50,
    guidance: Guidance | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Denoise ``noise`` with ``scheduler``, calling ``pick(i)`` at the ``i``-th model call.

    Args:
        pick: step index -> the denoiser to call (a model, or a bound ``StitchedDenoiser``). The index
            counts the entries of ``scheduler.timesteps`` (one model call each).
        scheduler: any diffusers scheduler; ``set_timesteps`` is called here.
        noise: the initial latents ``(batch, channels, height, width)``, scaled by ``init_noise_sigma``.
        class_labels: one label per sample, or None for an unconditional model.
        guidance: classifier-free guidance (default none).
        generator: for stochastic schedulers (DDPM, ancestral samplers).
        callback: called after every step with the step's state (see :data:`StepCallback`).
        progress: show a tqdm bar over the steps.

    Returns the final latents.
    """
    check_noise(noise)
    check_scheduler_object(scheduler)
    check_generator(generator, noise.shape[0])
    if not hasattr(scheduler, "init_noise_sigma"):
        raise ValueError(f"scheduler {type(scheduler).__name__} is for flow-matching pipelines (velocity models "
                         "such as SD3, stitched with tstitch.stitch); the bare loop samples noise-prediction models")
    num_inference_steps = check_num_steps(num_inference_steps, scheduler)
    guidance = guidance or Guidance()
    labels = check_class_labels(class_labels, noise.shape[0], None, noise.device)
    keep_variance = scheduler.config.get("variance_type") in ("learned", "learned_range")
    step_kwargs = {}
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator

    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False)):
        model_output = guidance(pick(i), scheduler, latents, t, labels, keep_variance=keep_variance)
        step = scheduler.step(model_output, t, latents, **step_kwargs)
        if callback is not None:
            callback({"x": latents, "i": i, "t": t, "model_output": model_output,
                      "denoised": getattr(step, "pred_original_sample", None), "next": step.prev_sample})
        latents = step.prev_sample
    return latents


def sample(
    models: nn.Module | Sequence[nn.Module] | StitchedDenoiser,
    fractions: float | Sequence[float] | Plan | None,
    scheduler: Any,
    *,
    noise: torch.Tensor,
    class_labels: torch.Tensor | Sequence[int] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    null_class: int | None = None,
    guided_channels: int | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> SampleOutput:
    """Sample latents from ``noise`` with the stitched ``models``.

    Args:
        models: the denoisers, smallest first (the last one is "the large model"), or a ready
            :class:`StitchedDenoiser`.
        fractions: share of the steps of each model but the last (as in :func:`tstitch.stitch`), or a
            :class:`Plan`. Ignored when ``models`` is a ``StitchedDenoiser``.
        scheduler: any diffusers scheduler; ``set_timesteps`` is called here.
        noise: the initial latents, ``(batch, channels, height, width)``; scaled by the scheduler's
            ``init_noise_sigma``.
        class_labels: one label per sample, or None for an unconditional model.
        guidance_scale: classifier-free guidance (on when > 1): the batch is doubled with the null label.
        null_class: the null label; defaults to the large model's number of classes (the DiT convention).
        guided_channels: how many latent channels guidance applies to (default all; the published DiT
            sampler guides 3 of 4).
        generator: for stochastic schedulers (DDPM, ancestral samplers).
        callback: called after every step (see :func:`denoise`).
        progress: show a tqdm bar over the steps.

    Raises:
        ValueError: before any model call, naming the argument: noise that is not a finite floating tensor of
            the large model's channels, size and dtype (or on another device); labels that are not whole
            numbers in ``[0, classes - 1]`` (the null class included), one per sample; a step count that is not
            an integer in ``[1, num_train_timesteps]``; a guidance scale that is NaN, inf or negative; a
            generator that is not a ``torch.Generator`` (or one per sample); a scheduler that is not a
            scheduler object; bad fractions.
    """
    if isinstance(models, StitchedDenoiser):
        denoiser = models
    else:
        model_list = [models] if isinstance(models, nn.Module) else list(models)
        if not model_list:
            raise ValueError("models is empty: give the denoisers, smallest first")
        for i, model in enumerate(model_list):
            if not isinstance(model, nn.Module):
                raise ValueError(f"models[{i}] must be a denoiser (a torch.nn.Module), got {model!r}")
        if fractions is None and len(model_list) > 1:
            raise ValueError(f"fractions is None for {len(model_list)} models: give the small models' shares "
                             "(a float for two models) or a Plan")
        if not isinstance(fractions, Plan):
            fractions = Plan.from_small_fractions(fractions if len(model_list) > 1 else [])
        denoiser = StitchedDenoiser(model_list, fractions)
        if any(model.training and hasattr(model, "config") for model in model_list):  # diffusers models
            warnings.warn("tstitch.sample: a model is in training mode (DiT's label embedding then drops labels at "
                          "random); call .eval() first", stacklevel=2)
    large = denoiser.large
    channels = _config_int(large, "in_channels")
    check_noise(noise, channels=channels, size=_config_int(large, "sample_size"), dtype=_model_dtype(large))
    model_device = _model_device(large)
    if model_device is not None and model_device.type != noise.device.type:
        raise ValueError(f"noise is on {noise.device} but the models are on {model_device}: move one to the other")
    check_scheduler_object(scheduler)
    check_num_steps(num_inference_steps, scheduler)
    check_generator(generator, noise.shape[0])
    guidance_scale = check_guidance_scale(guidance_scale)
    num_classes = num_classes_of(large)
    labels = check_class_labels(class_labels, noise.shape[0], num_classes, noise.device)
    # every model gets the large model's null label
    null = null_class if null_class is not None else num_classes
    guidance = Guidance(guidance_scale, null_class=null, guided_channels=guided_channels)
    guidance.check(large, labels, channels=noise.shape[1])
    if labels is None and num_classes is not None:
        raise ValueError(f"class_labels is None, but the models are class-conditional ({num_classes} classes): "
                         "give one label per sample")

    denoiser.bind(scheduler)
    try:
        latents = denoise(lambda step: denoiser, scheduler, noise, class_labels=labels,
                          num_inference_steps=num_inference_steps, guidance=guidance, generator=generator,
                          callback=callback, progress=progress)
    finally:
        denoiser.unbind()
    return SampleOutput(latents=latents, record=denoiser.record)
