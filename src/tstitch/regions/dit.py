# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""A DiT's forward on a subset of its tokens, with the other tokens' keys and values given (:mod:`tstitch.regions`).

The steps are those of diffusers' ``DiTTransformer2DModel.forward`` and ``BasicTransformerBlock.forward`` with
``norm_type="ada_norm_zero"`` and ``AttnProcessor2_0``: patch embedding with positions, then per block adaLN-zero
(``norm1``), self-attention, the gated residual, ``norm3`` modulated by the block's shift and scale, the
feed-forward and its gated residual; at the end ``norm_out`` modulated by ``proj_out_1`` of the first block's
conditioning, and ``proj_out_2``. Every step but attention is per token, so it runs on the selected tokens only;
attention takes the selected tokens' queries against all keys.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["check_dit", "large_on_tokens", "noise_tokens", "patchify", "unpatchify"]


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, N, patch * patch * C)`` in DiT's token order (row-major patches, channel last)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`patchify` (DiT's own unpatchify for ``height == width``)."""
    b = tokens.shape[0]
    h, w = height // patch, width // patch
    x = tokens.reshape(b, h, w, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, height, width)


def noise_tokens(tokens: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """The first ``channels`` channels (the noise prediction) of each patch's values, flattened per token."""
    b, n, d = tokens.shape
    return tokens.reshape(b, n, patch * patch, d // (patch * patch))[..., :channels].reshape(b, n, -1)


def check_dit(large: nn.Module) -> None:
    """Raise ``ValueError`` unless ``large`` is a DiT whose blocks :func:`large_on_tokens` reproduces."""
    needed = ("pos_embed", "transformer_blocks", "proj_out_1", "proj_out_2", "norm_out", "patch_size")
    missing = [name for name in needed if not hasattr(large, name)]
    if missing:
        raise ValueError(f"HybridDenoiser needs a DiTTransformer2DModel as the large model; {type(large).__name__} "
                         f"has no {', '.join(missing)}")
    for i, block in enumerate(large.transformer_blocks):
        if getattr(block, "norm_type", None) != "ada_norm_zero" or block.attn2 is not None or (
            block.pos_embed is not None
        ):
            raise ValueError(f"large model block {i}: HybridDenoiser handles DiT blocks (adaLN-zero, self-attention "
                             "only)")
        if getattr(block.attn1, "fused_projections", False):
            raise ValueError(f"large model block {i} has fused QKV projections: call unfuse_qkv_projections() first")


def _attention(attn: nn.Module, x: torch.Tensor, index: torch.Tensor | None, cached: tuple | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-attention of the tokens ``x`` ``(B, k, D)``: with ``cached`` keys and values ``(B, N, D)``, the fresh ones
    are written at ``index`` into copies of them. Returns the output and the keys and values used."""
    batch = x.shape[0]
    query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    if cached is not None:
        spread = index.unsqueeze(-1).expand(-1, -1, key.shape[-1])
        key = cached[0].scatter(1, spread, key.to(cached[0].dtype))
        value = cached[1].scatter(1, spread, value.to(cached[1].dtype))
    head_dim = key.shape[-1] // attn.heads
    q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    k = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    v = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(q.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + x
    return out / attn.rescale_output_factor, key, value


def large_on_tokens(large: nn.Module, x: torch.Tensor, timestep: Any, class_labels: Any, index: torch.Tensor,
                    cache: Any) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The DiT ``large``'s output tokens ``(B, k, patch * patch * out_channels)`` for the tokens ``index`` ``(B, k)``.

    ``cache`` (with ``keys``/``values`` lists of ``(B, N, D)`` per block) gives the other tokens' keys and values;
    without it ``index`` must hold every token in order, and the keys and values computed are returned too (else
    two empty lists).
    """
    hidden = large.pos_embed(x)  # (B, N, D): patches and positions
    if cache is not None:
        hidden = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for i, block in enumerate(large.transformer_blocks):
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(
            hidden, timestep, class_labels, hidden_dtype=hidden.dtype
        )
        cached = None if cache is None else (cache.keys[i], cache.values[i])
        attn_out, key, value = _attention(block.attn1, normed, index, cached)
        if cache is None:
            keys.append(key)
            values.append(value)
        hidden = gate_msa.unsqueeze(1) * attn_out + hidden
        normed = block.norm3(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden = gate_mlp.unsqueeze(1) * block.ff(normed) + hidden
    conditioning = large.transformer_blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=hidden.dtype)
    shift, scale = large.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
    hidden = large.norm_out(hidden) * (1 + scale[:, None]) + shift[:, None]
    return large.proj_out_2(hidden), keys, values
