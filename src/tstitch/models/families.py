# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The model-family registry: how each family is recognised, loaded, called, and its latents decoded.

A new family is one row of :data:`FAMILIES`; ``tests/test_registries.py`` loads, calls and decodes every
row with a tiny model. Loading (:mod:`tstitch.models.loading`), ``--model`` detection and the loaded
models' decoding go through this table only.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import zoo
from ..sampling.checks import check_positive_int
from ..sampling.guidance import unwrap_output
from ..sampling.ldm_models import ClassConditionedUNet
from ..sampling.ldm_official import ddim_scheduler_config, sample_ldm_wrapped
from ..sampling.official import sample_official
from ..stitcher import DENOISER_NAMES
from .checkpoints import load_dit
from .hub import not_fetched
from .ldm_checkpoints import load_ldm_checkpoint

__all__ = ["Family", "FAMILIES", "family_of_name", "family_of_class", "embedded_models", "denoiser_of",
           "class_call", "text_call", "decode_pixels", "decode_with_vae", "decode_vq", "official_sampler",
           "load_pipeline"]


def class_call(model: Any, x: torch.Tensor, timestep: torch.Tensor, condition: Any) -> torch.Tensor:
    """A class-conditional denoiser call (DiT's convention): ``model(x, timestep=t, class_labels=y)``."""
    return unwrap_output(model(x, timestep=timestep, class_labels=condition))


def text_call(model: Any, x: torch.Tensor, timestep: torch.Tensor, condition: Any) -> torch.Tensor:
    """A text-conditional U-Net / transformer call: ``model(x, t, encoder_hidden_states=embeddings)``."""
    return unwrap_output(model(x, timestep, encoder_hidden_states=condition))


def _unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()


def decode_pixels(latents: torch.Tensor, vae: Any, latent_scale: float, batch_size: int) -> torch.Tensor:
    """Latents that are the pixels in ``[-1, 1]``: images in ``[0, 1]``, float32 on the CPU."""
    return _unit(latents)


@torch.no_grad()
def decode_with_vae(latents: torch.Tensor, vae: Any, latent_scale: float, batch_size: int) -> torch.Tensor:
    """``vae.decode(latents / latent_scale)`` in batches: images in ``[0, 1]``, float32 on the CPU (the
    latents are the pixels when there is no VAE)."""
    if vae is None:
        return _unit(latents)
    batch_size = check_positive_int(batch_size, "batch_size")
    images = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size].to(vae.device, vae.dtype) / latent_scale
        images.append(_unit(vae.decode(chunk).sample))
    return torch.cat(images)


@torch.no_grad()
def decode_vq(latents: torch.Tensor, vae: Any, latent_scale: float, batch_size: int) -> torch.Tensor:
    """A VQ first stage's ``decode`` (quantizing first; the LDM latents are unscaled): images in ``[0, 1]``."""
    return torch.cat([_unit(vae.decode(latents[i : i + batch_size].to(vae.device, vae.dtype)).sample)
                      for i in range(0, len(latents), batch_size)])


def denoiser_of(pipe: Any) -> tuple[str, nn.Module]:
    """The pipeline attribute holding its denoiser, and that module (a ``StitchedDenoiser`` once stitched),
    looked up in :data:`tstitch.stitcher.DENOISER_NAMES` order: the one lookup outside the stitcher."""
    for name in DENOISER_NAMES:
        model = getattr(pipe, name, None)
        if isinstance(model, nn.Module):
            return name, model
    raise ValueError(f"{type(pipe).__name__} has no denoiser to stitch: expected a torch module in one of the "
                     f"attributes {', '.join(DENOISER_NAMES)}")


def _itself(model: nn.Module) -> nn.Module:
    return model


def _wrapped_denoiser(model: nn.Module) -> nn.Module:
    """The denoiser a wrapper names by ``denoiser_module`` (the U-Net inside a U-Net + class-embedder
    ``ClassConditionedUNet``), else the model itself (the digits DiTs): the attribute caching reads too."""
    inner = getattr(model, "denoiser_module", None)
    return inner if isinstance(inner, nn.Module) else model


def _digits_members() -> Collection[str]:
    return zoo.FAMILY


def _digits_load(source: str, *, device: torch.device, dtype: torch.dtype, **_: Any) -> nn.Module:
    model = zoo.load_model(source, device=device)
    return model if next(model.parameters()).dtype == dtype else model.to(dtype=dtype)


def _dit_load(source: str, *, device: torch.device, dtype: torch.dtype, offline: bool = False,
              timestep_embedding: str = "auto", subfolder: str | None = None, **_: Any) -> nn.Module:
    return load_dit(source, device=device, dtype=dtype, local_files_only=offline,
                    timestep_embedding=timestep_embedding, subfolder=subfolder)


def load_pipeline(target: str, offline: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """A diffusers pipeline from a folder or hub id (``ValueError`` / :class:`CheckpointNotAvailableError`)."""
    from diffusers import DiffusionPipeline

    if importlib.util.find_spec("transformers") is None:
        raise ValueError(
            f"{target}: text-to-image pipelines need the transformers package for their text encoders "
            "(pip install transformers)"
        )

    try:
        pipe = DiffusionPipeline.from_pretrained(target, local_files_only=offline, torch_dtype=dtype)
    except (OSError, ValueError) as error:
        if Path(target).exists():
            raise ValueError(f"{target}: cannot load a diffusers pipeline ({error})") from error
        raise not_fetched(target, error) from error
    return pipe.to(device)


def _pipeline_load(source: str, *, device: torch.device, dtype: torch.dtype, offline: bool = False,
                   **_: Any) -> Any:
    return load_pipeline(source, offline, device, dtype)


def _ldm_load(source: str, *, device: torch.device, dtype: torch.dtype, **_: Any) -> nn.Module:
    parts = load_ldm_checkpoint(source, load_first_stage=False, device=device, dtype=dtype)
    if parts.embedder is None:
        raise ValueError(f"{source}: no class embedder (cond_stage_model.embedding.weight): not a class-conditional "
                         "LDM")
    return ClassConditionedUNet(parts.unet, parts.embedder).eval()


def _ldm_schedule() -> dict[str, Any]:
    return ddim_scheduler_config()  # CompVis "linear" betas, as diffusers' scaled_linear


def _ldm_official(unconditional: str) -> Callable[..., Any]:
    return functools.partial(sample_ldm_wrapped, unconditional=unconditional)


def _linear_schedule() -> dict[str, Any]:
    return zoo.scheduler_config()  # DiT's linear betas, which the digits family was trained with too


@dataclass(frozen=True)
class Family:
    """One row of :data:`FAMILIES`.

    Attributes:
        name, description: for messages and ``--help``.
        kind: ``"class"`` (bare class-conditional denoisers sampled by the one loop) or ``"pipeline"`` (a
            diffusers pipeline stitched in place).
        load: ``(source, *, device, dtype, offline, **options) -> model or pipeline``.
        call: ``(model, x, timestep, condition) -> prediction``: one denoiser call.
        decode: ``(latents, vae, latent_scale, batch_size) -> images`` in ``[0, 1]`` on the CPU.
        members: names loaded with no file at all (embedded models).
        class_names: the diffusers ``_class_name`` values of configs that belong to the family.
        noise_schedule: the scheduler config the family was trained with (None: the pipeline's own).
        official: ``mode -> sampler`` for the published sampler of the family (``--mode official``), called
            like :func:`tstitch.sampling.official.sample_official`; ``None``: the published DiT sampler.
        inner_denoiser: ``model -> module``: the denoiser inside a loaded model (what feature caches hook);
            the model itself unless the family wraps it (:func:`tstitch.caching.base.inner_denoiser`).
    """

    name: str
    description: str
    kind: Literal["class", "pipeline"]
    load: Callable[..., Any]
    call: Callable[..., torch.Tensor]
    decode: Callable[..., torch.Tensor]
    members: Callable[[], Collection[str]] = tuple
    class_names: tuple[str, ...] = field(default_factory=tuple)
    noise_schedule: Callable[[], dict[str, Any]] | None = None
    official: Callable[[str], Callable[..., Any]] | None = None
    inner_denoiser: Callable[[nn.Module], nn.Module] = _itself


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("digits", "the embedded 8x8 digits DiTs (pixels as latents; shipped weights)", "class",
               load=_digits_load, call=class_call, decode=decode_pixels, members=_digits_members,
               noise_schedule=_linear_schedule, inner_denoiser=_wrapped_denoiser),
        Family("dit", "class-conditional DiTs (official .pt/.safetensors, diffusers folders, hub ids; a VAE)",
               "class", load=_dit_load, call=class_call, decode=decode_with_vae,
               class_names=("DiTPipeline", "DiTTransformer2DModel", "Transformer2DModel"),
               noise_schedule=_linear_schedule),
        Family("ldm", "CompVis class-conditional LDMs (.ckpt: U-Net + own class embedder; a VQ first stage)",
               "class", load=_ldm_load, call=class_call, decode=decode_vq, noise_schedule=_ldm_schedule,
               official=_ldm_official, inner_denoiser=_wrapped_denoiser),
        Family("diffusers-pipeline", "diffusers text-to-image pipelines (U-Net or transformer denoisers)",
               "pipeline", load=_pipeline_load, call=text_call, decode=decode_with_vae),
    )
}


def family_of_name(source: str) -> Family | None:
    """The family that has ``source`` as an embedded member, if any."""
    return next((f for f in FAMILIES.values() if source in f.members()), None)


def family_of_class(class_name: str) -> Family | None:
    """The family whose configs carry ``_class_name == class_name``, if any."""
    return next((f for f in FAMILIES.values() if class_name in f.class_names), None)


def embedded_models() -> list[str]:
    """Every embedded model name of every family (loaded with no file)."""
    return [name for family in FAMILIES.values() for name in family.members()]


def official_sampler(family: str, mode: str) -> Callable[..., Any]:
    """The published sampler of ``family`` for ``mode`` (``official``; ``official-zeros``: the LDM sampler with
    zero unconditional contexts), called like :func:`tstitch.sampling.official.sample_official`."""
    row = FAMILIES[family]
    if row.official is not None:
        return row.official("zeros" if mode == "official-zeros" else "random")
    if mode != "official":
        raise ValueError(f"mode {mode!r} is for the LDM family; the {family} family has mode official")
    return sample_official
