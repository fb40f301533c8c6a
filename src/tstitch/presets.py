# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Named model pairs as the T-Stitch paper used them, and loading them (or any models) ready to sample.

:data:`PRESETS` is one table: name -> :class:`Preset` (models smallest first, VAE, scheduler, steps,
guidance, default fraction). :func:`load_preset` loads one; :func:`load_models` loads models named by
path or hub id (``tstitch sample --model``). Both return a :class:`~tstitch.generate.ClassConditionalModels`
(DiTs, the digits family) or a :class:`~tstitch.generate.StitchedPipeline` (Stable Diffusion, SDXL), ready
for :func:`tstitch.generate.generate`.

Where the weights come from:

* ``facebook/DiT-XL-2-256``, ``stabilityai/sd-vae-ft-ema``, the Stable Diffusion / SDXL / BK-SDM / SSD-1B
  repositories: the Hugging Face hub, through diffusers, honouring ``HF_HUB_OFFLINE`` / ``local_files_only``.
* DiT-S/2 and DiT-B/2: the checkpoints released with T-Stitch (``dit_s_256.pt``, ``dit_b_256.pt``) are
  published as Google Drive files, not on the hub: download them once and point ``checkpoint_dir``
  (``--checkpoint-dir``, or the ``TSTITCH_CHECKPOINT_DIR`` variable) at their folder, or pass them as
  ``--model`` paths. ``./pretrained_models`` (the layout of the published code) is searched too.
* the digits family: shipped inside the package (no network ever).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from .checkpoints import CheckpointNotAvailableError, _offline, load_dit
from .generate import ClassConditionalModels, SamplingDefaults, StitchedPipeline, check_controlnet_layout
from .stitcher import check_compatible, stitch

logger = logging.getLogger(__name__)

__all__ = [
    "ModelSource",
    "Preset",
    "PRESETS",
    "get_preset",
    "load_preset",
    "load_models",
    "describe_presets",
    "CheckpointNotAvailableError",
    "DIT_VAE",
    "DIT_LATENT_SCALE",
]

#: The VAE the DiT papers decode with, and their latent scaling (latents are divided by it before decoding).
DIT_VAE = "stabilityai/sd-vae-ft-ema"
DIT_LATENT_SCALE = 0.18215
#: The class labels of the DiT sampling script's default sample grid.
DIT_LABELS = (207, 360, 387, 974, 88, 979, 417, 279)
#: Environment variable naming a folder of downloaded checkpoint files.
CHECKPOINT_DIR_ENV = "TSTITCH_CHECKPOINT_DIR"
#: Folders searched for checkpoint files, after ``checkpoint_dir`` and ``$TSTITCH_CHECKPOINT_DIR``.
DEFAULT_CHECKPOINT_DIRS = ("pretrained_models",)


@dataclass(frozen=True)
class ModelSource:
    """Where one model of a preset comes from.

    Files named in ``files`` are looked for in the checkpoint folders first; then the ``hub`` ids are tried
    in order (the first one available wins; ``subfolder`` inside each). ``zoo`` names a member of the
    embedded digits family. ``url`` says where a file that is not on the hub is published.
    """

    label: str
    hub: tuple[str, ...] = ()
    subfolder: str | None = None
    files: tuple[str, ...] = ()
    url: str | None = None
    zoo: str | None = None
    note: str = ""

    def describe(self) -> str:
        if self.zoo:
            return f"{self.zoo} (embedded)"
        parts = list(self.hub[:1]) + [f"file {name}" for name in self.files[:1]]
        return f"{self.label}: " + " or ".join(parts)


@dataclass(frozen=True)
class Preset:
    """A published model pair (or triple) and how the paper sampled it.

    ``kind``: ``"class"`` (class-conditional DiTs, sampled by the bare loop or the published sampler) or
    ``"pipeline"`` (a diffusers text-to-image pipeline around the large model). ``fractions``: the default
    shares of the small models. ``num_steps`` / ``guidance_scale`` / ``scheduler`` ``None``: the pipeline's
    own defaults.
    """

    name: str
    description: str
    kind: Literal["class", "pipeline"]
    models: tuple[ModelSource, ...]
    fractions: tuple[float, ...]
    num_steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    mode: Literal["diffusers", "official"] = "diffusers"
    vae: ModelSource | None = None
    latent_scale: float = 1.0
    class_labels: tuple[int, ...] = ()
    prompt: str | None = None
    timestep_embedding: Literal["auto", "official", "diffusers"] = "auto"
    published: str = ""

    @property
    def defaults(self) -> SamplingDefaults:
        return SamplingDefaults(
            fractions=self.fractions, num_steps=self.num_steps, guidance_scale=self.guidance_scale,
            scheduler=self.scheduler, mode=self.mode, class_labels=self.class_labels, prompt=self.prompt,
        )


# -- the table ---------------------------------------------------------------------------------------------

_DIT_S = ModelSource(
    "DiT-S/2 (T-Stitch release)", files=("dit_s_256.pt",),
    url="https://drive.google.com/file/d/1YOSNrFbP36vHlPQPBosqZKbPLokymRuO/view",
    note="released with T-Stitch as a Google Drive file, not on the Hugging Face hub",
)
_DIT_B = ModelSource(
    "DiT-B/2 (T-Stitch release)", files=("dit_b_256.pt",),
    url="https://drive.google.com/file/d/1HTqZSYXh6LJGLooko4LPFsCuwL2Wjg6r/view",
    note="released with T-Stitch as a Google Drive file, not on the Hugging Face hub",
)
_DIT_XL = ModelSource(
    "DiT-XL/2", hub=("facebook/DiT-XL-2-256",), files=("DiT-XL-2-256x256.pt", "dit_xl_256.pt"),
    url="https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
)
_DIT_VAE = ModelSource("VAE (sd-vae-ft-ema)", hub=(DIT_VAE,))
_SD15 = ModelSource(
    "Stable Diffusion 1.5", hub=("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")
)
_BKSDM_TINY = ModelSource("BK-SDM-Tiny", hub=("nota-ai/bk-sdm-tiny",), subfolder="unet")
_BKSDM_SMALL = ModelSource("BK-SDM-Small", hub=("nota-ai/bk-sdm-small",), subfolder="unet")
_SDXL = ModelSource("SDXL base 1.0", hub=("stabilityai/stable-diffusion-xl-base-1.0",))
_SSD1B = ModelSource("SSD-1B", hub=("segmind/SSD-1B",), subfolder="unet")

_DIT_SETTINGS: dict[str, Any] = dict(
    kind="class", num_steps=100, guidance_scale=1.5, scheduler="ddim", mode="official", vae=_DIT_VAE,
    latent_scale=DIT_LATENT_SCALE, class_labels=DIT_LABELS, timestep_embedding="official",
)
_SD_PROMPT = "a photograph of an astronaut riding a horse"

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "dit-s-xl", "DiT-S/2 -> DiT-XL/2, ImageNet 256 (the paper's headline pair)",
            models=(_DIT_S, _DIT_XL), fractions=(0.4,), **_DIT_SETTINGS,
            published="DDIM 100, guidance 1.5: FID-5K 9.20 at 0, 8.95 at 0.4; 16.5 s -> 11.0 s for 8 images "
            "(RTX 3090)",
        ),
        Preset(
            "dit-b-xl", "DiT-B/2 -> DiT-XL/2, ImageNet 256",
            models=(_DIT_B, _DIT_XL), fractions=(0.4,), **_DIT_SETTINGS,
            published="single models FID-5K: DiT-B 12.30, DiT-XL 9.20",
        ),
        Preset(
            "dit-s-b-xl", "DiT-S/2 -> DiT-B/2 -> DiT-XL/2, ImageNet 256 (three models)",
            models=(_DIT_S, _DIT_B, _DIT_XL), fractions=(0.4, 0.2), **_DIT_SETTINGS,
            published="the S/B/XL Pareto frontier stays near FID 10 down to about half the DiT-XL time",
        ),
        Preset(
            "sd15-bksdm-tiny", "BK-SDM-Tiny -> Stable Diffusion 1.5 (text-to-image, 512x512)",
            kind="pipeline", models=(_BKSDM_TINY, _SD15), fractions=(0.4,), prompt=_SD_PROMPT,
            published="the pipeline's defaults (50 PNDM steps, guidance 7.5)",
        ),
        Preset(
            "sd15-bksdm-small", "BK-SDM-Small -> Stable Diffusion 1.5 (text-to-image, 512x512)",
            kind="pipeline", models=(_BKSDM_SMALL, _SD15), fractions=(0.4,), prompt=_SD_PROMPT,
            published="the pipeline's defaults (50 PNDM steps, guidance 7.5)",
        ),
        Preset(
            "sdxl-ssd1b", "SSD-1B -> SDXL base 1.0 (text-to-image, 1024x1024)",
            kind="pipeline", models=(_SSD1B, _SDXL), fractions=(0.4,), prompt=_SD_PROMPT,
            published="one prompt: 13.6 s at 0, 11.05 s at 0.4, 8.8 s at 1 (pipeline defaults)",
        ),
        Preset(
            "digits", "digits-s -> digits-xl: the embedded 8x8 digits family (offline, CPU)",
            kind="class", models=(ModelSource("digits-s", zoo="digits-s"), ModelSource("digits-xl", zoo="digits-xl")),
            fractions=(0.4,), num_steps=25, guidance_scale=1.0, scheduler="ddim", class_labels=tuple(range(10)),
        ),
        Preset(
            "digits-s-b-xl", "digits-s -> digits-b -> digits-xl: the embedded family, three models",
            kind="class",
            models=tuple(ModelSource(name, zoo=name) for name in ("digits-s", "digits-b", "digits-xl")),
            fractions=(0.4, 0.2), num_steps=25, guidance_scale=1.0, scheduler="ddim", class_labels=tuple(range(10)),
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` listing the known names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def describe_presets() -> str:
    """A readable table of the presets (for ``tstitch sample --list-presets``)."""
    lines = []
    for preset in PRESETS.values():
        steps = f"{preset.scheduler or 'pipeline'} {preset.num_steps or 'default'} steps"
        guidance = f"guidance {preset.guidance_scale:g}" if preset.guidance_scale is not None else "default guidance"
        lines.append(f"{preset.name:<18} {preset.description}")
        lines.append(f"{'':<18} models: {', '.join(source.describe() for source in preset.models)}")
        fractions = ", ".join(f"{f:g}" for f in preset.fractions)
        lines.append(f"{'':<18} {steps}, {guidance}, fraction {fractions}, mode {preset.mode}")
    return "\n".join(lines)


# -- resolving sources -------------------------------------------------------------------------------------


def _checkpoint_dirs(checkpoint_dir: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(checkpoint_dir).expanduser()] if checkpoint_dir else []
    if os.environ.get(CHECKPOINT_DIR_ENV):
        dirs.append(Path(os.environ[CHECKPOINT_DIR_ENV]).expanduser())
    dirs += [Path(d) for d in DEFAULT_CHECKPOINT_DIRS]
    return dirs


def _find_file(source: ModelSource, dirs: list[Path]) -> Path | None:
    for folder in dirs:
        for name in source.files:
            if (folder / name).is_file():
                return folder / name
    return None


def _hub_cached(repo_id: str) -> bool:
    """Whether a snapshot of ``repo_id`` is in the local Hugging Face cache (no network)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return False
    return True


def _download_hint(repo_id: str) -> str:
    return f"`hf download {repo_id}`"


def _missing_message(source: ModelSource, dirs: list[Path], offline: bool, position: str) -> str:
    searched = ", ".join(str(d) for d in dirs)
    ways = []
    if source.hub:
        ids = " or ".join(repr(h) for h in source.hub)
        state = "not in the local Hugging Face cache, and the hub is off (HF_HUB_OFFLINE=1 or local_files_only)"
        ways.append(f"{ids} is {state}: download it once with network access ({_download_hint(source.hub[0])})")
    if source.files:
        names = " / ".join(source.files)
        where = f" from {source.url}" if source.url else ""
        how = f"pass --checkpoint-dir DIR (or set {CHECKPOINT_DIR_ENV}; searched now: {searched})"
        if source.hub:
            ways.append(f"or download the file {names}{where} and {how}")
        else:
            note = f" ({source.note})" if source.note else ""
            ways.append(f"no file {names} was found{note}: download it{where} and {how}")
    if position == "--vae":
        ways.append("or pass a local VAE folder with --vae PATH")
    else:
        ways.append("or give local copies of all the models with --model PATH, smallest first")
    return f"{source.label}: " + "; ".join(ways)


def _check_available(sources: Sequence[tuple[ModelSource, str]], dirs: list[Path], offline: bool,
                     what: str) -> None:
    """Raise :class:`CheckpointNotAvailableError` naming every source that cannot be had, before loading."""
    missing = []
    for source, position in sources:
        if source.zoo or _find_file(source, dirs) is not None:
            continue
        if source.hub and (not offline or any(_hub_cached(h) for h in source.hub)):
            continue
        missing.append(_missing_message(source, dirs, offline, position))
    if missing:
        raise CheckpointNotAvailableError(f"{what} cannot be loaded:\n  - " + "\n  - ".join(missing))


def _first_hub(source: ModelSource, offline: bool) -> str:
    if offline:
        for repo_id in source.hub:
            if _hub_cached(repo_id):
                return repo_id
    return source.hub[0]


def _not_fetched(repo_id: str, error: BaseException) -> CheckpointNotAvailableError:
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return CheckpointNotAvailableError(
        f"{repo_id!r} could not be loaded from the Hugging Face hub ({type(error).__name__}: {detail}). Check the "
        f"id and your network, download it with {_download_hint(repo_id)}, or pass a local copy with --model PATH"
    )


# -- loading -----------------------------------------------------------------------------------------------


def _default_dtype(kind: str, device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float16 if kind == "pipeline" and device.type == "cuda" else torch.float32


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return model if next(model.parameters()).dtype == dtype else model.to(dtype=dtype)


def _load_class_model(source: ModelSource | str, dirs: list[Path], offline: bool, device: torch.device,
                      dtype: torch.dtype, timestep_embedding: str):
    from . import zoo

    if isinstance(source, str):
        if source in zoo.FAMILY:
            return _cast(zoo.load_model(source, device=device), dtype), source
        model = load_dit(source, device=device, dtype=dtype, local_files_only=offline,
                         timestep_embedding=timestep_embedding)
        return model, Path(source).name if Path(source).exists() else source
    if source.zoo:
        return _cast(zoo.load_model(source.zoo, device=device), dtype), source.zoo
    path = _find_file(source, dirs)
    target = str(path) if path is not None else _first_hub(source, offline)
    logger.info("loading %s from %s", source.label, target)
    model = load_dit(target, device=device, dtype=dtype, local_files_only=offline,
                     timestep_embedding=timestep_embedding, subfolder=None if path else source.subfolder)
    return model, source.label.split(" (")[0]


def _load_vae(source: ModelSource | str, offline: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL

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
        raise _not_fetched(target, error) from error
    return vae.to(device).eval()


def _load_pipeline(target: str, offline: bool, device: torch.device, dtype: torch.dtype):
    import importlib.util

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
        raise _not_fetched(target, error) from error
    return pipe.to(device)


def _denoiser_of(pipe: Any) -> tuple[str, Any]:
    for name in ("unet", "transformer"):
        model = getattr(pipe, name, None)
        if isinstance(model, torch.nn.Module):
            return name, getattr(model, "large", model)
    raise ValueError(f"{type(pipe).__name__} has no unet or transformer to stitch")


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
    raise _not_fetched(target, last) from last


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
):
    device = torch.device(device)
    dtype = _default_dtype(kind, device, dtype)
    offline = _offline(local_files_only)
    dirs = _checkpoint_dirs(checkpoint_dir)
    if len(sources) < 2:
        raise ValueError(f"stitching needs at least two models (smallest first), got {len(sources)}")
    positions = [f"--model #{i + 1}" for i in range(len(sources))]
    named = [(s, p) for s, p in zip(sources, positions, strict=True) if isinstance(s, ModelSource)]
    if isinstance(vae, ModelSource):
        named.append((vae, "--vae"))
    _check_available(named, dirs, offline, f"{label} (offline)" if offline else label)

    if kind == "class":
        models, names = [], []
        for source in sources:
            model, name = _load_class_model(source, dirs, offline, device, dtype, timestep_embedding)
            model.requires_grad_(False)
            models.append(model)
            names.append(name)
        for i, model in enumerate(models[:-1]):
            check_compatible(models[-1], model, f"models[{i}] ({names[i]})")
        from .zoo import scheduler_config

        decoder = None if vae is None else _load_vae(vae, offline, device, dtype)
        return ClassConditionalModels(models, names, scheduler_config(), defaults, decoder,
                                      latent_scale if decoder is not None else 1.0, label)

    large_source = sources[-1]
    target = large_source if isinstance(large_source, str) else _first_hub(large_source, offline)
    pipe = _load_pipeline(target, offline, device, dtype)
    attr, large = _denoiser_of(pipe)
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
        model._tstitch_name = name
    stitch(pipe, smalls, list(defaults.fractions))  # checks every small model against the pipeline's
    return StitchedPipeline(pipe, smalls, names, defaults, label)


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
    """Load preset ``name`` (see :data:`PRESETS`) ready for :func:`tstitch.generate.generate`.

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
        local_files_only=local_files_only, checkpoint_dir=checkpoint_dir,
    )


# -- models given by path or hub id ------------------------------------------------------------------------


def detect_kind(source: str, *, local_files_only: bool | None = None) -> Literal["class", "pipeline", "denoiser"]:
    """What ``source`` holds: a class-conditional DiT (``"class"``), a text-to-image pipeline
    (``"pipeline"``) or a bare denoiser folder (``"denoiser"``, usable as a small model only)."""
    from . import zoo

    if source in zoo.FAMILY:
        return "class"
    path = Path(source).expanduser()
    if path.is_file():
        return "class"
    if path.is_dir():
        return _kind_from_configs(lambda name: path / name if (path / name).is_file() else None, source)
    from .checkpoints import _REPO_FILE, _REPO_ID

    if _REPO_FILE.match(source):
        return "class"
    if not _REPO_ID.match(source):
        raise FileNotFoundError(f"model {source!r} not found: no such file or folder, and not a hub id 'owner/name'")
    offline = _offline(local_files_only)

    def fetch(name: str) -> Path | None:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(source, name, local_files_only=offline))
        except Exception:
            return None

    try:
        return _kind_from_configs(fetch, source)
    except ValueError:
        if offline and not _hub_cached(source):
            raise CheckpointNotAvailableError(
                f"{source!r} is not in the local Hugging Face cache and the hub is off (HF_HUB_OFFLINE=1 or "
                f"local_files_only); download it once with network access ({_download_hint(source)}) or pass a "
                "local path"
            ) from None
        raise


def _kind_from_configs(find: Any, source: str) -> Literal["class", "pipeline", "denoiser"]:
    for name in ("model_index.json", "config.json", "transformer/config.json"):
        found = find(name)
        if found is None:
            continue
        try:
            class_name = json.loads(Path(found).read_text()).get("_class_name", "")
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{source}: unreadable {name} ({error})") from error
        if class_name in ("DiTPipeline", "DiTTransformer2DModel", "Transformer2DModel"):
            return "class"
        return "pipeline" if name == "model_index.json" else "denoiser"
    raise ValueError(f"{source}: neither a diffusers pipeline nor a model (no model_index.json or config.json)")


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
    from . import zoo

    if len(sources) < 2:
        raise ValueError(f"stitching needs at least two --model values (smallest first), got {len(sources)}")
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
        digits = sources[-1] in zoo.FAMILY
        if defaults is None:
            defaults = (PRESETS["digits"] if digits else PRESETS["dit-s-xl"]).defaults
            defaults = replace(defaults, fractions=_default_fractions(len(sources)))
        decoder: ModelSource | str | None = vae
        if decoder is None and not digits:
            large_path = Path(sources[-1]).expanduser()
            if large_path.is_dir() and (large_path / "vae" / "config.json").is_file():
                decoder = str(large_path / "vae")
            else:
                decoder = _DIT_VAE
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
