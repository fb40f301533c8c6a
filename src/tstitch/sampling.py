# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""One sampling loop for bare class-conditional denoisers (no diffusers pipeline needed).

The denoisers follow diffusers' ``DiTTransformer2DModel`` call convention,
``model(x, timestep=t, class_labels=y)``, returning a tensor or an object with ``.sample``. Stitching is
done by the same :class:`~tstitch.stitcher.StitchedDenoiser` that ``stitch()`` puts into pipelines, so a
bare loop and a pipeline follow one schedule logic.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .plan import Plan
from .stitcher import StitchedDenoiser, StitchRecord

__all__ = ["sample", "SampleOutput", "guided_output", "num_classes_of"]


@dataclass
class SampleOutput:
    latents: torch.Tensor
    record: StitchRecord


def num_classes_of(model: nn.Module) -> int | None:
    """Number of classes of a class-conditional model (its null label in classifier-free guidance)."""
    config = getattr(model, "config", {})
    for key in ("num_embeds_ada_norm", "num_class_embeds"):
        if config.get(key):
            return int(config[key])
    return None


def _as_tensor(output: Any) -> torch.Tensor:
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def guided_output(
    output: Any,
    channels: int,
    guidance_scale: float,
    *,
    guided_channels: int | None = None,
    keep_variance: bool = False,
) -> torch.Tensor:
    """The model output the scheduler steps with, from a denoiser's raw output.

    With guidance (``guidance_scale > 1``) ``output`` is the doubled batch (conditional half first) and the
    result is the guided conditional half: ``uncond + s * (cond - uncond)`` on the first
    ``guided_channels`` channels, the conditional output on the rest. Learned-variance channels beyond
    ``channels`` are dropped unless ``keep_variance``.
    """
    output = _as_tensor(output)
    eps, rest = output[:, :channels], output[:, channels:]
    if guidance_scale > 1.0:
        guided = channels if guided_channels is None else guided_channels
        cond, uncond = eps.chunk(2)
        guided_eps = uncond[:, :guided] + guidance_scale * (cond[:, :guided] - uncond[:, :guided])
        eps = torch.cat([guided_eps, cond[:, guided:]], dim=1)
        rest = rest.chunk(2)[0]
    return torch.cat([eps, rest], dim=1) if keep_variance and rest.shape[1] else eps


@torch.no_grad()
def sample(
    models: nn.Module | Sequence[nn.Module] | StitchedDenoiser,
    fractions: float | Sequence[float] | Plan,
    scheduler: Any,
    *,
    noise: torch.Tensor,
    class_labels: torch.Tensor | Sequence[int] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    null_class: int | None = None,
    guided_channels: int | None = None,
    generator: torch.Generator | None = None,
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
        null_class: the null label; defaults to the model's number of classes (the DiT convention).
        guided_channels: how many latent channels guidance applies to (default all; the published DiT
            sampler guides 3 of 4).
        generator: for stochastic schedulers (DDPM, ancestral samplers).
        progress: show a tqdm bar over the steps.
    """
    if isinstance(models, StitchedDenoiser):
        denoiser = models
    else:
        model_list = [models] if isinstance(models, nn.Module) else list(models)
        if not isinstance(fractions, Plan):
            fractions = Plan.from_small_fractions(fractions if len(model_list) > 1 else [])
        denoiser = StitchedDenoiser(model_list, fractions)
    if noise.ndim != 4:
        raise ValueError(f"noise must be (batch, channels, height, width), got shape {tuple(noise.shape)}")
    batch, channels = noise.shape[:2]
    device = noise.device

    use_cfg = guidance_scale > 1.0
    labels = None
    if class_labels is not None:
        labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
        if labels.numel() != batch:
            raise ValueError(f"got {labels.numel()} class labels for a batch of {batch}")
    if use_cfg:
        if labels is None:
            raise ValueError("classifier-free guidance needs class_labels")
        if null_class is None:
            null_class = num_classes_of(denoiser.large)
        if null_class is None:
            raise ValueError("cannot tell the null class of this model: pass null_class")
        labels = torch.cat([labels, torch.full_like(labels, null_class)])
    learned_variance = scheduler.config.get("variance_type") in ("learned", "learned_range")

    step_kwargs = {}
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator

    denoiser.bind(scheduler)
    try:
        scheduler.set_timesteps(num_inference_steps, device=device)
        latents = noise * scheduler.init_noise_sigma
        for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
            model_input = torch.cat([latents, latents]) if use_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            timestep = t.expand(model_input.shape[0]) if torch.is_tensor(t) else torch.full(
                (model_input.shape[0],), t, device=device
            )
            model_output = guided_output(
                denoiser(model_input, timestep=timestep, class_labels=labels), channels, guidance_scale,
                guided_channels=guided_channels, keep_variance=learned_variance,
            )
            latents = scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
    finally:
        denoiser.unbind()
    return SampleOutput(latents=latents, record=denoiser.record)
