# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The published DiT / T-Stitch sampler, step for step (``sample_official``).

This follows the sampling semantics of the official DiT code and the published T-Stitch code (described
in words in ``shared/reference/official-dit-sampler.md``), so that the same models, noise and random
generator give the same latents. Written from that description; no code of those projects is used.

* **Allocation.** 1,000 training steps, linear betas ``1e-4 .. 0.02`` (scaled by ``1000 / T``), all in
  float64 numpy as the reference keeps them. ``num_steps`` respaces it to the kept timesteps
  ``round(i * (T - 1) / (N - 1))``, computed as the reference does: a running float sum of the stride
  ``(T - 1) / (N - 1)`` rounded by Python's ``round`` (half to even). For the usual ``N`` (10, 20, 25, 50,
  100, 250, ...) this equals the closed formula with half-to-even rounding (``N = 25`` keeps 166 and 832,
  not 167 and 833 as half-up rounding would); for a few ``N`` (21, 23, 27, ...) the running sum lands just
  below a ``.5`` that the closed formula hits exactly, and the reference's (running-sum) value is used.
  ``N = 1`` keeps timestep 0 only.
* **Respaced process.** ``beta'_k = 1 - abar[t_k] / abar[t_{k-1}]`` (``abar[t_{-1}] = 1``); every
  coefficient follows from these betas in float64 and is cast to a float32 tensor per step.
* **Model calls.** The network sees the *original* timestep (999, 888, ...), a long tensor, and
  ``class_labels``; models are diffusers ``DiTTransformer2DModel`` (``model(x, timestep=t,
  class_labels=y).sample``) or anything called the same way.
* **Guidance** (``guidance_scale > 1``): the batch is doubled (conditional labels, then the null label =
  the number of classes); the model is fed the first half twice; ``uncond + s * (cond - uncond)`` replaces
  the first ``guided_channels`` (3) channels of both halves, the other channels (the 4th latent channel,
  the variance channels) keep each half's own output; the conditional half is returned.
* **DDIM** (eta 0): ignores the variance channels, recomputes epsilon from the predicted ``x0`` as the
  reference does, never clips. **DDPM**: ancestral steps with the learned-range variance (log-space
  interpolation between the clipped posterior variance and beta, weight ``(v + 1) / 2``), or the fixed
  "large" variance for models with no variance channels. Both draw standard-normal noise of the whole
  (doubled) batch's shape after every model call, the last step included, where it is multiplied by zero
  (DDIM multiplies it by ``sigma = 0``): the random stream advances exactly as the reference's.
* **Stitching.** At original timestep ``t`` the model is
  :meth:`tstitch.plan.Plan.model_at_timestep` ``(t, T)``: with two models the small one
  runs while ``t / T >= 1 - r``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..plan import Plan
from .checks import check_class_labels, check_guidance_scale, check_noise, check_positive_int
from .guidance import Guidance, num_classes_of, unwrap_output
from .output import SampleOutput, published_record

__all__ = [
    "SAMPLERS",
    "linear_betas",
    "respaced_timesteps",
    "RespacedDiffusion",
    "guide_three_channels",
    "sample_official",
]

SAMPLERS = ("ddim", "ddpm")

Sampler = Literal["ddim", "ddpm"]


def linear_betas(num_train_timesteps: int = 1000) -> np.ndarray:
    """The DiT training betas: linear from ``1e-4`` to ``0.02``, scaled by ``1000 / T`` (float64)."""
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    scale = 1000 / num_train_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_train_timesteps, dtype=np.float64)


def respaced_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The kept training timesteps for ``num_steps`` sampling steps, ascending.

    ``round(i * (T - 1) / (N - 1))`` for ``i = 0 .. N - 1``, evaluated as a running float sum of the
    stride with Python's half-to-even ``round``, which is how the reference evaluates it (see the module
    docstring for where that differs from the closed formula).
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    stride = 1.0 if num_steps <= 1 else (num_train_timesteps - 1) / (num_steps - 1)
    position = 0.0
    kept = []
    for _ in range(num_steps):
        kept.append(round(position))
        position += stride
    return sorted(set(kept))


def _as_coefficient(values: np.ndarray, index: int, like: torch.Tensor) -> torch.Tensor:
    """One float64 schedule value as a float32 tensor shaped to broadcast over a batch like ``like``."""
    value = torch.from_numpy(values[index : index + 1]).float().to(like.device)
    return value.reshape((1,) * like.ndim).expand(like.shape[0], *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class RespacedDiffusion:
    """The respaced diffusion process of ``num_steps`` steps: float64 arrays indexed by respaced step.

    Index ``k`` is the respaced step (0 = least noisy); :attr:`timesteps` maps it to the training timestep
    the model is called with.
    """

    num_train_timesteps: int
    timesteps: np.ndarray
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    log_betas: np.ndarray
    fixed_large_log_variance: np.ndarray

    @classmethod
    def create(cls, num_steps: int, num_train_timesteps: int = 1000) -> RespacedDiffusion:
        """The process for ``num_steps`` evenly respaced steps of the linear schedule."""
        kept = respaced_timesteps(num_steps, num_train_timesteps)
        base_cumprod = np.cumprod(1.0 - linear_betas(num_train_timesteps), axis=0)
        betas = []
        previous = 1.0
        for t in kept:
            betas.append(1.0 - base_cumprod[t] / previous)
            previous = base_cumprod[t]
        return cls.from_betas(np.array(betas, dtype=np.float64), np.array(kept), num_train_timesteps)

    @classmethod
    def from_betas(
        cls, betas: np.ndarray, timesteps: np.ndarray, num_train_timesteps: int
    ) -> RespacedDiffusion:
        betas = np.asarray(betas, dtype=np.float64)
        alphas = 1.0 - betas
        cumprod = np.cumprod(alphas, axis=0)
        cumprod_prev = np.append(1.0, cumprod[:-1])
        posterior_variance = betas * (1.0 - cumprod_prev) / (1.0 - cumprod)
        # log(0) is undefined at the first step: the reference repeats the second entry there.
        if len(betas) > 1:
            clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
            fixed_large = np.log(np.append(posterior_variance[1], betas[1:]))
        else:
            clipped = np.array([], dtype=np.float64)
            fixed_large = np.array([], dtype=np.float64)
        return cls(
            num_train_timesteps=num_train_timesteps,
            timesteps=np.asarray(timesteps, dtype=np.int64),
            betas=betas,
            alphas_cumprod=cumprod,
            alphas_cumprod_prev=cumprod_prev,
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / cumprod),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / cumprod - 1.0),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=clipped,
            posterior_mean_coef1=betas * np.sqrt(cumprod_prev) / (1.0 - cumprod),
            posterior_mean_coef2=(1.0 - cumprod_prev) * np.sqrt(alphas) / (1.0 - cumprod),
            log_betas=np.log(betas),
            fixed_large_log_variance=fixed_large,
        )

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def coefficient(self, name: str, index: int, like: torch.Tensor) -> torch.Tensor:
        """Array ``name`` at respaced step ``index``, a float32 tensor of shape ``(batch, 1, 1, 1)``."""
        return _as_coefficient(getattr(self, name), index, like)

    def predict_xstart(self, x: torch.Tensor, index: int, eps: torch.Tensor) -> torch.Tensor:
        """``x0`` from ``x_t`` and the predicted noise (no clipping)."""
        return (
            self.coefficient("sqrt_recip_alphas_cumprod", index, x) * x
            - self.coefficient("sqrt_recipm1_alphas_cumprod", index, x) * eps
        )

    def ddim_step(
        self, x: torch.Tensor, index: int, model_output: torch.Tensor, noise: torch.Tensor, eta: float = 0.0
    ) -> torch.Tensor:
        """One DDIM step from respaced step ``index``; the variance channels are ignored."""
        channels = x.shape[1]
        xstart = self.predict_xstart(x, index, model_output[:, :channels])
        eps = (self.coefficient("sqrt_recip_alphas_cumprod", index, x) * x - xstart) / self.coefficient(
            "sqrt_recipm1_alphas_cumprod", index, x
        )
        alpha_bar = self.coefficient("alphas_cumprod", index, x)
        alpha_bar_prev = self.coefficient("alphas_cumprod_prev", index, x)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        mean = xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        nonzero = float(index != 0)
        return mean + nonzero * sigma * noise

    def ddpm_log_variance(
        self, x: torch.Tensor, index: int, variance_values: torch.Tensor | None
    ) -> torch.Tensor:
        """Log variance of the reverse step: learned range given ``variance_values``, else fixed large."""
        if self.num_steps < 2:
            raise ValueError(
                "DDPM sampling needs at least 2 steps (the variance clipping uses the second one)"
            )
        if variance_values is None:
            return self.coefficient("fixed_large_log_variance", index, x).expand(x.shape)
        min_log = self.coefficient("posterior_log_variance_clipped", index, x)
        max_log = self.coefficient("log_betas", index, x)
        weight = (variance_values + 1) / 2
        return weight * max_log + (1 - weight) * min_log

    def ddpm_step(
        self, x: torch.Tensor, index: int, model_output: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """One ancestral DDPM step from respaced step ``index`` (learned-range variance if present)."""
        channels = x.shape[1]
        eps = model_output[:, :channels]
        variance_values = model_output[:, channels:] if model_output.shape[1] > channels else None
        if variance_values is not None and variance_values.shape[1] != channels:
            raise ValueError(
                f"model output has {model_output.shape[1]} channels; expected {channels} or {2 * channels}"
            )
        log_variance = self.ddpm_log_variance(x, index, variance_values)
        xstart = self.predict_xstart(x, index, eps)
        mean = (
            self.coefficient("posterior_mean_coef1", index, x) * xstart
            + self.coefficient("posterior_mean_coef2", index, x) * x
        )
        nonzero = float(index != 0)  # the last step adds no noise (its draw is multiplied by zero)
        return mean + nonzero * torch.exp(0.5 * log_variance) * noise


def guide_three_channels(
    model_output: torch.Tensor, guidance_scale: float, guided_channels: int = 3
) -> torch.Tensor:
    """Classifier-free guidance as the published DiT sampler applies it, on the doubled batch.

    ``model_output`` is the output for ``[conditional; unconditional]``. On the first ``guided_channels``
    channels ``uncond + s * (cond - uncond)`` replaces both halves; the other channels (the last latent
    channel, the variance channels) keep each half's own values. The shape is unchanged.
    """
    if model_output.shape[0] % 2:
        raise ValueError(f"guidance needs the doubled batch, got batch {model_output.shape[0]}")
    guided, rest = model_output[:, :guided_channels], model_output[:, guided_channels:]
    cond, uncond = torch.split(guided, guided.shape[0] // 2, dim=0)
    mixed = uncond + guidance_scale * (cond - uncond)
    return torch.cat([torch.cat([mixed, mixed], dim=0), rest], dim=1)


def _call(
    model: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None
) -> torch.Tensor:
    dtype = getattr(model, "dtype", x.dtype)
    kwargs = {"timestep": t}
    if y is not None:
        kwargs["class_labels"] = y
    return unwrap_output(model(x.to(dtype), **kwargs)).to(x.dtype)


@torch.no_grad()
def sample_official(
    models: nn.Module | Sequence[nn.Module],
    fractions: float | Sequence[float] | Plan | None,
    *,
    noise: torch.Tensor,
    class_labels: torch.Tensor | Sequence[int] | None,
    num_steps: int,
    sampler: Sampler = "ddim",
    guidance_scale: float = 1.5,
    num_train_timesteps: int = 1000,
    null_class: int | None = None,
    guided_channels: int = 3,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> SampleOutput:
    """Sample with the published DiT / T-Stitch semantics (see the module docstring).

    Args:
        models: the denoisers, smallest first (one model: plain DiT sampling).
        fractions: the small models' shares (a float for two models, else one per small model), all
            models' shares (summing to 1), or a :class:`Plan`; ``None`` for one model.
        noise: initial latents ``(n, C, H, W)``; the same noise for every fraction when comparing.
        class_labels: ``n`` labels (``None`` for an unconditional model without guidance).
        num_steps: sampling steps (the respacing of the ``num_train_timesteps`` schedule).
        sampler: ``"ddim"`` (eta 0 unless ``eta`` is given) or ``"ddpm"``.
        guidance_scale: classifier-free guidance on when ``> 1`` (published: 1.5 for FID, 4.0 visuals).
        null_class: the null label; default the large model's number of classes.
        guided_channels: channels guidance applies to (the published sampler: 3).
        generator: source of the per-step noise; ``None`` uses torch's global generator, as the reference.
        progress: show a tqdm bar.

    Returns:
        :class:`~tstitch.sampling.output.SampleOutput`: the latents ``(n, C, H, W)`` (conditional half under
        guidance) and the run's :class:`~tstitch.stepcount.StitchRecord` (the training timestep and model of
        every step, wall-clock seconds in each model, not CUDA-synchronized).

    Raises:
        ValueError: before any model call, for the same bad inputs as :func:`tstitch.sample` (noise, labels,
            step counts, guidance scale, generator), ``eta`` outside ``[0, 1]`` and a negative
            ``guided_channels``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    model_list = (
        [models] if isinstance(models, nn.Module) or not isinstance(models, Sequence) else list(models)
    )
    if not model_list:
        raise ValueError("no models given")
    plan = Plan.coerce(fractions, len(model_list))
    if plan.is_sequence:
        raise ValueError(f"the published sampler switches by timestep: give fractions, not the per-step plan {plan}")
    if any(getattr(m, "training", False) for m in model_list):
        warnings.warn(
            "sample_official: a model is in training mode (DiT's label embedding then drops labels at "
            "random); call .eval() first",
            stacklevel=2,
        )
    large = model_list[-1]
    config = getattr(large, "config", None)
    channels = config.get("in_channels") if hasattr(config, "get") else None
    size = config.get("sample_size") if hasattr(config, "get") else None
    check_noise(noise, channels=channels if isinstance(channels, int) else None,
                size=size if isinstance(size, int) else None)
    num_train_timesteps = check_positive_int(num_train_timesteps, "num_train_timesteps")
    num_steps = check_positive_int(num_steps, "num_steps", num_train_timesteps)
    guidance_scale = check_guidance_scale(guidance_scale)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError("generator must be one torch.Generator or None (the published sampler draws the whole "
                         f"batch's noise from one), got {generator!r}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    # more guided channels than the latents have (the default 3 on 1-channel latents) guide them all
    if isinstance(guided_channels, bool) or not isinstance(guided_channels, int) or guided_channels < 0:
        raise ValueError(f"guided_channels must be an integer >= 0, got {guided_channels!r}")
    diffusion = RespacedDiffusion.create(num_steps, num_train_timesteps)
    if sampler == "ddpm" and diffusion.num_steps < 2:
        raise ValueError("DDPM sampling needs at least 2 steps")

    n = noise.shape[0]
    device = noise.device
    num_classes = num_classes_of(large)
    labels = check_class_labels(class_labels, n, num_classes, device)
    if labels is None and num_classes is not None:
        raise ValueError(f"class_labels is None, but the models are class-conditional ({num_classes} classes): "
                         "give one label per sample")
    # The label doubling and the null label are the shared guidance's; the guided step is this sampler's.
    guidance = Guidance(guidance_scale, null_class=null_class, guided_channels=guided_channels)
    use_cfg = guidance.enabled
    labels = guidance.labels(model_list[-1], labels)
    x = guidance.batch(noise.float())

    order = range(diffusion.num_steps - 1, -1, -1)
    record = published_record(model_list, [int(diffusion.timesteps[i]) for i in order])
    for step, index in enumerate(tqdm(order, desc="sampling", disable=not progress, leave=False)):
        t = int(diffusion.timesteps[index])
        which = plan.model_at_timestep(t, num_train_timesteps)
        timestep = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
        start = time.perf_counter()
        if use_cfg:
            half = x[: x.shape[0] // 2]
            raw = _call(model_list[which], torch.cat([half, half], dim=0), timestep, labels)
            model_output = guide_three_channels(raw, guidance_scale, guided_channels)
        else:
            model_output = _call(model_list[which], x, timestep, labels)
        record.add(step, step, which, time.perf_counter() - start)
        if model_output.shape[1] < x.shape[1]:
            raise ValueError(
                f"model output has {model_output.shape[1]} channels for {x.shape[1]} latent channels"
            )
        if generator is None:
            step_noise = torch.randn_like(x)
        else:
            step_noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
            step_noise = step_noise.to(device)
        if sampler == "ddim":
            x = diffusion.ddim_step(x, index, model_output, step_noise, eta=eta)
        else:
            x = diffusion.ddpm_step(x, index, model_output, step_noise)
    return SampleOutput(x[:n] if use_cfg else x, record)
