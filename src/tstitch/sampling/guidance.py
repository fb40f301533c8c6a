# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Classifier-free guidance, written once: the doubled batch, the null label, the scale, learned sigma.

:class:`Guidance` is used by the one sampling loop (:func:`tstitch.sampling.denoise`), and its label
doubling and output unwrapping by the published sampler (whose guided step differs: see
:func:`tstitch.sampling.official.guide_three_channels`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checks import check_guidance_scale

__all__ = ["Guidance", "guided_output", "num_classes_of", "unwrap_output"]


def num_classes_of(model: Any) -> int | None:
    """Number of classes of a class-conditional model (its null label in classifier-free guidance)."""
    config = getattr(model, "config", None) or {}
    for key in ("num_embeds_ada_norm", "num_class_embeds"):
        value = config.get(key) if hasattr(config, "get") else None
        if value:
            return int(value)
    return None


def unwrap_output(output: Any) -> torch.Tensor:
    """The tensor of a denoiser's output (diffusers returns an object with ``.sample`` or a tuple)."""
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
    guidance_scale = check_guidance_scale(guidance_scale)
    output = unwrap_output(output)
    eps, rest = output[:, :channels], output[:, channels:]
    if guidance_scale > 1.0:
        guided = channels if guided_channels is None else guided_channels
        cond, uncond = eps.chunk(2)
        guided_eps = uncond[:, :guided] + guidance_scale * (cond[:, :guided] - uncond[:, :guided])
        eps = torch.cat([guided_eps, cond[:, guided:]], dim=1)
        rest = rest.chunk(2)[0]
    return torch.cat([eps, rest], dim=1) if keep_variance and rest.shape[1] else eps


#: ``unconditional(model, labels) -> labels``: the unconditional input of ``model`` for ``labels``.
Unconditional = Callable[[Any, torch.Tensor], torch.Tensor]


@dataclass
class Guidance:
    """Classifier-free guidance around a denoiser call (off when ``scale <= 1``).

    Args:
        scale: the guidance scale ``s``; on when ``> 1``.
        null_class: the null label; default the called model's number of classes (the DiT convention).
        guided_channels: how many latent channels guidance applies to (default all).
        unconditional: ``(model, labels) -> labels`` giving a model's own unconditional input, for model
            pairs whose null conditioning differs; default ``null_class`` for every model.
    """

    scale: float = 1.0
    null_class: int | None = None
    guided_channels: int | None = None
    unconditional: Unconditional | None = None

    def __post_init__(self) -> None:
        self.scale = check_guidance_scale(self.scale, "guidance scale")
        for name in ("null_class", "guided_channels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0 or None, got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.scale > 1.0

    def check(self, model: Any, labels: torch.Tensor | None, channels: int | None = None) -> None:
        """Raise ``ValueError`` now (before any sampling) if guidance cannot run with ``model`` (on latents
        of ``channels`` channels, when given)."""
        if channels is not None and self.guided_channels is not None and self.guided_channels > channels:
            raise ValueError(f"guided_channels must be in [0, {channels}] for {channels}-channel latents, "
                             f"got {self.guided_channels}")
        if not self.enabled:
            return
        if labels is None:
            raise ValueError("classifier-free guidance needs class_labels")
        if self.unconditional is None and self.null_class is None and num_classes_of(model) is None:
            raise ValueError("cannot tell the null class of this model: pass null_class")

    def labels(self, model: Any, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels ``model`` is called with: ``labels``, or ``[labels; unconditional]`` under guidance."""
        if not self.enabled:
            return labels
        self.check(model, labels)
        if self.unconditional is not None:
            return torch.cat([labels, self.unconditional(model, labels)])
        null = self.null_class if self.null_class is not None else num_classes_of(model)
        return torch.cat([labels, torch.full_like(labels, null)])

    def batch(self, latents: torch.Tensor) -> torch.Tensor:
        """The model's input batch: the latents, twice under guidance."""
        return torch.cat([latents, latents]) if self.enabled else latents

    def __call__(
        self,
        model: Callable[..., Any] | nn.Module,
        scheduler: Any,
        latents: torch.Tensor,
        t: Any,
        labels: torch.Tensor | None,
        *,
        keep_variance: bool = False,
    ) -> torch.Tensor:
        """One guided prediction of ``model`` at ``latents`` and timestep ``t``: what ``scheduler.step``
        takes (learned-variance channels kept only with ``keep_variance``)."""
        model_input = scheduler.scale_model_input(self.batch(latents), t)
        batch = model_input.shape[0]
        timestep = t.expand(batch) if torch.is_tensor(t) else torch.full((batch,), t, device=latents.device)
        output = model(model_input, timestep=timestep, class_labels=self.labels(model, labels))
        return guided_output(output, latents.shape[1], self.scale,
                             guided_channels=self.guided_channels, keep_variance=keep_variance)
