# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Load CompVis latent-diffusion checkpoints (``.ckpt``) as diffusers models.

A CompVis LDM checkpoint is a PyTorch Lightning file whose ``state_dict`` holds the U-Net
(``model.diffusion_model.*``), the class embedder (``cond_stage_model.embedding.weight``), maybe EMA copies
(``model_ema.*``, names without dots) and the first stage (``first_stage_model.*``). :func:`load_ldm_checkpoint`
returns an :class:`LDMComponents`: a diffusers ``UNet2DConditionModel``, the model's own :class:`ClassEmbedder`
(``(B,) -> (B, 1, d)`` context) and the first stage as a ``VQModel`` if present; :func:`load_vq_first_stage`
loads ``vq-f8/model.ckpt`` (``encoder.*``, ``decoder.*``, ``quantize.*``, ...; ``loss.*`` is ignored).

The architecture is read from the weight shapes: channels, channel multipliers, residual blocks per
level, which levels have attention, transformer depth, context width, 1x1-conv or linear projections,
scale-shift norm. The attention head width is not visible in the weights: it defaults to the published
``num_head_channels = 32`` and can be given (``num_head_channels=`` / ``num_heads=``) or read from the
CompVis YAML (``config=``). The key renaming is diffusers' own (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``); this module adds what they lack: shape inference, the key check, EMA,
the class embedder, attention inside the VQ levels and the codebook.

Files are read by :func:`tstitch.models.weights.read_lightning_state_dict` (``torch.load(weights_only=True)``).
Lightning files often pickle Lightning or OmegaConf objects beside the weights (callbacks keyed by class,
hyper-parameters); those, and only those (names under ``pytorch_lightning``, ``lightning``, ``lightning_fabric``,
``omegaconf``, ``typing``), are unpickled as inert placeholders: nothing in the file is executed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..sampling.ldm_models import ClassEmbedder
from .weights import block_indices, build_from_weights, first_few, read_lightning_state_dict, shape_of

__all__ = [
    "LDMComponents", "load_ldm_checkpoint", "load_vq_first_stage",
    "read_compvis_yaml", "extract_unet_state_dict", "infer_ldm_unet_config", "convert_ldm_unet_state_dict",
    "infer_vq_config", "convert_vq_state_dict",
]

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
EMBEDDER_KEY = "cond_stage_model.embedding.weight"
FIRST_STAGE_PREFIX = "first_stage_model."
#: The published LDM / LDM-S head width (CompVis ``num_head_channels``).
DEFAULT_HEAD_CHANNELS = 32


@dataclass
class LDMComponents:
    """What :func:`load_ldm_checkpoint` returns: the U-Net, its class embedder, the first stage if any."""

    unet: Any
    embedder: ClassEmbedder | None
    vq: Any | None = None
    used_ema: bool = False
    unet_config: dict[str, Any] = field(default_factory=dict)


# -- the CompVis YAML --------------------------------------------------------------------------------------


def read_compvis_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The ``unet_config.params`` of a CompVis YAML (``model.params.unet_config.params``)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CompVis config {str(path)!r} not found: no such file")
    try:
        data = yaml.safe_load(path.read_text())
        return dict(data["model"]["params"]["unet_config"]["params"])
    except (yaml.YAMLError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a CompVis LDM config (no model.params.unet_config.params): {error}") from error


# -- U-Net: EMA, shapes, keys ------------------------------------------------------------------------------


def extract_unet_state_dict(sd: Mapping[str, torch.Tensor], *, ema: bool | None = None,
                            where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], bool]:
    """The U-Net's weights (CompVis names, prefix removed) and whether they are the EMA copies.

    ``ema=None`` prefers ``model_ema.*`` when present (as the published samplers use them), ``True``
    requires them, ``False`` ignores them. EMA names are the parameter names without dots
    (``model_ema.diffusion_modelinput_blocks00weight``); they are mapped back to the U-Net's names.
    """
    unet = {k[len(UNET_PREFIX) :]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    if not unet:
        sample = ", ".join(sorted(sd)[:6])
        raise ValueError(f"{where}: no CompVis U-Net weights (keys '{UNET_PREFIX}*'); found {sample}")
    has_ema = any(k.startswith(EMA_PREFIX) and k not in ("model_ema.decay", "model_ema.num_updates") for k in sd)
    if ema is False or (ema is None and not has_ema):
        return unet, False
    if not has_ema:
        raise ValueError(f"{where}: ema=True but the checkpoint has no '{EMA_PREFIX}*' weights")
    flat = {EMA_PREFIX + ("diffusion_model." + k).replace(".", ""): k for k in unet}
    missing = [name for name in flat if name not in sd]
    if missing:
        raise ValueError(f"{where}: EMA weights are incomplete; missing {first_few(missing)}")
    logger.info("%s: using the EMA weights (model_ema.*) of the U-Net", where)
    return {k: sd[name] for name, k in flat.items()}, True


def _parse_levels(sd: Mapping[str, torch.Tensor], where: str) -> list[list[tuple[int, bool]]]:
    """Input blocks grouped by level: per residual block (output channels, has attention)."""
    levels: list[list[tuple[int, bool]]] = [[]]
    blocks = block_indices(sd, "input_blocks.")
    if blocks != list(range(len(blocks))) or not blocks:
        raise ValueError(f"{where}: input blocks are missing or not numbered 0..n (found {blocks})")
    for i in blocks[1:]:
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
            continue
        out = shape_of(sd, f"input_blocks.{i}.0.in_layers.2.weight", where)[0]
        levels[-1].append((out, f"input_blocks.{i}.1.norm.weight" in sd))
    return levels


def infer_ldm_unet_config(sd: Mapping[str, torch.Tensor], *, num_head_channels: int | None = None,
                          num_heads: int | None = None, sample_size: int = 32, where: str = "U-Net") -> dict[str, Any]:
    """``UNet2DConditionModel`` config for a CompVis ``openaimodel.UNetModel`` state dict (no prefix).

    Heads: ``num_head_channels`` (channels per head, default 32 as published) or ``num_heads`` (a fixed
    head count, CompVis ``num_heads`` with ``num_head_channels: -1``).
    """
    model_channels, in_channels = shape_of(sd, "input_blocks.0.0.weight", where)[:2]
    out_channels = shape_of(sd, "out.2.weight", where)[0]
    levels = _parse_levels(sd, where)
    per_level = {len(level) for level in levels}
    if len(per_level) != 1 or 0 in per_level:
        raise ValueError(f"{where}: levels have different numbers of residual blocks {sorted(per_level)}")
    channels = []
    for index, level in enumerate(levels):
        if len({c for c, _ in level}) != 1 or len({a for _, a in level}) != 1:
            raise ValueError(f"{where}: level {index} mixes widths or attention between its residual blocks")
        channels.append(level[0][0])
    attention = [level[0][1] for level in levels]
    if channels[0] != model_channels:
        raise ValueError(f"{where}: channel_mult must start with 1 for diffusers (level 0 has {channels[0]} channels)")
    expected_out = len(levels) * (per_level.pop() + 1)
    outputs = len(block_indices(sd, "output_blocks."))
    if outputs != expected_out:
        raise ValueError(f"{where}: expected {expected_out} output blocks, found {outputs}")
    with_attention = [f"input_blocks.{i}.1" for i in range(1, 64) if f"input_blocks.{i}.1.norm.weight" in sd]
    attn = (with_attention or ["middle_block.1"])[0]
    depth = len(block_indices(sd, f"{attn}.transformer_blocks."))
    if depth == 0:
        raise ValueError(f"{where}: no spatial transformer blocks ('{attn}.transformer_blocks.<i>.*'); "
                         "only use_spatial_transformer U-Nets are supported")
    context_dim = shape_of(sd, f"{attn}.transformer_blocks.0.attn2.to_k.weight", where)[1]
    scale_shift = shape_of(sd, "input_blocks.1.0.emb_layers.1.weight", where)[0] == 2 * channels[0]
    if num_heads is not None and num_head_channels is not None:
        raise ValueError("give num_heads or num_head_channels, not both")
    head_channels = num_head_channels or DEFAULT_HEAD_CHANNELS
    for width in channels:
        name, value = ("num_heads", num_heads) if num_heads is not None else ("num_head_channels", head_channels)
        if value <= 0 or width % value:
            raise ValueError(f"{name}={value} does not divide the level width {width}")
    heads = [num_heads if num_heads is not None else width // head_channels for width in channels]
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    # attention_head_dim is diffusers' name for the number of heads per level; CompVis' timestep features
    # are [cos, sin] with frequencies exp(-ln(1e4) * i / half): flip_sin_to_cos, freq_shift 0.
    return dict(
        sample_size=sample_size, in_channels=in_channels, out_channels=out_channels, down_block_types=down,
        up_block_types=[d.replace("Down", "Up") for d in reversed(down)], block_out_channels=channels,
        layers_per_block=len(levels[0]), cross_attention_dim=context_dim, attention_head_dim=heads,
        transformer_layers_per_block=depth, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
        use_linear_projection=len(shape_of(sd, f"{attn}.proj_in.weight", where)) == 2,
        resnet_time_scale_shift="scale_shift" if scale_shift else "default",
    )


def _expected_unet_keys(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> list[str]:
    """Every CompVis key of the U-Net that ``config`` describes (weights and biases)."""

    def wb(name: str) -> list[str]:
        return [f"{name}.weight", f"{name}.bias"]

    def resblock(name: str, in_ch: int, out_ch: int) -> list[str]:
        parts = ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
        keys = [k for part in parts for k in wb(f"{name}.{part}")]
        return keys + (wb(f"{name}.skip_connection") if in_ch != out_ch else [])

    def transformer(name: str) -> list[str]:
        keys = wb(f"{name}.norm") + wb(f"{name}.proj_in") + wb(f"{name}.proj_out")
        for d in range(config["transformer_layers_per_block"]):
            block = f"{name}.transformer_blocks.{d}"
            for attn in ("attn1", "attn2"):
                keys += [f"{block}.{attn}.to_{x}.weight" for x in "qkv"] + wb(f"{block}.{attn}.to_out.0")
            for part in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"):
                keys += wb(f"{block}.{part}")
        return keys

    channels, attention = config["block_out_channels"], ["Attn" in d for d in config["down_block_types"]]
    n = config["layers_per_block"]
    keys = wb("time_embed.0") + wb("time_embed.2") + wb("input_blocks.0.0") + wb("out.0") + wb("out.2")
    index, skips, ch = 1, [channels[0]], channels[0]
    for level, width in enumerate(channels):
        for _ in range(n):
            keys += resblock(f"input_blocks.{index}.0", ch, width)
            keys += transformer(f"input_blocks.{index}.1") if attention[level] else []
            ch = width
            skips.append(ch)
            index += 1
        if level < len(channels) - 1:
            keys += wb(f"input_blocks.{index}.0.op")
            skips.append(ch)
            index += 1
    keys += resblock("middle_block.0", ch, ch) + transformer("middle_block.1") + resblock("middle_block.2", ch, ch)
    index = 0
    for level in reversed(range(len(channels))):
        for i in range(n + 1):
            width = channels[level]
            keys += resblock(f"output_blocks.{index}.0", ch + skips.pop(), width)
            ch = width
            part = 1
            if attention[level]:
                keys += transformer(f"output_blocks.{index}.1")
                part = 2
            if level and i == n:
                keys += wb(f"output_blocks.{index}.{part}.conv")
            index += 1
    return keys


def convert_ldm_unet_state_dict(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any], *,
                                where: str = "U-Net") -> dict[str, torch.Tensor]:
    """CompVis U-Net weights (no prefix) -> ``UNet2DConditionModel`` weights, with diffusers' renaming.

    Raises ``ValueError`` naming missing keys, unexpected keys and wrong shapes.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    expected = _expected_unet_keys(sd, config)
    if missing := [k for k in expected if k not in sd]:
        raise ValueError(f"{where}: missing keys of the CompVis U-Net layout: {first_few(missing)}")
    if unexpected := sorted(set(sd) - set(expected)):
        raise ValueError(f"{where}: unexpected keys for this CompVis U-Net: {first_few(unexpected)}")
    prefixed = {UNET_PREFIX + k: v for k, v in sd.items()}
    converted = convert_ldm_unet_checkpoint(prefixed, dict(config))
    return {k: v.detach().clone().contiguous() for k, v in converted.items()}


# -- VQ first stage ----------------------------------------------------------------------------------------


def infer_vq_config(sd: Mapping[str, torch.Tensor], *, where: str = "first stage") -> dict[str, Any]:
    """``VQModel`` config for CompVis ``VQModel`` weights (``encoder.*``, ``decoder.*``, ``quantize.*``)."""
    ch, in_channels = shape_of(sd, "encoder.conv_in.weight", where)[:2]
    n_embed, embed_dim = shape_of(sd, "quantize.embedding.weight", where)
    levels = block_indices(sd, "encoder.down.")
    if not levels or levels != list(range(len(levels))):
        raise ValueError(f"{where}: encoder levels missing or not numbered 0..n (found {levels})")
    widths = [shape_of(sd, f"encoder.down.{i}.block.0.conv2.weight", where)[0] for i in levels]
    attention = [f"encoder.down.{i}.attn.0.q.weight" in sd for i in levels]
    if widths[0] != ch:
        raise ValueError(f"{where}: ch_mult must start with 1 for diffusers ({widths[0]} != {ch})")
    down = ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attention]
    up = ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attention)]
    return dict(  # scaling_factor 1.0: the LDM latents are the first stage's own (scale_factor 1.0)
        in_channels=in_channels, out_channels=shape_of(sd, "decoder.conv_out.weight", where)[0],
        down_block_types=down, up_block_types=up, block_out_channels=widths, norm_num_groups=32,
        layers_per_block=len(block_indices(sd, "encoder.down.0.block.")), num_vq_embeddings=n_embed,
        latent_channels=shape_of(sd, "decoder.conv_in.weight", where)[1], vq_embed_dim=embed_dim, scaling_factor=1.0,
    )


def convert_vq_state_dict(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any], *,
                          where: str = "first stage") -> dict[str, torch.Tensor]:
    """CompVis ``VQModel`` weights -> diffusers ``VQModel`` weights (``loss.*`` is ignored)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, update_vae_attentions_ldm_to_diffusers

    level_attn = re.compile(r"^(encoder)\.down\.(\d+)\.attn\.(\d+)\.|^(decoder)\.up\.(\d+)\.attn\.(\d+)\.")
    weights = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    plain = {k: v for k, v in weights.items() if not level_attn.match(k) and not k.startswith("quantize.")}
    converted = convert_ldm_vae_checkpoint(plain, dict(config))
    levels = len(config["block_out_channels"])
    for key in weights:
        m = level_attn.match(key)
        if not m:
            continue
        if m.group(1):  # encoder levels keep their order
            level, j = m.group(2), m.group(3)
            old, new = f"encoder.down.{level}.attn.{j}", f"encoder.down_blocks.{level}.attentions.{j}"
        else:  # decoder levels are reversed in diffusers
            level, j = m.group(5), m.group(6)
            old, new = f"decoder.up.{level}.attn.{j}", f"decoder.up_blocks.{levels - 1 - int(level)}.attentions.{j}"
        update_vae_attentions_ldm_to_diffusers([key], converted, weights, {"old": old, "new": new})
    if "quantize.embedding.weight" in weights:
        converted["quantize.embedding.weight"] = weights["quantize.embedding.weight"]
    return {k: v.detach().clone().contiguous() for k, v in converted.items()}


def _vq_from_state_dict(sd: Mapping[str, torch.Tensor], where: str) -> Any:
    from diffusers import VQModel

    config = infer_vq_config(sd, where=where)
    converted = convert_vq_state_dict(sd, config, where=where)
    known = {k for k in sd if not k.startswith("loss.")}
    if len(converted) != len(known):
        raise ValueError(f"{where}: {len(known) - len(converted)} first-stage weights were not converted "
                         "(unexpected keys for a CompVis VQModel)")
    return build_from_weights(VQModel, config, converted, where)


def load_vq_first_stage(source: str | os.PathLike | Mapping[str, torch.Tensor], *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> Any:
    """A CompVis VQ first stage (``vq-f8/model.ckpt``, or an LDM ``.ckpt``'s ``first_stage_model.*``)
    as a diffusers ``VQModel`` in eval mode. Decode with ``vq.decode(z).sample`` (quantizes first)."""
    where = "first stage" if isinstance(source, Mapping) else str(source)
    sd = dict(source) if isinstance(source, Mapping) else read_lightning_state_dict(source)
    if any(k.startswith(FIRST_STAGE_PREFIX) for k in sd):
        sd = {k[len(FIRST_STAGE_PREFIX) :]: v for k, v in sd.items() if k.startswith(FIRST_STAGE_PREFIX)}
    return _place(_vq_from_state_dict(sd, where), device, dtype)


# -- public loading ----------------------------------------------------------------------------------------


def load_ldm_checkpoint(
    source: str | os.PathLike, *, ema: bool | None = None, config: str | os.PathLike | Mapping[str, Any] | None = None,
    num_head_channels: int | None = None, num_heads: int | None = None, sample_size: int = 32,
    load_first_stage: bool = True, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
) -> LDMComponents:
    """Load a CompVis LDM ``.ckpt`` (``ldm.ckpt``, ``ldm_s.ckpt``) as diffusers models.

    Args:
        source: a Lightning ``.ckpt`` (or ``.pt``/``.safetensors``) with ``model.diffusion_model.*``.
        ema: ``None`` uses ``model_ema.*`` when present, ``True`` requires it, ``False`` ignores it.
        config: the CompVis YAML (path) or its ``unet_config.params`` dict: supplies the head layout
            (``num_head_channels`` / ``num_heads``); the rest is read from the weights and checked.
        num_head_channels, num_heads: the head layout, if no ``config`` (default 32 channels per head).
        sample_size: the latent size recorded in the U-Net config (32 for ImageNet 256 with ``vq-f8``).
        load_first_stage: also build ``first_stage_model.*`` as a ``VQModel`` when the file has it.

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable files, pickled code, missing or
        unexpected keys, wrong shapes, architectures diffusers cannot express.
    """
    if config is not None:
        params = read_compvis_yaml(config) if not isinstance(config, Mapping) else dict(config)
        if num_head_channels is None and num_heads is None:
            if params.get("num_head_channels", -1) not in (-1, None):
                num_head_channels = int(params["num_head_channels"])
            elif params.get("num_heads", -1) not in (-1, None):
                num_heads = int(params["num_heads"])
    where = str(source)
    sd = read_lightning_state_dict(source)
    unet_sd, used_ema = extract_unet_state_dict(sd, ema=ema, where=where)
    unet_config = infer_ldm_unet_config(unet_sd, num_head_channels=num_head_channels, num_heads=num_heads,
                                        sample_size=sample_size, where=where)
    if config is not None:
        _check_against_yaml(unet_config, params, where)
    from diffusers import UNet2DConditionModel

    converted = convert_ldm_unet_state_dict(unet_sd, unet_config, where=where)
    unet = _place(build_from_weights(UNet2DConditionModel, unet_config, converted, where), device, dtype)
    embedder = None
    if EMBEDDER_KEY in sd:
        table = sd[EMBEDDER_KEY]
        if table.ndim != 2 or table.shape[1] != unet_config["cross_attention_dim"]:
            raise ValueError(f"{where}: {EMBEDDER_KEY} has shape {tuple(table.shape)}; the U-Net's context is "
                             f"{unet_config['cross_attention_dim']} wide")
        with torch.random.fork_rng(devices=[]):
            embedder = ClassEmbedder(table.shape[0], table.shape[1]).eval()
        embedder.embedding.weight.data.copy_(table)
        embedder = embedder.to(device=device, dtype=dtype)
    vq = None
    if load_first_stage and any(k.startswith(FIRST_STAGE_PREFIX) for k in sd):
        vq = load_vq_first_stage(sd, device=device, dtype=dtype)
    return LDMComponents(unet=unet, embedder=embedder, vq=vq, used_ema=used_ema, unet_config=unet_config)


def _check_against_yaml(config: Mapping[str, Any], params: Mapping[str, Any], where: str) -> None:
    width = config["block_out_channels"][0]
    seen = dict(
        model_channels=width, in_channels=config["in_channels"], out_channels=config["out_channels"],
        num_res_blocks=config["layers_per_block"], context_dim=config["cross_attention_dim"],
        transformer_depth=config["transformer_layers_per_block"],
        channel_mult=[c // width for c in config["block_out_channels"]],
    )
    for name, value in seen.items():
        given = params.get(name)
        if given is not None and (list(given) if isinstance(given, (list, tuple)) else given) != value:
            raise ValueError(f"{where}: the config says {name}={given!r}, the weights say {value!r}")


def _place(module: Any, device: str | torch.device, dtype: torch.dtype) -> Any:
    module = module.to(device=device)
    return module if module.dtype == dtype else module.to(dtype=dtype)
