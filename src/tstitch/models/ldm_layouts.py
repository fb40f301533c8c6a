# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The published LDM-S / LDM architectures as diffusers configs, and random-weight models of them.

Both U-Nets (T-Stitch's class-conditional ImageNet 256 LDMs, ``shared/reference/official-ldm-sampler.md``):
4 latent channels, ``channel_mult`` (1, 2, 4), 2 residual blocks per level, a spatial transformer (depth 1,
32 channels per head) at every level and in the middle, a one-token class context. LDM-S: 64 channels,
context 256; LDM: 256 channels, context 512. The configs equal what
:func:`tstitch.models.ldm_checkpoints.infer_ldm_unet_config` reads from the released weights; the benchmark
times random-weight models of these shapes (speed does not depend on the weights).
"""

from __future__ import annotations

from typing import Any

import torch

from ..sampling.ldm_models import ClassConditionedUNet, ClassEmbedder

__all__ = ["LDM_SHAPES", "TINY_LDM_SHAPES", "ldm_unet_config", "random_ldm_model"]

#: Name -> (model_channels, context_dim) of the published U-Nets.
LDM_SHAPES = {"LDM-S": (64, 256), "LDM": (256, 512)}
#: The same layout at the smallest widths it allows (32 channels: one head, 32 norm groups), for tests.
TINY_LDM_SHAPES = {"LDM-S": (32, 8), "LDM": (32, 16)}


def ldm_unet_config(model_channels: int, context_dim: int, *, channel_mult: tuple[int, ...] = (1, 2, 4),
                    num_res_blocks: int = 2, num_head_channels: int = 32, sample_size: int = 32) -> dict[str, Any]:
    """``UNet2DConditionModel`` kwargs of a CompVis class-conditional LDM U-Net (attention at every level)."""
    channels = [model_channels * m for m in channel_mult]
    if any(width % num_head_channels or width % 32 for width in channels):
        raise ValueError(f"level widths {channels} must be multiples of 32 and of num_head_channels="
                         f"{num_head_channels}")
    down = ["CrossAttnDownBlock2D"] * len(channels)
    return dict(
        sample_size=sample_size, in_channels=4, out_channels=4, down_block_types=down,
        up_block_types=["CrossAttnUpBlock2D"] * len(channels), block_out_channels=channels,
        layers_per_block=num_res_blocks, cross_attention_dim=context_dim,
        attention_head_dim=[width // num_head_channels for width in channels], transformer_layers_per_block=1,
        norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, use_linear_projection=False,
        resnet_time_scale_shift="default",
    )


def random_ldm_model(model_channels: int, context_dim: int, *, name: str = "LDM", num_classes: int = 1000,
                     sample_size: int = 32, device: torch.device | str = "cpu", seed: int = 0) -> torch.nn.Module:
    """A :class:`~tstitch.sampling.ldm_models.ClassConditionedUNet` of this shape with random weights."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            unet = UNet2DConditionModel(**ldm_unet_config(model_channels, context_dim, sample_size=sample_size))
            embedder = ClassEmbedder(num_classes, context_dim)
    model = ClassConditionedUNet(unet, embedder).eval().requires_grad_(False)
    model._tstitch_name = name
    return model
