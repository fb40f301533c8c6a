# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The preset registry: named model pairs as the T-Stitch paper used them.

:data:`PRESETS` is one table: name -> :class:`Preset` (family, models smallest first, VAE, scheduler, steps,
guidance, default fraction). :func:`tstitch.models.loading.load_preset` loads one. A new preset is one row;
``tests/test_registries.py`` validates every row.

This module imports no torch (``tstitch --help`` lists the presets at once), and so it also holds the
torch-free types of how a model set samples: the sampling :data:`MODES` and :class:`SamplingDefaults`
(:mod:`tstitch.models.loaded` re-exports them), and the kind of each family (:data:`FAMILY_KINDS`).

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

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Mode",
    "MODES",
    "OFFICIAL_MODES",
    "SamplingDefaults",
    "FAMILY_KINDS",
    "ModelSource",
    "Preset",
    "PRESETS",
    "get_preset",
    "describe_presets",
    "DIT_VAE",
    "DIT_LATENT_SCALE",
    "DIT_LABELS",
    "DIT_VAE_SOURCE",
    "CHECKPOINT_DIR_ENV",
    "DEFAULT_CHECKPOINT_DIRS",
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

Mode = Literal["diffusers", "official", "official-zeros"]
#: ``diffusers``: the one loop under any diffusers scheduler; ``official``: the family's published sampler (DiT,
#: LDM); ``official-zeros``: the published LDM sampler with zeros as the unconditional contexts.
MODES = ("diffusers", "official", "official-zeros")
OFFICIAL_MODES = ("official", "official-zeros")

#: The kind of each row of :data:`~tstitch.models.families.FAMILIES`: ``"class"`` (class-conditional denoisers
#: sampled by the one loop or a published sampler) or ``"pipeline"`` (a diffusers pipeline stitched in place).
FAMILY_KINDS: dict[str, Literal["class", "pipeline"]] = {
    "digits": "class", "dit": "class", "ldm": "class", "diffusers-pipeline": "pipeline",
}


@dataclass(frozen=True)
class SamplingDefaults:
    """How a model set samples unless told otherwise (a preset's settings, or inferred for ``--model``).

    ``num_steps`` / ``guidance_scale`` / ``scheduler`` ``None``: the pipeline's own defaults.
    """

    fractions: tuple[float, ...] = (0.4,)
    num_steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    mode: Mode = "diffusers"
    class_labels: tuple[int, ...] = ()
    prompt: str | None = None


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

    ``family``: a row of :data:`~tstitch.models.families.FAMILIES` (``"dit"``, ``"digits"``: class-conditional,
    sampled by the one loop or the published sampler; ``"diffusers-pipeline"``: a text-to-image pipeline
    around the large model). ``fractions``: the default
    shares of the small models. ``num_steps`` / ``guidance_scale`` / ``scheduler`` ``None``: the pipeline's
    own defaults.
    """

    name: str
    description: str
    family: str
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
    def kind(self) -> Literal["class", "pipeline"]:
        """``"class"`` or ``"pipeline"``: the kind of the preset's family."""
        return FAMILY_KINDS[self.family]

    @property
    def defaults(self) -> SamplingDefaults:
        """The preset's sampling settings, as the loaded models carry them."""
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
DIT_VAE_SOURCE = ModelSource("VAE (sd-vae-ft-ema)", hub=(DIT_VAE,))
_SD15 = ModelSource(
    "Stable Diffusion 1.5", hub=("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")
)
_BKSDM_TINY = ModelSource("BK-SDM-Tiny", hub=("nota-ai/bk-sdm-tiny",), subfolder="unet")
_BKSDM_SMALL = ModelSource("BK-SDM-Small", hub=("nota-ai/bk-sdm-small",), subfolder="unet")
_SDXL = ModelSource("SDXL base 1.0", hub=("stabilityai/stable-diffusion-xl-base-1.0",))
_SSD1B = ModelSource("SSD-1B", hub=("segmind/SSD-1B",), subfolder="unet")

_LDM_S = ModelSource(
    "LDM-S (T-Stitch release)", files=("ldm_s.ckpt",), url="the T-Stitch authors' Google Drive (linked from "
    "https://github.com/NVlabs/T-Stitch)", note="released with T-Stitch as a Google Drive file, not on the hub",
)
_LDM = ModelSource(
    "LDM (T-Stitch release)", files=("ldm.ckpt",), url="the T-Stitch authors' Google Drive (linked from "
    "https://github.com/NVlabs/T-Stitch)", note="released with T-Stitch as a Google Drive file, not on the hub",
)
_VQ_F8 = ModelSource(
    "VQ-f8 first stage (CompVis)", files=("vq-f8/model.ckpt",),
    url="https://ommer-lab.com/files/latent-diffusion/vq-f8.zip (unzip model.ckpt into DIR/vq-f8/)",
    note="from the CompVis latent-diffusion first-stage downloads",
)

_DIT_SETTINGS: dict[str, Any] = dict(
    family="dit", num_steps=100, guidance_scale=1.5, scheduler="ddim", mode="official", vae=DIT_VAE_SOURCE,
    latent_scale=DIT_LATENT_SCALE, class_labels=DIT_LABELS, timestep_embedding="official",
)
#: A text-to-image pair: the pipeline's own defaults, one prompt.
_PIPELINE_SETTINGS: dict[str, Any] = dict(
    family="diffusers-pipeline", fractions=(0.4,), prompt="a photograph of an astronaut riding a horse",
)

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
            "ldm-s-ldm", "LDM-S -> LDM (U-Nets), ImageNet 256, CompVis vq-f8 first stage (docs/ldm.md)",
            family="ldm", models=(_LDM_S, _LDM), fractions=(0.4,), num_steps=100, guidance_scale=3.0,
            scheduler="ddim", mode="official", vae=_VQ_F8, class_labels=DIT_LABELS,
            published="DDIM 100, eta 1, guidance 3.0: FID-5K 20.11 at 0, 18.60 at 0.4; 7.1 s -> 5.3 s for 8 images "
            "(RTX 3090)",
        ),
        Preset(
            "sd15-bksdm-tiny", "BK-SDM-Tiny -> Stable Diffusion 1.5 (text-to-image, 512x512)",
            models=(_BKSDM_TINY, _SD15), **_PIPELINE_SETTINGS,
            published="the pipeline's defaults (50 PNDM steps, guidance 7.5)",
        ),
        Preset(
            "sd15-bksdm-small", "BK-SDM-Small -> Stable Diffusion 1.5 (text-to-image, 512x512)",
            models=(_BKSDM_SMALL, _SD15), **_PIPELINE_SETTINGS,
            published="the pipeline's defaults (50 PNDM steps, guidance 7.5)",
        ),
        Preset(
            "sdxl-ssd1b", "SSD-1B -> SDXL base 1.0 (text-to-image, 1024x1024)",
            models=(_SSD1B, _SDXL), **_PIPELINE_SETTINGS,
            published="one prompt: 13.6 s at 0, 11.05 s at 0.4, 8.8 s at 1 (pipeline defaults)",
        ),
        Preset(
            "digits", "digits-s -> digits-xl: the embedded 8x8 digits family (offline, CPU)",
            family="digits",
            models=(ModelSource("digits-s", zoo="digits-s"), ModelSource("digits-xl", zoo="digits-xl")),
            fractions=(0.4,), num_steps=25, guidance_scale=1.0, scheduler="ddim", class_labels=tuple(range(10)),
        ),
        Preset(
            "digits-s-b-xl", "digits-s -> digits-b -> digits-xl: the embedded family, three models",
            family="digits",
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
