# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Loaded, stitchable models, as the presets and ``--model`` build them and
:func:`tstitch.experiments.generate.generate` samples them.

* :class:`ClassConditionalModels`: class-conditional denoisers (the published DiT pairs, the embedded digits
  family) with their noise schedule and decoder (their :data:`~tstitch.models.families.FAMILIES` row).
* :class:`StitchedPipeline`: a diffusers pipeline (Stable Diffusion, SDXL, ...) stitched in place with
  :func:`tstitch.stitch`; the text encoders, tokenizers and VAE are the large pipeline's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..sampling import num_classes_of
from .families import FAMILIES, denoiser_of
from .presets import MODES, OFFICIAL_MODES, Mode, SamplingDefaults  # torch-free, there; re-exported here

__all__ = ["MODES", "OFFICIAL_MODES", "Mode", "SamplingDefaults", "ClassConditionalModels", "StitchedPipeline",
           "LoadedModels", "check_controlnet_layout"]


@dataclass
class ClassConditionalModels:
    """Class-conditional denoisers (smallest first) with their noise schedule and decoder.

    ``vae`` ``None`` means the latents are the pixels in ``[-1, 1]`` (the embedded digits family);
    otherwise images are ``vae.decode(latents / latent_scale)``.
    """

    models: list[nn.Module]
    names: list[str]
    scheduler_config: dict[str, Any]
    defaults: SamplingDefaults
    vae: nn.Module | None = None
    latent_scale: float = 1.0
    label: str = ""
    family: str = "dit"

    kind: str = field(default="class", init=False)

    @property
    def large(self) -> nn.Module:
        return self.models[-1]

    @property
    def num_classes(self) -> int | None:
        return num_classes_of(self.large)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        config = self.large.config
        size = int(config.sample_size)
        return int(config.in_channels), size, size

    @property
    def device(self) -> torch.device:
        return self.large.device

    @property
    def learned_variance(self) -> bool:
        out = getattr(self.large, "out_channels", None) or self.large.config.get("out_channels")
        return bool(out) and int(out) == 2 * int(self.large.config.in_channels)

    def decode(self, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Images in ``[0, 1]``, float32 on the CPU (by the family's decoder)."""
        return FAMILIES[self.family].decode(latents, self.vae, self.latent_scale, batch_size)

    def call(self, model: nn.Module, x: torch.Tensor, timestep: torch.Tensor, labels: Any) -> torch.Tensor:
        """One call of ``model`` (one of :attr:`models`) by the family's calling convention."""
        return FAMILIES[self.family].call(model, x, timestep, labels)


@dataclass
class StitchedPipeline:
    """A diffusers pipeline stitched with :func:`tstitch.stitch` around its own denoiser (the large model).

    ``small_models`` are the other denoisers, smallest first; :func:`generate` re-stitches the pipeline
    with the fractions it is asked for.
    """

    pipe: Any
    small_models: list[nn.Module]
    names: list[str]
    defaults: SamplingDefaults
    label: str = ""

    kind: str = field(default="pipeline", init=False)

    @property
    def num_models(self) -> int:
        return len(self.small_models) + 1

    @property
    def large(self) -> nn.Module:
        """The pipeline's own denoiser (the large model)."""
        denoiser = denoiser_of(self.pipe)[1]
        return getattr(denoiser, "large", denoiser)

    @property
    def device(self) -> torch.device:
        return self.pipe.device


LoadedModels = ClassConditionalModels | StitchedPipeline



def check_controlnet_layout(pipe: Any, small_models: Sequence[nn.Module]) -> None:
    """Refuse small U-Nets that cannot take the ControlNet's residuals.

    A ControlNet adds one residual per down-block output and one to the mid block, shaped after the large
    U-Net's blocks. A small U-Net with fewer blocks or layers per block (BK-SDM) would take them
    misaligned; one with the same block layout and fewer transformer layers (SSD-1B) takes them as the
    large one does. Raises ``ValueError`` naming the differing config field.
    """
    controlnet = getattr(pipe, "controlnet", None)
    large = getattr(pipe, "unet", None)
    if controlnet is None or large is None:
        return
    large = getattr(large, "large", large)
    for i, small in enumerate(small_models):
        for key in ("block_out_channels", "layers_per_block", "down_block_types", "mid_block_type"):
            want, got = large.config.get(key), small.config.get(key)
            want = tuple(want) if isinstance(want, list) else want
            got = tuple(got) if isinstance(got, list) else got
            if want != got:
                raise ValueError(
                    f"models[{i}] cannot take the ControlNet's residuals: its {key} is {got!r}, the pipeline's "
                    f"U-Net's is {want!r} (a small U-Net for a ControlNet pipeline needs the large one's block "
                    "layout, as SSD-1B has for SDXL)"
                )
