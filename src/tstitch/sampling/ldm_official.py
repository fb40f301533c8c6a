# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The published LDM-S -> LDM sampler (``sample_ldm_official``), step for step.

Written from the description of the published experiment (``shared/reference/official-ldm-sampler.md``:
CompVis latent-diffusion's ``DDIMSampler`` with the T-Stitch switch); no code of those projects is used.

* **Schedule.** 1,000 training steps, CompVis "linear" betas
  ``linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000) ** 2`` in float64, ``alphas_cumprod = cumprod(1 - betas)``,
  stored as float32 (as the CompVis model keeps its buffers).
* **DDIM, uniform discretisation.** ``c = T // S``, selected timesteps ``range(0, T, c) + 1`` (1, 11, ..., 991
  for S = 100), visited from the largest down; when ``S`` does not divide ``T`` this gives ``len(range(0, T,
  c))`` steps, as published. ``a_t = abar[t]``, ``a_prev = abar[next smaller selected t]`` (``abar[0]`` after
  the last), ``sigma = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))`` (DDIM paper, eq. 16).
  Step: ``x0 = (x - sqrt(1 - a_t) e) / sqrt(a_t)``; ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) e +
  sigma z`` (eq. 12), in float32 with float32 coefficients. ``z`` is drawn at every step, the last included,
  also when ``sigma = 0`` (so the random stream advances as the published sampler's).
* **Guidance.** Scale 3.0 by default; the batch is ``[unconditional; conditional]``; ``e = e_u + s (e_c - e_u)``
  on all channels. Each model has its own class embedder (its own context width) and its own
  "unconditional" context: published, uniform random numbers shaped like its context (``rand_like``),
  drawn once per batch; ``"zeros"`` or explicit tensors are options. ``guidance_scale == 1`` runs the
  conditional batch only.
* **Switching.** At selected timestep ``t`` the small model runs while ``t / T > 1 - r`` (strictly); more
  models generalise this with cumulative fractions. ``r = 1``: always the small model; ``r = 0``: never.
* **Decoding.** ``vq.decode(z)`` (quantizes first), then ``clamp((x + 1) / 2, 0, 1) * 255`` truncated to uint8.

Random numbers, when not passed in, come from ``generator`` (or torch's global generator, as published) in
this order: the initial noise, each model's random unconditional context (model order), then one
standard-normal draw of the latent batch's shape per step.

For diffusers schedulers, :class:`~tstitch.sampling.ldm_models.ClassConditionedUNet` gives a U-Net plus its
embedder the usual ``class_labels`` call, and :func:`ddim_scheduler_config` the equivalent ``DDIMScheduler``
settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..plan import Plan
from .ldm_models import ClassConditionedUNet
from .output import SampleOutput, published_record

__all__ = [
    "LINEAR_START", "LINEAR_END", "compvis_alphas_cumprod", "ddim_timesteps", "LDMDDIMSchedule",
    "sample_ldm_official", "LDMSampleOutput", "decode_ldm_latents", "ddim_scheduler_config", "make_ddim_scheduler",
    "sample_ldm_wrapped",
]

logger = logging.getLogger(__name__)

#: CompVis ``linear_start`` / ``linear_end`` of the published class-conditional ImageNet LDMs.
LINEAR_START, LINEAR_END = 0.0015, 0.0195

Unconditional = Literal["random", "zeros"]


def compvis_alphas_cumprod(
    num_train_timesteps: int = 1000, linear_start: float = LINEAR_START, linear_end: float = LINEAR_END
) -> np.ndarray:
    """``cumprod(1 - linspace(start ** 0.5, end ** 0.5, T) ** 2)`` in float64 (CompVis "linear")."""
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    betas = np.linspace(linear_start**0.5, linear_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas, axis=0)


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """CompVis "uniform" DDIM timesteps, ascending: ``range(0, T, T // S) + 1``."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    selected = [t + 1 for t in range(0, num_train_timesteps, num_train_timesteps // num_steps)]
    if selected[-1] >= num_train_timesteps:  # T // S divides T - 1: CompVis would index past its schedule too
        raise ValueError(f"num_steps={num_steps} selects timestep {selected[-1]}, past the {num_train_timesteps}-step "
                         "schedule (the uniform discretisation fails when T // S divides T - 1); choose another")
    return selected


@dataclass(frozen=True)
class LDMDDIMSchedule:
    """Per selected timestep (ascending): ``a_t``, ``a_prev`` and ``sigma`` as CompVis DDIM uses them.

    Values are computed from the float32 ``alphas_cumprod`` in float64 and cast to float32 per step.
    """

    timesteps: np.ndarray
    alphas: np.ndarray
    alphas_prev: np.ndarray
    sigmas: np.ndarray
    eta: float
    num_train_timesteps: int = 1000

    @classmethod
    def create(cls, num_steps: int, eta: float = 1.0, num_train_timesteps: int = 1000) -> LDMDDIMSchedule:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        steps = np.array(ddim_timesteps(num_steps, num_train_timesteps))
        abar = compvis_alphas_cumprod(num_train_timesteps).astype(np.float32).astype(np.float64)
        alphas = abar[steps]
        alphas_prev = np.concatenate([abar[:1], abar[steps[:-1]]])
        sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        return cls(steps, alphas, alphas_prev, sigmas, float(eta), num_train_timesteps)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def step(self, x: torch.Tensor, index: int, eps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One DDIM step from selected timestep ``index`` (0 = least noisy), in float32."""

        def value(array: np.ndarray) -> torch.Tensor:
            return torch.full((x.shape[0], 1, 1, 1), float(array[index]), dtype=torch.float32, device=x.device)

        a_t, a_prev, sigma = value(self.alphas), value(self.alphas_prev), value(self.sigmas)
        sqrt_one_minus_at = torch.sqrt(1.0 - a_t)
        x0 = (x - sqrt_one_minus_at * eps) / a_t.sqrt()  # predicted x_0 (DDIM eq. 12, first term)
        direction = (1.0 - a_prev - sigma**2).sqrt() * eps  # direction pointing to x_t
        return a_prev.sqrt() * x0 + direction + sigma * noise


@dataclass
class LDMSampleOutput(SampleOutput):
    """Latents and the run's record, the uint8 images if a first stage was given, and the unconditional
    contexts used."""

    images: torch.Tensor | None = None
    unconditional: list[torch.Tensor] = field(default_factory=list)


def decode_ldm_latents(vq: Any, latents: torch.Tensor) -> torch.Tensor:
    """VQ-decode (quantizing first) and map to uint8 ``(B, 3, H, W)``: ``clamp((x + 1) / 2, 0, 1) * 255``,
    truncated as the published scripts' ``astype(np.uint8)``."""
    dtype = getattr(vq, "dtype", latents.dtype)
    decoded = vq.decode(latents.to(dtype))
    decoded = decoded.sample if hasattr(decoded, "sample") else decoded
    return (torch.clamp((decoded.float() + 1.0) / 2.0, 0.0, 1.0) * 255.0).to(torch.uint8)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _unconditional_contexts(contexts: list[torch.Tensor], unconditional: Unconditional | Sequence[torch.Tensor],
                            generator: torch.Generator | None) -> list[torch.Tensor]:
    if isinstance(unconditional, str):
        if unconditional not in ("random", "zeros"):
            raise ValueError(f"unconditional must be 'random', 'zeros' or one tensor per model, got {unconditional!r}")
        if unconditional == "zeros":
            return [torch.zeros_like(c) for c in contexts]
        if generator is None:  # published: torch.rand_like(c), from the global generator
            return [torch.rand_like(c) for c in contexts]
        return [torch.rand(c.shape, generator=generator, device=generator.device).to(c) for c in contexts]
    given = list(unconditional)
    if len(given) != len(contexts):
        raise ValueError(f"unconditional: {len(given)} contexts given for {len(contexts)} models")
    for i, (u, c) in enumerate(zip(given, contexts)):
        if tuple(u.shape) != tuple(c.shape):
            raise ValueError(f"unconditional[{i}] has shape {tuple(u.shape)}, model {i}'s context {tuple(c.shape)}")
    return [u.to(c) for u, c in zip(given, contexts)]


def _eps(model: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    dtype = getattr(model, "dtype", x.dtype)
    out = model(x.to(dtype), t, encoder_hidden_states=context.to(dtype))
    out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, (tuple, list)) else out
    return out.to(x.dtype)


@torch.no_grad()
def sample_ldm_official(
    models: Sequence[nn.Module],
    embedders: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    class_labels: torch.Tensor | Sequence[int],
    fractions: float | Sequence[float] | Plan | None,
    *,
    num_steps: int = 100,
    eta: float = 1.0,
    guidance_scale: float = 3.0,
    noise: torch.Tensor | None = None,
    latent_shape: tuple[int, int, int] = (4, 32, 32),
    generator: torch.Generator | None = None,
    unconditional: Unconditional | Sequence[torch.Tensor] = "random",
    step_noise: Sequence[torch.Tensor] | None = None,
    vq: Any | None = None,
    num_train_timesteps: int = 1000,
    device: str | torch.device | None = None,
    progress: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> LDMSampleOutput:
    """Sample as the published LDM-S -> LDM experiment does (see the module docstring).

    Args:
        models: U-Nets, smallest first, called ``model(x, t, encoder_hidden_states=context)`` (diffusers
            ``UNet2DConditionModel``); one model: plain CompVis DDIM.
        embedders: one per model, ``labels -> (B, 1, d)`` (each model's own
            :class:`~tstitch.sampling.ldm_models.ClassEmbedder`).
        class_labels: ``B`` labels.
        fractions: the small models' shares (``r`` for two models), all shares, or a :class:`Plan`.
        num_steps, eta, guidance_scale: DDIM steps (100), eta (1.0 as published; 0 deterministic), scale (3.0).
        noise: initial latents ``(B, C, H, W)``; drawn with ``generator`` in ``latent_shape`` if ``None``.
        generator: source of every random number not passed in; ``None``: torch's global generator.
        unconditional: ``"random"`` (published ``rand_like`` per model), ``"zeros"``, or one tensor per model
            shaped like that model's context ``(B, 1, d_i)``.
        step_noise: the per-step noise ``z`` (one ``(B, C, H, W)`` tensor per step, in step order).
        vq: a first stage (``VQModel``); when given, ``images`` holds the decoded uint8 images.
        callback: called after every step with ``{"i", "t", "model", "x"}``.
    """
    models, embedders = list(models), list(embedders)
    if not models or len(models) != len(embedders):
        raise ValueError(f"need one embedder per model, got {len(models)} models and {len(embedders)} embedders")
    plan = Plan.coerce(fractions, len(models))
    if plan.is_sequence:
        raise ValueError(f"the published sampler switches by timestep: give fractions, not the per-step plan {plan}")
    if guidance_scale <= 0:
        raise ValueError(f"guidance_scale must be > 0, got {guidance_scale}")
    schedule = LDMDDIMSchedule.create(num_steps, eta, num_train_timesteps)
    if schedule.num_steps != num_steps:
        logger.info("%d steps do not divide %d: the uniform discretisation runs %d steps, as published",
                    num_steps, num_train_timesteps, schedule.num_steps)
    if device is None:
        device = noise.device if noise is not None else next(models[-1].parameters()).device
    labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
    batch = labels.numel()
    if noise is not None and (noise.ndim != 4 or noise.shape[0] != batch):
        raise ValueError(f"noise must be ({batch}, C, H, W) for {batch} labels, got shape {tuple(noise.shape)}")
    if step_noise is not None and len(step_noise) != schedule.num_steps:
        raise ValueError(f"step_noise has {len(step_noise)} tensors for {schedule.num_steps} steps")
    contexts = [embedder(labels).float() for embedder in embedders]
    for i, (model, context) in enumerate(zip(models, contexts)):
        width = getattr(getattr(model, "config", None), "cross_attention_dim", None)
        if width is not None and context.shape[-1] != width:
            raise ValueError(f"embedders[{i}] gives {context.shape[-1]}-wide contexts; models[{i}] expects {width}")
    guided = guidance_scale != 1.0
    drawn = isinstance(unconditional, str) and unconditional == "random"
    uncond = _unconditional_contexts(contexts, unconditional, generator) if guided and not drawn else []
    if noise is None:  # the published order: initial noise, then the random unconditional contexts
        noise = _randn((batch, *latent_shape), generator, torch.device(device))
    if guided and drawn:
        uncond = _unconditional_contexts(contexts, unconditional, generator)
    inputs = [torch.cat([u, c]) for u, c in zip(uncond, contexts)] if guided else contexts

    x = noise.float().to(device)
    order = range(schedule.num_steps - 1, -1, -1)
    record = published_record(models, [int(schedule.timesteps[i]) for i in order])
    for step, index in enumerate(tqdm(order, desc="LDM DDIM", disable=not progress)):
        t = int(schedule.timesteps[index])
        which = plan.model_at_timestep(t, num_train_timesteps, strict=True)
        start = time.perf_counter()
        x_in = torch.cat([x, x]) if guided else x
        eps = _eps(models[which], x_in, torch.full((x_in.shape[0],), t, dtype=torch.long, device=device), inputs[which])
        if guided:
            e_u, e_c = eps.chunk(2)
            eps = e_u + guidance_scale * (e_c - e_u)
        record.add(step, step, which, time.perf_counter() - start)
        z = step_noise[step].to(x) if step_noise is not None else _randn(tuple(x.shape), generator, x.device)
        x = schedule.step(x, index, eps, z)
        if callback is not None:
            callback({"i": step, "t": t, "model": which, "x": x})
    images = decode_ldm_latents(vq, x) if vq is not None else None
    return LDMSampleOutput(x, record, images=images, unconditional=uncond)


def ddim_scheduler_config(num_train_timesteps: int = 1000) -> dict[str, Any]:
    """diffusers ``DDIMScheduler`` settings equal to the published sampler's schedule.

    CompVis "linear" is diffusers' ``scaled_linear`` (``linspace(sqrt(start), sqrt(end)) ** 2``, computed in
    float32 by diffusers); ``leading`` spacing with ``steps_offset=1`` selects ``range(0, T, T // S) + 1``
    (1, 11, ..., 991 for S = 100: the same when S divides T), and ``set_alpha_to_one=False`` makes the last
    step's ``a_prev = alphas_cumprod[0]``. Pass ``eta`` to ``step()``; no clipping, epsilon prediction.
    """
    return {
        "num_train_timesteps": num_train_timesteps, "beta_start": LINEAR_START, "beta_end": LINEAR_END,
        "beta_schedule": "scaled_linear", "timestep_spacing": "leading", "steps_offset": 1,
        "set_alpha_to_one": False, "clip_sample": False, "prediction_type": "epsilon",
    }


def make_ddim_scheduler(num_train_timesteps: int = 1000) -> Any:
    """A diffusers ``DDIMScheduler`` with :func:`ddim_scheduler_config`."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(ddim_scheduler_config(num_train_timesteps))


def sample_ldm_wrapped(
    models: Sequence[ClassConditionedUNet],
    fractions: float | Sequence[float] | Plan | None,
    *,
    noise: torch.Tensor,
    class_labels: torch.Tensor | Sequence[int],
    num_steps: int = 100,
    sampler: str = "ddim",
    guidance_scale: float = 3.0,
    eta: float = 1.0,
    unconditional: Unconditional = "random",
    generator: torch.Generator | None = None,
    progress: bool = False,
    vq: Any | None = None,
) -> LDMSampleOutput:
    """:func:`sample_ldm_official` for :class:`ClassConditionedUNet` models (each one's U-Net and embedder),
    called like :func:`tstitch.sampling.official.sample_official` (``sampler`` must be ``"ddim"``)."""
    if sampler != "ddim":
        raise ValueError(f"the published LDM sampler is DDIM (eta {eta:g}); got sampler {sampler!r}")
    models = list(models)
    for i, model in enumerate(models):
        if not isinstance(model, ClassConditionedUNet):
            raise ValueError(f"models[{i}] is a {type(model).__name__}, not a ClassConditionedUNet (U-Net + embedder)")
    return sample_ldm_official(
        [m.unet for m in models], [m.embedder for m in models], class_labels, fractions, num_steps=num_steps,
        eta=eta, guidance_scale=guidance_scale, noise=noise, generator=generator, unconditional=unconditional,
        vq=vq, progress=progress, latent_shape=tuple(noise.shape[1:]),
    )
