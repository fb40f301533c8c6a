# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Loading a preset, or any models named by path, hub id or embedded name, ready to sample.

:func:`load_preset` loads a row of :data:`~tstitch.models.presets.PRESETS`; :func:`load_models` loads models
named by path or hub id (``tstitch sample --model``). Both return a
:class:`~tstitch.models.loaded.ClassConditionalModels` (DiTs, the digits family) or a
:class:`~tstitch.models.loaded.StitchedPipeline` (Stable Diffusion, SDXL), ready for
:func:`tstitch.experiments.generate.generate`. Each model is loaded by its row of
:data:`~tstitch.models.families.FAMILIES`; every source is checked before anything is loaded (what a ``--model``
source holds is read by :mod:`tstitch.models.kinds`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch

from ..sampling.official import SAMPLERS
from ..sampling.schedulers import SCHEDULERS
from ..stitcher import check_compatible, stitch
from .availability import check_available, checkpoint_dirs, find_file
from .checks import check_device, check_dtype, check_finite_weights
from .families import FAMILIES, Family, denoiser_of, family_of_name, load_pipeline
from .hub import CheckpointNotAvailableError, hub_cached, not_fetched, offline_mode
from .kinds import detect_kind
from .ldm_checkpoints import load_vq_first_stage
from .loaded import ClassConditionalModels, SamplingDefaults, StitchedPipeline, check_controlnet_layout
from .presets import (
    DIT_LATENT_SCALE,
    DIT_VAE_SOURCE,
    PRESETS,
    ModelSource,
    Preset,
    get_preset,
)

logger = logging.getLogger(__name__)

__all__ = ["load_preset", "load_models", "load_pipeline", "check_preset", "CheckpointNotAvailableError"]


# -- resolving sources -------------------------------------------------------------------------------------


def _first_hub(source: ModelSource, offline: bool) -> str:
    if offline:
        for repo_id in source.hub:
            if hub_cached(repo_id):
                return repo_id
    return source.hub[0]


# -- loading -----------------------------------------------------------------------------------------------


def _default_dtype(kind: str, device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float16 if kind == "pipeline" and device.type == "cuda" else torch.float32


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return model if next(model.parameters()).dtype == dtype else model.to(dtype=dtype)


def _load_class_model(source: ModelSource | str, dirs: list[Path], offline: bool, device: torch.device,
                      dtype: torch.dtype, timestep_embedding: str, family_name: str | None = None,
                      ) -> tuple[torch.nn.Module, str, Family]:
    """A class-conditional model, its name and its family (an embedded member, else ``family_name``'s, else
    a DiT)."""
    name = source if isinstance(source, str) else source.zoo
    family = family_of_name(name) if name else None
    if family is not None:
        model = family.load(name, device=device, dtype=dtype)
        check_finite_weights(model, name)
        return model, name, family
    family = FAMILIES[family_name if family_name in FAMILIES else "dit"]
    if isinstance(source, str):
        model = family.load(source, device=device, dtype=dtype, offline=offline,
                            timestep_embedding=timestep_embedding)
        return model, Path(source).name if Path(source).exists() else source, family
    path = find_file(source, dirs)
    target = str(path) if path is not None else _first_hub(source, offline)
    logger.info("loading %s from %s", source.label, target)
    model = family.load(target, device=device, dtype=dtype, offline=offline, timestep_embedding=timestep_embedding,
                        subfolder=None if path else source.subfolder)
    return model, source.label.split(" (")[0], family


def _load_vae(source: ModelSource | str, offline: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    if isinstance(source, str) and source.endswith(".ckpt"):  # a CompVis first stage (vq-f8/model.ckpt)
        return load_vq_first_stage(source, device=device, dtype=dtype)
    if isinstance(source, str):
        path = Path(source).expanduser()
        target, subfolder = (str(path), None) if path.exists() else (source, None)
        if path.is_dir() and not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            subfolder = "vae"
    else:
        target, subfolder = _first_hub(source, offline), source.subfolder
    try:
        vae = AutoencoderKL.from_pretrained(target, subfolder=subfolder, local_files_only=offline, torch_dtype=dtype)
    except (OSError, ValueError) as error:
        if Path(target).exists():
            raise ValueError(f"{target}: cannot load a VAE ({error})") from error
        raise not_fetched(target, error) from error
    return vae.to(device).eval()


def _load_denoiser(target: str, subfolder: str | None, like: Any, attr: str, offline: bool, device: torch.device,
                   dtype: torch.dtype):
    """A denoiser of the large model's class from a model folder, a pipeline folder or a hub id."""
    cls = type(like)
    path = Path(target).expanduser()
    if subfolder is None and path.is_dir():
        subfolder = None if (path / "config.json").is_file() else attr
    candidates = [subfolder] if subfolder is not None or path.is_dir() else [attr, None]
    last: BaseException | None = None
    for sub in candidates:
        try:
            model = cls.from_pretrained(str(path) if path.is_dir() else target, subfolder=sub,
                                        local_files_only=offline, torch_dtype=dtype)
            return model.to(device).eval()
        except (OSError, ValueError) as error:
            last = error
    if path.exists():
        raise ValueError(f"{target}: cannot load a {cls.__name__} ({last})") from last
    raise not_fetched(target, last) from last


def _source_name(source: ModelSource | str) -> str:
    if isinstance(source, ModelSource):
        return source.zoo or source.label.split(" (")[0]
    return Path(source).name if Path(source).exists() else source


def _build(
    kind: str,
    sources: Sequence[ModelSource | str],
    *,
    label: str,
    defaults: SamplingDefaults,
    vae: ModelSource | str | None,
    latent_scale: float,
    timestep_embedding: str,
    device: str | torch.device,
    dtype: torch.dtype | None,
    local_files_only: bool | None,
    checkpoint_dir: str | os.PathLike | None,
    family_name: str | None = None,
):
    device = check_device(device)
    if dtype is not None:
        check_dtype(dtype)
    dtype = _default_dtype(kind, device, dtype)
    offline = offline_mode(local_files_only)
    dirs = checkpoint_dirs(checkpoint_dir)
    if len(sources) < 2:
        raise ValueError(f"stitching needs at least two models (smallest first), got {len(sources)}")
    positions = [f"--model #{i + 1}" for i in range(len(sources))]
    named = [(s, p) for s, p in zip(sources, positions, strict=True) if isinstance(s, ModelSource)]
    if isinstance(vae, ModelSource):
        named.append((vae, "--vae"))
    check_available(named, dirs, offline, f"{label} (offline)" if offline else label)

    if kind == "class":
        models, names, families = [], [], []
        for source in sources:
            model, name, family = _load_class_model(source, dirs, offline, device, dtype, timestep_embedding,
                                                    family_name=family_name)
            model.requires_grad_(False)
            model._tstitch_name = name  # the stitch's record and --cache MODEL=SPEC use the loaded names
            models.append(model)
            names.append(name)
            families.append(family)
        for i, model in enumerate(models[:-1]):
            check_compatible(models[-1], model, f"models[{i}] ({names[i]})")
        family = families[-1]  # the large model's family decodes and gives the noise schedule
        if isinstance(vae, ModelSource) and find_file(vae, dirs) is not None:  # a downloaded file (vq-f8)
            vae = str(find_file(vae, dirs))
        decoder = None if vae is None else _load_vae(vae, offline, device, dtype)
        if decoder is not None:
            check_finite_weights(decoder, f"the VAE ({vae if isinstance(vae, str) else vae.label})")
        return ClassConditionalModels(models, names, family.noise_schedule(), defaults, decoder,
                                      latent_scale if decoder is not None else 1.0, label, family=family.name)

    large_source = sources[-1]
    target = large_source if isinstance(large_source, str) else _first_hub(large_source, offline)
    pipe = load_pipeline(target, offline, device, dtype)
    attr, large = denoiser_of(pipe)
    large = getattr(large, "large", large)
    smalls = []
    for source in sources[:-1]:
        if isinstance(source, ModelSource):
            small_target, subfolder = _first_hub(source, offline), source.subfolder
        else:
            small_target, subfolder = source, None
        smalls.append(_load_denoiser(small_target, subfolder, large, attr, offline, device, dtype))
    check_controlnet_layout(pipe, smalls)
    names = [_source_name(s) for s in sources]
    for model, name in zip([*smalls, large], names, strict=True):
        check_finite_weights(model, name)
    if getattr(pipe, "vae", None) is not None:
        check_finite_weights(pipe.vae, f"{names[-1]} (its VAE)")
    for model, name in zip([*smalls, large], names, strict=True):
        model._tstitch_name = name
    stitch(pipe, smalls, list(defaults.fractions))  # checks every small model against the pipeline's
    return StitchedPipeline(pipe, smalls, names, defaults, label)


def check_preset(preset: Preset) -> None:
    """``ValueError`` for a row of :data:`PRESETS` that cannot be loaded or sampled as written."""
    problems = []
    if preset.family not in FAMILIES:
        problems.append(f"family {preset.family!r} is not one of {', '.join(FAMILIES)}")
    if len(preset.models) < 2:
        problems.append(f"{len(preset.models)} model(s): stitching needs two or more")
    if len(preset.fractions) != len(preset.models) - 1 or not all(0 <= f <= 1 for f in preset.fractions) \
            or sum(preset.fractions) > 1 + 1e-9:
        problems.append(f"fractions {preset.fractions} for {len(preset.models)} models")
    if preset.scheduler is not None and preset.scheduler not in (SAMPLERS if preset.mode == "official" else SCHEDULERS):
        problems.append(f"scheduler {preset.scheduler!r} in mode {preset.mode!r}")
    if any(not (m.zoo or m.hub or m.files) for m in preset.models):
        problems.append("a model source with no hub id, file or embedded name")
    if problems:
        raise ValueError(f"preset {preset.name!r}: " + "; ".join(problems))


def load_preset(
    name: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    models: Sequence[str] | None = None,
    vae: str | None = None,
) -> ClassConditionalModels | StitchedPipeline:
    """Load preset ``name`` (see :data:`PRESETS`) ready for :func:`tstitch.experiments.generate.generate`.

    Args:
        name: a key of :data:`PRESETS`.
        device, dtype: where and in which precision (default float16 for pipelines on CUDA, else float32).
        local_files_only: no network; ``None`` follows ``HF_HUB_OFFLINE``.
        checkpoint_dir: a folder holding downloaded checkpoint files (``dit_s_256.pt``, ...); also searched:
            ``$TSTITCH_CHECKPOINT_DIR`` and ``./pretrained_models``.
        models: replace the preset's model sources (paths, hub ids; one per model, smallest first) and keep
            its sampling settings.
        vae: replace the preset's VAE (a path or hub id).

    Raises:
        ValueError: unknown preset (listing the known ones), models that cannot be stitched.
        CheckpointNotAvailableError: a model that is not available, naming its hub id or file and how to
            provide it (checked for every model before anything is loaded).
    """
    preset = get_preset(name)
    if checkpoint_dir is not None and not Path(checkpoint_dir).expanduser().is_dir():
        what = "a file, not a folder" if Path(checkpoint_dir).expanduser().exists() else "no such folder"
        files = ", ".join(f for m in preset.models for f in m.files) or "none needed"
        raise FileNotFoundError(f"checkpoint_dir {os.fspath(checkpoint_dir)!r} is {what}: give the folder that holds "
                                f"the downloaded checkpoint files ({files})")
    check_device(device)
    if dtype is not None:
        check_dtype(dtype)
    sources: Sequence[ModelSource | str] = preset.models
    if models:
        if len(models) != len(preset.models):
            raise ValueError(
                f"preset {name!r} has {len(preset.models)} models "
                f"({', '.join(s.label for s in preset.models)}); got {len(models)} --model values"
            )
        sources = list(models)
    return _build(
        preset.kind, sources, label=f"preset {name!r}", defaults=preset.defaults,
        vae=vae if vae is not None else preset.vae, latent_scale=preset.latent_scale,
        timestep_embedding=preset.timestep_embedding, device=device, dtype=dtype,
        local_files_only=local_files_only, checkpoint_dir=checkpoint_dir, family_name=preset.family,
    )


# -- models given by path or hub id ------------------------------------------------------------------------


def _default_fractions(num_models: int) -> tuple[float, ...]:
    """0.4 for a pair; for more models, 0.6 shared evenly by the small ones (the large model keeps 0.4)."""
    if num_models == 2:
        return (0.4,)
    return tuple([round(0.6 / (num_models - 1), 6)] * (num_models - 1))


def load_models(
    sources: Sequence[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    vae: str | None = None,
    timestep_embedding: Literal["auto", "official", "diffusers"] = "auto",
    defaults: SamplingDefaults | None = None,
) -> ClassConditionalModels | StitchedPipeline:
    """Load models named by path, hub id or embedded name, smallest first, the large model last.

    The large model decides the kind: a DiT (official ``.pt``/``.safetensors`` file, diffusers folder or hub
    id, an embedded ``digits-*`` name) gives class-conditional sampling, with the VAE ``vae`` (default
    :data:`DIT_VAE` for 4-channel latents, the pipeline's own ``vae/`` for a DiT pipeline folder); a
    diffusers pipeline (folder or hub id) is stitched with the other models' denoisers (pipeline or model
    folders). ``defaults``: sampling settings (default: the DiT paper's, or the pipeline's own).
    """
    if isinstance(sources, str) or len(sources) < 2:
        raise ValueError(f"stitching needs at least two --model values (smallest first), got {sources!r}")
    check_device(device)
    if dtype is not None:
        check_dtype(dtype)
    kinds = [detect_kind(s, local_files_only=local_files_only) for s in sources]
    if kinds[-1] == "denoiser":
        raise ValueError(
            f"the last (large) model {sources[-1]!r} is a bare model folder: give a whole pipeline (folder or hub id) "
            "so that its text encoders and VAE can be used"
        )
    large_kind = kinds[-1]
    for source, kind in zip(sources[:-1], kinds[:-1], strict=True):
        if (kind == "class") != (large_kind == "class"):
            raise ValueError(
                f"{source!r} is a {'class-conditional DiT' if kind == 'class' else 'text-to-image model'} but the "
                f"large model {sources[-1]!r} is {'a class-conditional DiT' if large_kind == 'class' else 'a pipeline'}"
            )
    label = " -> ".join(_source_name(s) for s in sources)
    if large_kind == "class":
        digits = family_of_name(sources[-1]) is FAMILIES["digits"]
        if defaults is None:
            defaults = (PRESETS["digits"] if digits else PRESETS["dit-s-xl"]).defaults
            defaults = replace(defaults, fractions=_default_fractions(len(sources)))
        decoder: ModelSource | str | None = vae
        if decoder is None and not digits:
            large_path = Path(sources[-1]).expanduser()
            if large_path.is_dir() and (large_path / "vae" / "config.json").is_file():
                decoder = str(large_path / "vae")
            else:
                decoder = DIT_VAE_SOURCE
        return _build(
            "class", list(sources), label=label, defaults=defaults, vae=decoder, latent_scale=DIT_LATENT_SCALE,
            timestep_embedding=timestep_embedding, device=device, dtype=dtype,
            local_files_only=local_files_only, checkpoint_dir=None,
        )
    if vae is not None:
        raise ValueError("--vae applies to DiT models; a pipeline decodes with its own VAE")
    if defaults is None:
        defaults = SamplingDefaults(fractions=_default_fractions(len(sources)))
    return _build(
        "pipeline", list(sources), label=label, defaults=defaults, vae=None, latent_scale=1.0,
        timestep_embedding=timestep_embedding, device=device, dtype=dtype,
        local_files_only=local_files_only, checkpoint_dir=None,
    )
