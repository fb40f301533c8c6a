# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""A diffusers ``DiTTransformer2DModel`` built from a DiT state dict (official or diffusers layout): the config
read from the tensors (:mod:`tstitch.models.dit_layout`), or read from the file and checked against them, the
weights put in with every key and shape checked, and a stored position table that is not the standard one kept.
:mod:`tstitch.models.checkpoints` reads the files and hands their state dicts here.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal

import torch

from .checks import check_float_tensors
from .dit_layout import convert_official_dit_state_dict, detect_layout, infer_diffusers_dit_config
from .weights import build_from_weights

__all__ = ["MAX_SAMPLE_SIZE", "check_sample_size", "model_from_state_dict"]

#: The largest latent size a DiT is built for (a 4,096-pixel image through an f8 VAE). A config read from a
#: file cannot ask for more: with ``sample_size`` 40,000 and patch 2 the position table alone holds 4e8 rows
#: of the model's width (12.8 GB at width 8), allocated before any weight was checked.
MAX_SAMPLE_SIZE = 512
#: Config fields that the tensors show, checked against a config read from a file before the model is built.
SHAPE_FIELDS = ("in_channels", "out_channels", "num_layers", "patch_size", "num_embeds_ada_norm")


def check_sample_size(value: Any, whose: str) -> int:
    """``value`` as a latent size in ``[1, MAX_SAMPLE_SIZE]``; ``ValueError`` naming ``whose`` config."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SAMPLE_SIZE:
        raise ValueError(f"{whose} sample_size must be an integer in [1, {MAX_SAMPLE_SIZE}] (the latent of a "
                         f"4,096-pixel image), got {value!r}")
    return value


def _checked_config(config: Mapping[str, Any], sd: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    """A config read from a file (its metadata, a config.json beside it), once the tensors that fix the model's
    size agree with it and it asks for a sane ``sample_size``: a model is never built from a config alone (a
    small file asking for a huge model). Fields the config lacks are read from the tensors."""
    size = check_sample_size(config.get("sample_size"), f"{where}: the config's")
    heads = config.get("num_attention_heads")
    if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or heads < 1):
        raise ValueError(f"{where}: the config's num_attention_heads must be a positive integer, got {heads!r}")
    shown = infer_diffusers_dit_config(sd, sample_size=size, num_attention_heads=heads, where=where)
    config = {**shown, **{name: value for name, value in config.items() if value is not None}}
    for name in ("num_attention_heads", "attention_head_dim", *SHAPE_FIELDS):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: the config's {name} must be a positive integer, got {value!r}")
    blocks = len({key.split(".")[1] for key in sd if key.startswith("transformer_blocks.")})
    if config["num_layers"] != blocks:
        raise ValueError(f"{where}: the config says num_layers={config['num_layers']}, the file has {blocks} blocks")
    hidden, patch = config["num_attention_heads"] * config["attention_head_dim"], config["patch_size"]
    expected = {  # the tensors whose shapes follow from the config's sizes
        "pos_embed.proj.weight": (hidden, config["in_channels"], patch, patch),
        "proj_out_2.weight": (patch * patch * config["out_channels"], hidden),
        "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight": (config["num_embeds_ada_norm"] + 1,
                                                                                 hidden),
    }
    wrong = [f"{key} is {tuple(sd[key].shape)} in the file, {shape} in the model"
             for key, shape in expected.items() if tuple(sd[key].shape) != shape]
    if wrong:
        raise ValueError(f"{where}: {len(wrong)} tensor(s) have the wrong shape for the architecture read from the "
                         f"file: {'; '.join(wrong)}")
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise ValueError(f"{where}: the config says norm_type={config['norm_type']!r}; DiTs use 'ada_norm_zero'")
    return config


def _init_args(config: Mapping[str, Any]) -> dict[str, Any]:
    from diffusers import DiTTransformer2DModel

    allowed = set(inspect.signature(DiTTransformer2DModel.__init__).parameters) - {"self"}
    return {k: v for k, v in config.items() if k in allowed}


def _check_pos_embed(model: Any, sd: Mapping[str, torch.Tensor], where: str) -> None:
    stored = sd.get("pos_embed")
    if stored is None:
        return
    computed = model.pos_embed.pos_embed
    if tuple(stored.shape) != tuple(computed.shape):
        raise ValueError(
            f"{where}: pos_embed has shape {tuple(stored.shape)}, the model expects {tuple(computed.shape)}"
        )
    if not torch.allclose(stored.float(), computed.float(), atol=1e-4):
        # Not the standard 2D sin-cos table: use the stored one so that the forward pass is the checkpoint's.
        model.pos_embed.pos_embed.copy_(stored.to(computed.dtype))


def model_from_state_dict(
    sd: dict[str, torch.Tensor],
    where: str,
    *,
    config: dict[str, Any] | None,
    sample_size: int | None,
    num_attention_heads: int | None,
) -> tuple[Any, Literal["official", "diffusers"]]:
    """The model ``sd`` describes (official or diffusers layout) and the timestep-embedding mode its layout
    implies: ``config`` (read from the file) is checked against the tensors, never trusted alone."""
    from diffusers import DiTTransformer2DModel

    check_float_tensors(sd, where)
    layout = detect_layout(sd)
    if layout == "official":
        config, converted = convert_official_dit_state_dict(
            sd, sample_size=sample_size, num_attention_heads=num_attention_heads, where=where
        )
        model = build_from_weights(DiTTransformer2DModel, _init_args(config), converted, where)
        with torch.no_grad():
            _check_pos_embed(model, sd, where)
        return model, "official"
    if config is None:
        config = infer_diffusers_dit_config(
            sd, sample_size=sample_size, num_attention_heads=num_attention_heads, where=where
        )
    else:
        config = _checked_config(config, sd, where)
    return build_from_weights(DiTTransformer2DModel, _init_args(config), sd, where), "diffusers"
