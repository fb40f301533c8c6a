# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Load DiT checkpoints of any common kind as a diffusers ``DiTTransformer2DModel``.

Accepted sources (see :func:`load_dit`):

* an official DiT / T-Stitch state dict (``.pt`` / ``.pth`` / ``.bin``), plain or nested under ``ema``,
  ``model``, ``state_dict`` or ``module`` (``ema`` is preferred, as the published samplers do);
* a ``.safetensors`` file with official DiT keys or diffusers keys;
* a local diffusers folder (a ``DiTTransformer2DModel`` folder, or a pipeline folder with ``transformer/``);
* a Hugging Face hub id (``owner/name``, loaded with diffusers' ``from_pretrained``) or a file in a hub
  repository (``owner/name/path/file.pt``), honouring ``HF_HUB_OFFLINE`` / ``local_files_only``.

The architecture is read from the weight shapes, never from the file name
(:mod:`tstitch.models.dit_layout` says how; the head count comes from the published sizes or
``num_attention_heads``). This module reads the sources (files safely, through :mod:`tstitch.models.weights`);
:mod:`tstitch.models.dit_build` builds the model from a file's state dict.

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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from ..outputs import path_problem
from ..sampling.checks import check_device, check_positive_int
from ..utils import atomic_write
from .checks import check_dtype, check_finite_weights
from .dit_build import check_sample_size, model_from_state_dict
from .hub import REPO_FILE, REPO_ID, CheckpointNotAvailableError, download_hub_file, not_available, offline_mode
from .weights import read_safetensors, read_torch_file

__all__ = [
    "load_dit",
    "save_dit_safetensors",
    "set_timestep_embedding",
    "get_timestep_embedding_mode",
    "CheckpointNotAvailableError",
    "DIT_CLASS_NAMES",
]

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


# -- reading files -----------------------------------------------------------------------------------------


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


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    # training checkpoints carry their argparse arguments
    return _unnest(read_torch_file(path, safe_globals=[argparse.Namespace]), str(path))


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
    raise not_available(repo_id, None, offline, last) from last


def _load_file(
    path: Path,
    *,
    sample_size: int | None,
    num_attention_heads: int | None,
):
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the checkpoint file is empty (0 bytes; an interrupted download?)")
    config: dict[str, Any] | None = None
    mode_hint: str | None = None
    if suffix in SAFETENSORS_SUFFIXES:
        sd, metadata = read_safetensors(path)
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
        if hidden % num_attention_heads:
            raise ValueError(f"{path}: num_attention_heads={num_attention_heads} does not divide the hidden size "
                             f"{hidden}")
        config = {
            **config,
            "num_attention_heads": num_attention_heads,
            "attention_head_dim": hidden // num_attention_heads,
        }
    model, mode = model_from_state_dict(
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
        ValueError: unreadable, truncated, empty or corrupt files, pickles holding code, unknown layouts,
            missing or unexpected keys, tensors of the wrong shape, non-finite (NaN / inf) weights,
            architectures diffusers' DiT cannot express, a device this machine does not have, a dtype that is
            not floating point.
    """
    if timestep_embedding not in ("auto", "official", "diffusers"):
        raise ValueError(
            f"timestep_embedding must be 'auto', 'official' or 'diffusers', got {timestep_embedding!r}"
        )
    device = check_device(device)
    dtype = check_dtype(dtype)
    if sample_size is not None:
        check_positive_int(sample_size, "sample_size")
        check_sample_size(sample_size, "load_dit's")
    if num_attention_heads is not None:
        check_positive_int(num_attention_heads, "num_attention_heads")
    text = os.fspath(source)
    path = Path(text).expanduser()
    offline = offline_mode(local_files_only)
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(f"DiT checkpoint {problem}")
    if path.exists() and not (path.is_dir() or path.is_file()):
        raise ValueError(f"DiT checkpoint {text!r} is not a plain file (a FIFO, a device ...): give a checkpoint "
                         "file, a diffusers folder or a hub id")
    if path.is_dir():
        model, mode = _load_folder(path, subfolder, dtype), "diffusers"
    elif path.is_file():
        model, mode = _load_file(path, sample_size=sample_size, num_attention_heads=num_attention_heads)
    elif REPO_FILE.match(text) and not text.startswith((".", "/", "~")):
        repo_id, filename = REPO_FILE.match(text).groups()
        local = download_hub_file(repo_id, filename, offline)
        model, mode = _load_file(local, sample_size=sample_size, num_attention_heads=num_attention_heads)
    elif REPO_ID.match(text) and not text.startswith((".", "/", "~")):
        model, mode = _load_hub(text, subfolder, dtype, offline), "diffusers"
    else:
        raise FileNotFoundError(
            f"DiT checkpoint {text!r} not found: no such file or folder (and not a hub id 'owner/name')"
        )
    check_finite_weights(model, text)
    patch, size = model.config.get("patch_size"), model.config.get("sample_size")
    if patch and size and size % patch:
        raise ValueError(f"{text}: sample_size {size} is not a multiple of the patch size {patch}")
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
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
