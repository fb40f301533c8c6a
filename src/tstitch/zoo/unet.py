# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The embedded U-Net pair: class-conditional ``UNet2DConditionModel``s on the 8x8 digits.

Like the published LDM pair, each U-Net embeds the class labels itself into a cross-attention context of
its own width (``cross_attention_dim``), so the two models take different conditioning inputs and stitch
through the per-model conditioning (``owns_conditioning``). The label table has 11 rows: the ten digits
and the null class 10, trained by 10% label dropout in the training loop, so classifier-free guidance uses
label 10 exactly as for the DiTs. Same data, noise schedule and training recipe as the DiTs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..sampling.ldm_models import ClassConditionedUNet, ClassEmbedder
from .data import IMAGE_SIZE, NUM_CLASSES

__all__ = ["UNetSpec", "DigitsUNet", "build_unet"]


@dataclass(frozen=True)
class UNetSpec:
    """Shape of one U-Net member: two resolution levels (8x8, then 4x4 with cross-attention) and the mid block.

    Cross-attention sits at the 4x4 level and in the mid block only: at 8x8 (64 tokens) it would cost more
    than the whole small model on a CPU.
    """

    name: str
    block_out_channels: tuple[int, int]
    layers_per_block: int
    cross_attention_dim: int
    attention_heads: tuple[int, int]
    norm_num_groups: int
    train_steps: int

    def config(self) -> dict[str, Any]:
        """The ``UNet2DConditionModel`` config (JSON-serialisable), plus the label-table size."""
        return {
            "sample_size": IMAGE_SIZE,
            "in_channels": 1,
            "out_channels": 1,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "cross_attention_dim": self.cross_attention_dim,
            # diffusers reads this as the number of heads per block
            "attention_head_dim": list(self.attention_heads),
            "norm_num_groups": self.norm_num_groups,
            "num_class_embeds": NUM_CLASSES,
        }


class DigitsUNet(ClassConditionedUNet):
    """A ``UNet2DConditionModel`` with its own label table; the null class 10 is a learned row.

    Called like the DiTs: ``model(x, timestep=t, class_labels=y).sample``. ``config["num_class_embeds"]``
    is 10, the null label guidance uses.
    """

    def __init__(self, unet: torch.nn.Module, embedder: ClassEmbedder):
        super().__init__(unet, embedder, null_class=NUM_CLASSES)

    def contexts(self, class_labels: torch.Tensor) -> torch.Tensor:
        """``(B, 1, d)`` contexts: the label table's rows, the learned null row for label 10."""
        return self.embedder(class_labels)


def build_unet(spec: UNetSpec) -> DigitsUNet:
    """A freshly initialised U-Net member (uses the global torch seed)."""
    from diffusers import UNet2DConditionModel

    unet_config = {k: v for k, v in spec.config().items() if k != "num_class_embeds"}
    unet = UNet2DConditionModel(**unet_config)
    embedder = ClassEmbedder(NUM_CLASSES + 1, spec.cross_attention_dim)
    return DigitsUNet(unet, embedder)
