# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The embedded model family: class-conditional DiTs of three sizes and a U-Net pair, trained on the 8x8 digits.

All three use diffusers' ``DiTTransformer2DModel`` (1 channel, 8x8, patch 2 = 16 tokens, 10 classes plus
the null class, epsilon prediction, no learned sigma), the same data and the same noise schedule (linear
betas 1e-4..0.02 over 1,000 steps), so they share one trajectory space. Their compute per step is in the
ratio 1 : 4 : 18 (layers x width^2), in the spirit of DiT-S / DiT-B / DiT-XL. The U-Net pair
``digits-unet-s`` / ``digits-unet`` (:mod:`tstitch.zoo.unet`) mirrors the published LDM-S / LDM pair: each
embeds the labels into a cross-attention context of its own width (32 and 64), on the same data and schedule.

Weights ship in ``zoo/weights`` as float16 safetensors (loaded as float32) with the model config in the
file's metadata, so loading needs no network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..utils import atomic_write
from .classifier import DigitsClassifier
from .data import IMAGE_SIZE, NUM_CLASSES
from .unet import UNetSpec, build_unet

__all__ = [
    "FAMILY",
    "DIGITS_DIT",
    "DIGITS_UNET",
    "ModelSpec",
    "UNetSpec",
    "build_model",
    "load_model",
    "load_family",
    "load_classifier",
    "save_weights",
    "weights_dir",
    "scheduler_config",
]

#: Where the shipped weights live; ``TSTITCH_ZOO_DIR`` overrides it (``train-zoo --out`` writes there).
DEFAULT_WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    train_steps: int

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def relative_compute(self) -> float:
        """Per-step compute relative to ``digits-s`` (layers x width^2)."""
        small = FAMILY["digits-s"]
        return (self.num_layers * self.hidden_size**2) / (small.num_layers * small.hidden_size**2)

    def config(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "attention_head_dim": self.attention_head_dim,
            "in_channels": 1,
            "out_channels": 1,
            "sample_size": IMAGE_SIZE,
            "patch_size": 2,
            "num_embeds_ada_norm": NUM_CLASSES,
        }


#: The family: the DiTs smallest first (the large one trains longer so that it is not the bottleneck), then
#: the U-Net pair, small first (both with the same steps).
FAMILY: dict[str, ModelSpec | UNetSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("digits-s", num_layers=4, num_attention_heads=2, attention_head_dim=32, train_steps=3000),
        ModelSpec("digits-b", num_layers=4, num_attention_heads=4, attention_head_dim=32, train_steps=3000),
        ModelSpec("digits-xl", num_layers=8, num_attention_heads=4, attention_head_dim=48, train_steps=5000),
        UNetSpec("digits-unet-s", block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32,
                 attention_heads=(1, 1), norm_num_groups=8, train_steps=1500),
        UNetSpec("digits-unet", block_out_channels=(64, 128), layers_per_block=1, cross_attention_dim=64,
                 attention_heads=(2, 4), norm_num_groups=16, train_steps=1500),
    )
}
#: The DiT members (the default of :func:`load_family`) and the U-Net pair, smallest first.
DIGITS_DIT = ("digits-s", "digits-b", "digits-xl")
DIGITS_UNET = ("digits-unet-s", "digits-unet")
CLASSIFIER_NAME = "digits-classifier"


def scheduler_config() -> dict[str, Any]:
    """The noise schedule every member of the family was trained with (diffusers scheduler config)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
        "clip_sample": False,
    }


def weights_dir(path: str | os.PathLike | None = None) -> Path:
    if path is not None:
        return Path(path)
    return Path(os.environ.get("TSTITCH_ZOO_DIR", DEFAULT_WEIGHTS_DIR))


def _check_name(name: str) -> ModelSpec | UNetSpec:
    if name not in FAMILY:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(FAMILY)}")
    return FAMILY[name]


def build_model(name: str, seed: int | None = None):
    """A freshly initialised member of the family (``DiTTransformer2DModel`` or :class:`~.unet.DigitsUNet`)."""
    from diffusers import DiTTransformer2DModel

    spec = _check_name(name)
    if seed is not None:
        torch.manual_seed(seed)
    model = build_unet(spec) if isinstance(spec, UNetSpec) else DiTTransformer2DModel(**spec.config())
    model._tstitch_name = name
    return model


def save_weights(module: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write ``module``'s weights as float16 safetensors, atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in module.state_dict().items()}
    encoded = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=encoded))


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded weights {path} are missing; run `tstitch train-zoo` to train them, or set TSTITCH_ZOO_DIR"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"embedded weights {path} are corrupted or truncated ({error})") from error
    return {k: v.float() for k, v in tensors.items()}, metadata


def _load_into(module: torch.nn.Module, path: Path) -> dict[str, Any]:
    tensors, metadata = _read(path)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise ValueError(f"embedded weights {path} do not fit the model: {error}") from error
    return metadata


def load_model(name: str, directory: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """One trained member of the family, in eval mode, float32."""
    _check_name(name)
    model = build_model(name)
    _load_into(model, weights_dir(directory) / f"{name}.safetensors")
    return model.to(device).eval().requires_grad_(False)


def load_family(
    names: list[str] | None = None,
    directory: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The trained models by name, in the order given (default: the DiTs, :data:`DIGITS_DIT`).

    ``load_family(list(DIGITS_UNET))`` gives the U-Net pair.
    """
    names = list(DIGITS_DIT) if names is None else list(names)
    for name in names:
        _check_name(name)
    return {name: load_model(name, directory, device) for name in names}


def load_classifier(directory: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """The digits classifier that defines digits-FID and accuracy, in eval mode."""
    model = DigitsClassifier(NUM_CLASSES)
    _load_into(model, weights_dir(directory) / f"{CLASSIFIER_NAME}.safetensors")
    return model.to(device).eval().requires_grad_(False)
