# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Load DiT checkpoints of any common kind as a diffusers ``DiTTransformer2DModel``.

Accepted sources (see :func:`load_dit`):

* an official DiT / T-Stitch state dict (``.pt`` / ``.pth`` / ``.bin``), plain or nested under ``ema``,
  ``model``, ``state_dict`` or ``module`` (``ema`` is preferred, as the published samplers do);
* a ``.safetensors`` file with official DiT keys or diffusers keys;
* a local diffusers folder (a ``DiTTransformer2DModel`` folder, or a pipeline folder with ``transformer/``);
* a Hugging Face hub id (``owner/name``, loaded with diffusers' ``from_pretrained``) or a file in a hub
  repository (``owner/name/path/file.pt``), honouring ``HF_HUB_OFFLINE`` / ``local_files_only``.

The architecture is read from the weight shapes, never from the file name: hidden size and latent channels
from the patch embedding, patch size from its kernel, depth from the block count, output channels (learned
sigma) from the final projection, classes from the label table (its last row is the null class), the
latent size from the stored position embedding. The number of attention heads cannot be seen in the
weights; it comes from the table of published sizes (hidden 384/768/1024/1152 -> 6/12/16/16 heads) or,
for other widths, a head width as close to 64 as divides the hidden size (override with
``num_attention_heads``).

Two numerical details differ between the official DiT code and diffusers' ``DiTTransformer2DModel``:

* the sinusoidal timestep features: official frequencies are ``exp(-ln(10000) * i / 128)``, diffusers'
  DiT divides by ``127`` (``downscale_freq_shift=1``);
* the LayerNorm before the MLP: official eps ``1e-6``, diffusers' default ``1e-5``.

Models loaded from official weights get the official behaviour (``timestep_embedding="official"``, set on
the modules and recorded in files written by :func:`save_dit_safetensors`); models from diffusers folders
and hub ids keep diffusers' behaviour unless ``timestep_embedding="official"`` is asked for (right for
``facebook/DiT-*`` weights, which were converted from the official ones). See
:func:`set_timestep_embedding`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
    "load_dit",
    "save_dit_safetensors",
    "convert_official_dit_state_dict",
    "infer_official_dit_config",
    "infer_diffusers_dit_config",
    "set_timestep_embedding",
    "get_timestep_embedding_mode",
    "detect_layout",
    "heads_for_hidden_size",
    "CheckpointNotAvailableError",
    "OFFICIAL_HEADS",
]

#: Published DiT widths and their head counts (S, B, L, XL).
OFFICIAL_HEADS: dict[int, int] = {384: 6, 768: 12, 1024: 16, 1152: 16}

#: Official DiT's timestep frequency-embedding width (diffusers hard-codes the same 256).
FREQUENCY_EMBEDDING_SIZE = 256

#: Keys under which training checkpoints nest the weights, in order of preference.
NESTED_KEYS = ("ema", "model", "state_dict", "module")

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)

#: safetensors metadata written by :func:`save_dit_safetensors`.
META_CONFIG = "tstitch_dit_config"
META_TIMESTEP = "tstitch_timestep_embedding"
META_LAYOUT = "tstitch_layout"

DIT_CLASS_NAMES = ("DiTTransformer2DModel", "Transformer2DModel")

TimestepEmbedding = Literal["auto", "official", "diffusers"]
_MODE_ATTR = "_tstitch_timestep_embedding"


class CheckpointNotAvailableError(FileNotFoundError):
    """A hub model or file is not available (offline and not cached, or not found on the hub)."""


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


def _shape(sd: Mapping[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"{where}: missing key {key!r}")
    return tuple(sd[key].shape)


def _count_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    indices = {int(m.group(1)) for k in sd for m in [pattern.match(k)] if m}
    if not indices:
        return 0
    depth = max(indices) + 1
    missing = sorted(set(range(depth)) - indices)
    if missing:
        raise ValueError(f"blocks {missing} are missing (found blocks up to {depth - 1})")
    return depth


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
    hidden, in_channels, patch, patch_w = _shape(sd, "x_embedder.proj.weight", where)
    if patch != patch_w:
        raise ValueError(f"{where}: non-square patches ({patch}x{patch_w}) are not supported")
    try:
        depth = _count_blocks(sd, "blocks.")
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if depth == 0:
        raise ValueError(f"{where}: no transformer blocks (keys 'blocks.<i>.*')")
    out_features = _shape(sd, "final_layer.linear.weight", where)[0]
    if out_features % (patch * patch):
        raise ValueError(f"{where}: final projection width {out_features} is not a multiple of patch^2")
    out_channels = out_features // (patch * patch)
    table_rows = _shape(sd, "y_embedder.embedding_table.weight", where)[0]
    freq = _shape(sd, "t_embedder.mlp.0.weight", where)[1]
    if freq != FREQUENCY_EMBEDDING_SIZE:
        raise ValueError(
            f"{where}: timestep frequency embedding is {freq} wide; diffusers' DiT only supports "
            f"{FREQUENCY_EMBEDDING_SIZE}"
        )
    _check_mlp_ratio(hidden, _shape(sd, "blocks.0.mlp.fc1.weight", where)[0], where)
    if sample_size is None:
        if "pos_embed" not in sd:
            raise ValueError(f"{where}: no 'pos_embed' to read the latent size from; pass sample_size")
        sample_size = _latent_size_from_tokens(sd["pos_embed"].shape[-2], patch, where)
    heads = num_attention_heads or heads_for_hidden_size(hidden)
    if hidden % heads:
        raise ValueError(f"{where}: hidden size {hidden} is not divisible by {heads} heads")
    return _config(
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
    hidden, in_channels, patch, patch_w = _shape(sd, "pos_embed.proj.weight", where)
    if patch != patch_w:
        raise ValueError(f"{where}: non-square patches ({patch}x{patch_w}) are not supported")
    try:
        depth = _count_blocks(sd, "transformer_blocks.")
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if depth == 0:
        raise ValueError(f"{where}: no transformer blocks (keys 'transformer_blocks.<i>.*')")
    out_channels = _shape(sd, "proj_out_2.weight", where)[0] // (patch * patch)
    table_rows = _shape(sd, "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight", where)[0]
    _check_mlp_ratio(hidden, _shape(sd, "transformer_blocks.0.ff.net.0.proj.weight", where)[0], where)
    if sample_size is None:
        raise ValueError(
            f"{where}: diffusers-layout weights do not record the latent size; pass sample_size= or keep the "
            "model's config.json beside the weights (a diffusers folder)"
        )
    heads = num_attention_heads or heads_for_hidden_size(hidden)
    if hidden % heads:
        raise ValueError(f"{where}: hidden size {hidden} is not divisible by {heads} heads")
    config = _config(
        heads, hidden // heads, in_channels, out_channels, depth, sample_size, patch, table_rows - 1
    )
    config["norm_eps"] = 1e-5  # unknown origin: keep diffusers' default
    return config


def _config(
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


def _some(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


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
        raise ValueError(f"{where}: missing keys of the official DiT layout: {_some(missing)}")
    unexpected = sorted(set(sd) - set(expected) - {"pos_embed"})
    if unexpected:
        raise ValueError(
            f"{where}: unexpected keys for an official DiT with {depth} blocks: {_some(unexpected)}"
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


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _unnest(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: the dict itself, or the one under ``ema`` / ``model`` / ..."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if _is_tensor_dict(obj):
            sd = dict(obj)
            if all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
                sd = {k[len("module.") :]: v for k, v in sd.items()}
            return sd
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
            if tensors and any(k in tensors for k in ("x_embedder.proj.weight", "pos_embed.proj.weight")):
                return tensors  # weights next to non-tensor entries (e.g. a step counter)
            break
    keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
        f"{where}: no state dict found (expected a dict of tensors, possibly under one of "
        f"{', '.join(NESTED_KEYS)}); top-level entries: {keys}"
    )


# -- reading files -----------------------------------------------------------------------------------------


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        safe = [argparse.Namespace]  # training checkpoints carry their argparse arguments
        with torch.serialization.safe_globals(safe):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise ValueError(
                f"{path}: the checkpoint holds Python objects that safe loading (weights_only=True) refuses; "
                f"re-save just the state dict. ({str(error).splitlines()[0]})"
            ) from error
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {error}"
        ) from error
    except Exception as error:  # zip, EOF and unpickling errors all mean the same here
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {error}"
        ) from error
    return _unnest(obj, str(path))


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise ValueError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error
    if not tensors:
        raise ValueError(f"{path}: the safetensors file holds no tensors")
    return tensors, metadata


def _config_from_metadata(metadata: Mapping[str, str]) -> dict[str, Any] | None:
    for key in (META_CONFIG, "config"):  # "config": the embedded zoo's files
        if key in metadata:
            try:
                config = json.loads(metadata[key])
            except json.JSONDecodeError:
                continue
            if isinstance(config, dict) and "num_layers" in config:
                return config
    return None


def _config_beside(path: Path) -> dict[str, Any] | None:
    candidate = path.parent / "config.json"
    if candidate.is_file():
        try:
            config = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if isinstance(config, dict) and config.get("_class_name") in DIT_CLASS_NAMES:
            return config
    return None


def _init_args(config: Mapping[str, Any]) -> dict[str, Any]:
    import inspect

    from diffusers import DiTTransformer2DModel

    allowed = set(inspect.signature(DiTTransformer2DModel.__init__).parameters) - {"self"}
    return {k: v for k, v in config.items() if k in allowed}


def _build(config: Mapping[str, Any], sd: Mapping[str, torch.Tensor], where: str):
    from diffusers import DiTTransformer2DModel

    with torch.random.fork_rng(devices=[]):  # building must not move the caller's random state
        model = DiTTransformer2DModel(**_init_args(config))
    result = model.load_state_dict(dict(sd), strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append("missing " + ", ".join(result.missing_keys[:8]))
        if result.unexpected_keys:
            parts.append("unexpected " + ", ".join(result.unexpected_keys[:8]))
        raise ValueError(f"{where}: weights do not fit a DiTTransformer2DModel ({'; '.join(parts)})")
    return model


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


def _model_from_state_dict(
    sd: dict[str, torch.Tensor],
    where: str,
    *,
    config: dict[str, Any] | None,
    sample_size: int | None,
    num_attention_heads: int | None,
):
    """The model and the timestep-embedding mode its layout implies."""
    layout = detect_layout(sd)
    if layout == "official":
        config, converted = convert_official_dit_state_dict(
            sd, sample_size=sample_size, num_attention_heads=num_attention_heads, where=where
        )
        model = _build(config, converted, where)
        with torch.no_grad():
            _check_pos_embed(model, sd, where)
        return model, "official"
    if config is None:
        config = infer_diffusers_dit_config(
            sd, sample_size=sample_size, num_attention_heads=num_attention_heads, where=where
        )
    return _build(config, sd, where), "diffusers"


# -- timestep embedding ------------------------------------------------------------------------------------


def set_timestep_embedding(model: Any, mode: Literal["official", "diffusers"]) -> Any:
    """Switch a ``DiTTransformer2DModel`` between official DiT and diffusers numerics, in place.

    ``"official"``: timestep frequencies ``exp(-ln(10000) * i / 128)`` and LayerNorm eps ``1e-6`` before
    the MLP, as in the official DiT code. ``"diffusers"``: frequencies divided by 127 and the config's
    ``norm_eps``, as diffusers builds the model. Returns ``model``.
    """
    if mode not in ("official", "diffusers"):
        raise ValueError(f"timestep embedding must be 'official' or 'diffusers', got {mode!r}")
    shift = 0 if mode == "official" else 1
    eps = 1e-6 if mode == "official" else model.config.get("norm_eps", 1e-5)
    for block in model.transformer_blocks:
        emb = getattr(block.norm1, "emb", None)
        if emb is not None and hasattr(emb, "time_proj"):
            emb.time_proj.downscale_freq_shift = shift
        norm3 = getattr(block, "norm3", None)
        if isinstance(norm3, torch.nn.LayerNorm):
            norm3.eps = eps
    setattr(model, _MODE_ATTR, mode)
    return model


def get_timestep_embedding_mode(model: Any) -> Literal["official", "diffusers"]:
    """``"official"`` or ``"diffusers"``: how the model's timestep features are computed now."""
    for block in model.transformer_blocks:
        emb = getattr(block.norm1, "emb", None)
        if emb is not None and hasattr(emb, "time_proj"):
            return "official" if emb.time_proj.downscale_freq_shift == 0 else "diffusers"
    return "diffusers"


# -- public loading / saving -------------------------------------------------------------------------------


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:  # pragma: no cover
        return False


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REPO_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.(?:pt|pth|bin|ckpt|safetensors))$")


def _not_available(repo_id: str, filename: str | None, offline: bool, error: BaseException | None):
    what = f"{repo_id!r}" + (f" (file {filename!r})" if filename else "")
    detail = str(error).splitlines()[0] if error is not None and str(error) else ""
    reason = (
        "offline (HF_HUB_OFFLINE=1 or local_files_only=True) and not in the local Hugging Face cache"
        if offline
        else f"it could not be fetched ({type(error).__name__}: {detail})"
    )
    return CheckpointNotAvailableError(
        f"DiT checkpoint {what} is not available: {reason}. Download it once with network access "
        f"(e.g. `huggingface-cli download {repo_id}`) or pass a local path instead: an official "
        ".pt/.pth/.safetensors state dict or a diffusers model/pipeline folder."
    )


def _load_folder(folder: Path, subfolder: str | None, dtype: torch.dtype):
    from diffusers import DiTTransformer2DModel

    candidates = [subfolder] if subfolder else [None, "transformer"]
    for sub in candidates:
        config_path = folder / sub / "config.json" if sub else folder / "config.json"
        if not config_path.is_file():
            continue
        try:
            class_name = json.loads(config_path.read_text()).get("_class_name")
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{config_path}: unreadable config ({error})") from error
        if class_name not in DIT_CLASS_NAMES:
            if sub is None and (folder / "transformer" / "config.json").is_file():
                continue
            raise ValueError(f"{config_path}: a {class_name}, not a DiT transformer")
        try:
            return DiTTransformer2DModel.from_pretrained(
                str(folder), subfolder=sub, local_files_only=True, torch_dtype=dtype
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{folder}: cannot load the diffusers DiT ({error})") from error
    raise ValueError(
        f"{folder}: not a diffusers DiT folder (no config.json of a DiTTransformer2DModel, nor transformer/"
        "config.json)"
    )


def _load_hub(repo_id: str, subfolder: str | None, dtype: torch.dtype, offline: bool):
    from diffusers import DiTTransformer2DModel

    last: BaseException | None = None
    for sub in [subfolder] if subfolder else ["transformer", None]:
        try:
            return DiTTransformer2DModel.from_pretrained(
                repo_id, subfolder=sub, local_files_only=offline, torch_dtype=dtype
            )
        except (OSError, ValueError) as error:  # EnvironmentError, EntryNotFound, offline cache misses
            last = error
    raise _not_available(repo_id, None, offline, last) from last


def _download_hub_file(repo_id: str, filename: str, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
    except Exception as error:
        raise _not_available(repo_id, filename, offline, error) from error


def _load_file(
    path: Path,
    *,
    sample_size: int | None,
    num_attention_heads: int | None,
):
    suffix = path.suffix.lower()
    config: dict[str, Any] | None = None
    mode_hint: str | None = None
    if suffix in SAFETENSORS_SUFFIXES:
        sd, metadata = _read_safetensors(path)
        config = _config_from_metadata(metadata)
        mode_hint = metadata.get(META_TIMESTEP)
    elif suffix in TORCH_SUFFIXES:
        sd = _read_torch(path)
    else:
        raise ValueError(
            f"{path}: unknown checkpoint type {suffix or '(no suffix)'}; expected .pt/.pth/.bin/.ckpt or "
            ".safetensors, or a diffusers folder"
        )
    if config is None and sample_size is None:
        config = _config_beside(path)
    if config is not None and sample_size is not None:
        config = {**config, "sample_size": sample_size}
    if config is not None and num_attention_heads is not None:
        hidden = config["num_attention_heads"] * config["attention_head_dim"]
        config = {
            **config,
            "num_attention_heads": num_attention_heads,
            "attention_head_dim": hidden // num_attention_heads,
        }
    model, mode = _model_from_state_dict(
        sd, str(path), config=config, sample_size=sample_size, num_attention_heads=num_attention_heads
    )
    if mode_hint in ("official", "diffusers"):
        mode = mode_hint
    return model, mode


def load_dit(
    source: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
    timestep_embedding: TimestepEmbedding = "auto",
    sample_size: int | None = None,
    num_attention_heads: int | None = None,
    subfolder: str | None = None,
):
    """Load a DiT from a file, folder or hub id as a ``DiTTransformer2DModel`` in eval mode.

    Args:
        source: an official state dict (``.pt``/``.pth``/``.bin``/``.ckpt``, plain or nested under ``ema``
            / ``model`` / ``state_dict`` / ``module``), a ``.safetensors`` file (official or diffusers keys),
            a local diffusers folder (model folder or pipeline folder with ``transformer/``), a hub id
            ``owner/name`` or a hub file ``owner/name/path/to/file.pt``.
        device, dtype: where and in which precision the model is returned.
        local_files_only: do not use the network for hub sources; ``None`` follows ``HF_HUB_OFFLINE``.
        timestep_embedding: ``"official"`` or ``"diffusers"`` numerics (see :func:`set_timestep_embedding`);
            ``"auto"`` picks official for official-layout weights and for files saved by
            :func:`save_dit_safetensors` from such a model, diffusers otherwise.
        sample_size: latent size, needed only for diffusers-layout files without a config (or to override).
        num_attention_heads: override the head count inferred from the hidden size (file sources).
        subfolder: the model's subfolder in a pipeline folder or hub repository (default: ``transformer``
            when the root holds no model).

    Raises:
        FileNotFoundError: a local path that does not exist (:class:`CheckpointNotAvailableError`, a
            subclass, for hub sources not available offline or not on the hub).
        ValueError: unreadable, truncated or corrupt files, unknown layouts, missing or unexpected keys,
            architectures diffusers' DiT cannot express.
    """
    if timestep_embedding not in ("auto", "official", "diffusers"):
        raise ValueError(
            f"timestep_embedding must be 'auto', 'official' or 'diffusers', got {timestep_embedding!r}"
        )
    text = os.fspath(source)
    path = Path(text).expanduser()
    offline = _offline(local_files_only)
    if path.is_dir():
        model, mode = _load_folder(path, subfolder, dtype), "diffusers"
    elif path.is_file():
        model, mode = _load_file(path, sample_size=sample_size, num_attention_heads=num_attention_heads)
    elif _REPO_FILE.match(text) and not text.startswith((".", "/", "~")):
        repo_id, filename = _REPO_FILE.match(text).groups()
        local = _download_hub_file(repo_id, filename, offline)
        model, mode = _load_file(local, sample_size=sample_size, num_attention_heads=num_attention_heads)
    elif _REPO_ID.match(text) and not text.startswith((".", "/", "~")):
        model, mode = _load_hub(text, subfolder, dtype, offline), "diffusers"
    else:
        raise FileNotFoundError(
            f"DiT checkpoint {text!r} not found: no such file or folder (and not a hub id 'owner/name')"
        )
    set_timestep_embedding(model, mode if timestep_embedding == "auto" else timestep_embedding)
    if model.dtype != dtype:
        model = model.to(dtype=dtype)
    return model.to(device=device).eval()


def save_dit_safetensors(model: Any, path: str | os.PathLike) -> Path:
    """Write a ``DiTTransformer2DModel``'s weights (diffusers layout) to ``path`` atomically.

    The file's metadata records the model config and its timestep-embedding mode, so :func:`load_dit`
    rebuilds the same model from the file alone. The write goes to a temporary file in the same folder,
    renamed over ``path`` at the end: readers never see half a file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    metadata = {
        "format": "pt",
        META_LAYOUT: "diffusers",
        META_CONFIG: json.dumps(config, sort_keys=True),
        META_TIMESTEP: get_timestep_embedding_mode(model),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
