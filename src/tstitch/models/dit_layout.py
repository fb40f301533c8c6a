# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The DiT architecture read from weight shapes, and official DiT keys mapped onto diffusers' layout.

The architecture is read from the weight shapes, never from the file name: hidden size and latent channels
from the patch embedding, patch size from its kernel, depth from the block count, output channels (learned
sigma) from the final projection, classes from the label table (its last row is the null class), the
latent size from the stored position embedding. The number of attention heads cannot be seen in the
weights; it comes from the table of published sizes (hidden 384/768/1024/1152 -> 6/12/16/16 heads) or,
for other widths, a head width as close to 64 as divides the hidden size (override with
``num_attention_heads``). Used by :mod:`tstitch.models.checkpoints` and :mod:`tstitch.models.dit_build`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch

from .weights import block_indices, first_few, shape_of

__all__ = [
    "OFFICIAL_HEADS",
    "FREQUENCY_EMBEDDING_SIZE",
    "heads_for_hidden_size",
    "infer_official_dit_config",
    "infer_diffusers_dit_config",
    "dit_config",
    "convert_official_dit_state_dict",
    "detect_layout",
]

#: Published DiT widths and their head counts (S, B, L, XL).
OFFICIAL_HEADS: dict[int, int] = {384: 6, 768: 12, 1024: 16, 1152: 16}

#: Official DiT's timestep frequency-embedding width (diffusers hard-codes the same 256).
FREQUENCY_EMBEDDING_SIZE = 256

# -- architecture inference --------------------------------------------------------------------------------


def heads_for_hidden_size(hidden_size: int) -> int:
    """Attention heads of a DiT of width ``hidden_size``.

    The published sizes use 6 / 12 / 16 / 16 heads for widths 384 / 768 / 1024 / 1152 (head width 64, 64,
    64, 72). Other widths get the divisor of ``hidden_size`` whose head width is closest to 64 (the wider
    head on a tie).
    """
    if hidden_size <= 0:
        raise ValueError(f"hidden size must be positive, got {hidden_size}")
    if hidden_size in OFFICIAL_HEADS:
        return OFFICIAL_HEADS[hidden_size]
    divisors = [h for h in range(1, hidden_size + 1) if hidden_size % h == 0]
    return min(divisors, key=lambda h: (abs(hidden_size / h - 64), h))


def _embedding_and_depth(sd: Mapping[str, Any], embedding: str, blocks: str, where: str) -> tuple[int, int, int, int]:
    """Hidden size, latent channels and (square) patch size from the patch embedding's weight ``embedding``, and
    the number of blocks ``<blocks><i>.*``, numbered from 0 with none missing."""
    hidden, in_channels, patch, patch_w = shape_of(sd, embedding, where)
    if patch != patch_w:
        raise ValueError(f"{where}: non-square patches ({patch}x{patch_w}) are not supported")
    indices = block_indices(sd, blocks)
    if not indices:
        raise ValueError(f"{where}: no transformer blocks (keys '{blocks}<i>.*')")
    depth = indices[-1] + 1
    missing = sorted(set(range(depth)) - set(indices))
    if missing:
        raise ValueError(f"{where}: blocks {missing} are missing (found blocks up to {depth - 1})")
    return hidden, in_channels, patch, depth


def _heads(hidden: int, num_attention_heads: int | None, where: str) -> int:
    heads = num_attention_heads or heads_for_hidden_size(hidden)
    if hidden % heads:
        raise ValueError(f"{where}: hidden size {hidden} is not divisible by {heads} heads")
    return heads


def _latent_size_from_tokens(num_tokens: int, patch_size: int, where: str) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{where}: position embedding has {num_tokens} tokens, not a square grid")
    return side * patch_size


def _check_mlp_ratio(hidden: int, mlp_hidden: int, where: str) -> None:
    if mlp_hidden != 4 * hidden:
        raise ValueError(
            f"{where}: MLP width {mlp_hidden} is not 4 x hidden size {hidden}; diffusers' "
            "DiTTransformer2DModel only supports mlp_ratio 4"
        )


def infer_official_dit_config(
    sd: Mapping[str, torch.Tensor],
    *,
    sample_size: int | None = None,
    num_attention_heads: int | None = None,
    where: str = "state dict",
) -> dict[str, Any]:
    """``DiTTransformer2DModel`` config for an official-layout DiT state dict, from its shapes only."""
    hidden, in_channels, patch, depth = _embedding_and_depth(sd, "x_embedder.proj.weight", "blocks.", where)
    out_features = shape_of(sd, "final_layer.linear.weight", where)[0]
    if out_features % (patch * patch):
        raise ValueError(f"{where}: final projection width {out_features} is not a multiple of patch^2")
    out_channels = out_features // (patch * patch)
    table_rows = shape_of(sd, "y_embedder.embedding_table.weight", where)[0]
    freq = shape_of(sd, "t_embedder.mlp.0.weight", where)[1]
    if freq != FREQUENCY_EMBEDDING_SIZE:
        raise ValueError(
            f"{where}: timestep frequency embedding is {freq} wide; diffusers' DiT only supports "
            f"{FREQUENCY_EMBEDDING_SIZE}"
        )
    _check_mlp_ratio(hidden, shape_of(sd, "blocks.0.mlp.fc1.weight", where)[0], where)
    if sample_size is None:
        if "pos_embed" not in sd:
            raise ValueError(f"{where}: no 'pos_embed' to read the latent size from; pass sample_size")
        sample_size = _latent_size_from_tokens(sd["pos_embed"].shape[-2], patch, where)
    heads = _heads(hidden, num_attention_heads, where)
    return dit_config(
        heads, hidden // heads, in_channels, out_channels, depth, sample_size, patch, table_rows - 1
    )


def infer_diffusers_dit_config(
    sd: Mapping[str, torch.Tensor],
    *,
    sample_size: int | None = None,
    num_attention_heads: int | None = None,
    where: str = "state dict",
) -> dict[str, Any]:
    """``DiTTransformer2DModel`` config for a diffusers-layout DiT state dict, from its shapes only.

    The latent size is not stored in diffusers' weights (the position embedding is not saved), so
    ``sample_size`` must be given.
    """
    hidden, in_channels, patch, depth = _embedding_and_depth(sd, "pos_embed.proj.weight", "transformer_blocks.", where)
    out_channels = shape_of(sd, "proj_out_2.weight", where)[0] // (patch * patch)
    table_rows = shape_of(sd, "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight", where)[0]
    _check_mlp_ratio(hidden, shape_of(sd, "transformer_blocks.0.ff.net.0.proj.weight", where)[0], where)
    if sample_size is None:
        raise ValueError(
            f"{where}: diffusers-layout weights do not record the latent size; pass sample_size= or keep the "
            "model's config.json beside the weights (a diffusers folder)"
        )
    heads = _heads(hidden, num_attention_heads, where)
    config = dit_config(
        heads, hidden // heads, in_channels, out_channels, depth, sample_size, patch, table_rows - 1
    )
    config["norm_eps"] = 1e-5  # unknown origin: keep diffusers' default
    return config


def dit_config(
    heads: int,
    head_dim: int,
    in_channels: int,
    out_channels: int,
    depth: int,
    sample_size: int,
    patch: int,
    num_classes: int,
) -> dict[str, Any]:
    return {
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "num_layers": depth,
        "sample_size": sample_size,
        "patch_size": patch,
        "num_embeds_ada_norm": num_classes,
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,  # the official MLP-side LayerNorm
    }


# -- official -> diffusers key mapping ---------------------------------------------------------------------

_OFFICIAL_BLOCK_MAP = {
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
_OFFICIAL_GLOBAL_MAP = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}
_EMBEDDER_MAP = {
    "t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
}


def _expected_official_keys(depth: int) -> list[str]:
    keys = ["y_embedder.embedding_table.weight"]
    for name in (*_OFFICIAL_GLOBAL_MAP, *_EMBEDDER_MAP):
        keys += [f"{name}.weight", f"{name}.bias"]
    for i in range(depth):
        for name in ("attn.qkv", *_OFFICIAL_BLOCK_MAP):
            keys += [f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"]
    return keys


def convert_official_dit_state_dict(
    sd: Mapping[str, torch.Tensor],
    *,
    sample_size: int | None = None,
    num_attention_heads: int | None = None,
    where: str = "state dict",
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Convert an official DiT state dict to ``(config, state_dict)`` for ``DiTTransformer2DModel``.

    ``config`` holds the constructor arguments inferred from the shapes (see
    :func:`infer_official_dit_config`). The timestep and label embedders, single in the official model, are
    copied into every block (diffusers gives each block its own); the fused ``qkv`` projection is split into
    ``to_q``, ``to_k``, ``to_v``. ``pos_embed`` (a fixed sin-cos table that diffusers recomputes) is not
    carried over. Every returned tensor is its own contiguous copy. Raises ``ValueError`` naming missing or
    unexpected keys.

    The converted model reproduces the official forward pass only with the official timestep features; use
    :func:`load_dit` (which sets them) or :func:`set_timestep_embedding` on a model built from ``config``.
    """
    config = infer_official_dit_config(
        sd, sample_size=sample_size, num_attention_heads=num_attention_heads, where=where
    )
    depth = config["num_layers"]
    expected = _expected_official_keys(depth)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ValueError(f"{where}: missing keys of the official DiT layout: {first_few(missing, 8)}")
    unexpected = sorted(set(sd) - set(expected) - {"pos_embed"})
    if unexpected:
        raise ValueError(
            f"{where}: unexpected keys for an official DiT with {depth} blocks: {first_few(unexpected, 8)}"
        )

    def own(t: torch.Tensor) -> torch.Tensor:
        return t.detach().clone().contiguous()

    out: dict[str, torch.Tensor] = {}
    for old, new in _OFFICIAL_GLOBAL_MAP.items():
        for p in ("weight", "bias"):
            out[f"{new}.{p}"] = own(sd[f"{old}.{p}"])
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    for i in range(depth):
        block = f"transformer_blocks.{i}"
        for old, new in _EMBEDDER_MAP.items():
            for p in ("weight", "bias"):
                out[f"{block}.{new}.{p}"] = own(sd[f"{old}.{p}"])
        out[f"{block}.norm1.emb.class_embedder.embedding_table.weight"] = own(
            sd["y_embedder.embedding_table.weight"]
        )
        for old, new in _OFFICIAL_BLOCK_MAP.items():
            for p in ("weight", "bias"):
                out[f"{block}.{new}.{p}"] = own(sd[f"blocks.{i}.{old}.{p}"])
        for p in ("weight", "bias"):
            qkv = sd[f"blocks.{i}.attn.qkv.{p}"]
            if qkv.shape[0] != 3 * hidden:
                raise ValueError(
                    f"{where}: blocks.{i}.attn.qkv.{p} has {qkv.shape[0]} rows, expected {3 * hidden}"
                )
            for name, part in zip(("to_q", "to_k", "to_v"), qkv.chunk(3, dim=0)):
                out[f"{block}.attn1.{name}.{p}"] = own(part)
    return config, out


# -- layouts -----------------------------------------------------------------------------------------------


def detect_layout(sd: Mapping[str, Any]) -> Literal["official", "diffusers"]:
    """``"official"`` or ``"diffusers"`` for a DiT state dict; ``ValueError`` for anything else."""
    if "x_embedder.proj.weight" in sd:
        return "official"
    if "pos_embed.proj.weight" in sd and any(k.startswith("transformer_blocks.") for k in sd):
        return "diffusers"
    sample = ", ".join(sorted(sd)[:6]) or "(no tensors)"
    raise ValueError(
        "unknown checkpoint layout: expected official DiT keys (x_embedder.proj.weight, blocks.<i>.*) or "
        "diffusers DiTTransformer2DModel keys (pos_embed.proj.weight, transformer_blocks.<i>.*); "
        f"found {sample}"
    )
