# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The benchmark's cases (model pairs and their sampling settings) and suites (named lists of cases)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.dit_layout import dit_config
from ..models.ldm_layouts import LDM_SHAPES, TINY_LDM_SHAPES, random_ldm_model
from ..plan import Plan
from ..sampling import num_classes_of, scheduler_factory
from ..sampling.ldm_official import ddim_scheduler_config
from ..sampling.schedulers import DIT_NOISE_SCHEDULE, SD_NOISE_SCHEDULE
from ..zoo import load_family, scheduler_config

__all__ = ["FRACTIONS", "PAPER_FRACTIONS", "BenchCase", "CASE_BUILDERS", "SUITES", "build_case", "dit_model",
           "unet_model", "DIT_SHAPES"]

FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_FRACTIONS = tuple(round(i / 10, 1) for i in range(11))



# -- cases ---------------------------------------------------------------------------------------------------


@dataclass
class BenchCase:
    """One model pair and its sampling setting.

    ``conditioning`` is ``"class"`` for class-conditional DiT-style models (``model(x, timestep=t,
    class_labels=y)``: timed with ``tstitch.sample`` and a ``DiTPipeline``) or ``"text"`` for U-Nets with
    cross-attention (timed through a ``StableDiffusionPipeline`` fed with random prompt embeddings). The
    scheduler must be first order (one model call per step).
    """

    name: str
    small: nn.Module
    large: nn.Module
    make_scheduler: Callable[[], Any]
    num_steps: int
    num_images: int
    guidance_scale: float = 1.0
    conditioning: str = "class"
    fractions: tuple[float, ...] = FRACTIONS
    repetitions: int = 5
    small_name: str = "small"
    large_name: str = "large"
    description: str = ""
    text_tokens: int = 77
    #: A per-step plan of the pair (``num_steps`` steps, any order) timed beside the fractions, as
    #: ``plain@plan`` and ``stitched@plan``; the prefix plan with as many small-model steps is measured too.
    #: An adaptive plan is timed as ``adaptive`` beside ``together@k``: every sample switching at step ``k``,
    #: the rounded mean of its switch steps in the warm-up run.
    plan: Plan | None = None

    def validate(self) -> None:
        if self.conditioning not in ("class", "text"):
            raise ValueError(f"conditioning must be 'class' or 'text', got {self.conditioning!r}")
        if self.num_steps < 1 or self.num_images < 1 or self.repetitions < 1:
            raise ValueError(f"case {self.name}: steps, images and repetitions must be >= 1")
        if not self.fractions or any(not 0.0 <= r <= 1.0 for r in self.fractions):
            raise ValueError(f"case {self.name}: fractions must be in [0, 1], got {self.fractions}")
        if self.conditioning == "class" and self.guidance_scale > 1 and num_classes_of(self.large) != 1000:
            raise ValueError(f"case {self.name}: DiTPipeline guides with the null class 1000, but the model has "
                             f"{num_classes_of(self.large)} classes; use guidance_scale 1")
        if self.plan is not None and (self.plan.num_models != 2 or self.plan.num_steps not in (None, self.num_steps)):
            raise ValueError(f"case {self.name}: the plan {self.plan} must be a plan of the pair (2 models) for "
                             f"{self.num_steps} steps, got {self.plan.num_models} models, {self.plan.num_steps} steps")
        scheduler = self.make_scheduler()
        if getattr(scheduler, "order", 1) != 1:
            raise ValueError(f"case {self.name}: the harness needs a first-order scheduler (one call per step)")
        if self.adaptive and getattr(scheduler, "alphas_cumprod", None) is None:
            raise ValueError(f"case {self.name}: the adaptive plan {self.plan} reads its signal from the scheduler's "
                             f"alphas_cumprod, which {type(scheduler).__name__} has not (a flow-matching scheduler?)")

    @property
    def adaptive(self) -> bool:
        """Whether :attr:`plan` is adaptive (each sample switches at its own step)."""
        return self.plan is not None and self.plan.adaptive is not None

    @property
    def all_fractions(self) -> tuple[float, ...]:
        """The measured fractions, always with 0 and 1 (the single-model runs)."""
        return tuple(sorted({0.0, 1.0, *self.fractions, *filter(None, [self.prefix_fraction])}))

    @property
    def prefix_fraction(self) -> float | None:
        """The fraction whose prefix plan gives the small model as many steps as :attr:`plan` (or ``None``)."""
        if self.plan is None or self.adaptive:
            return None
        small_steps = self.plan.steps_per_model(self.num_steps)[0]
        for fraction in (round(small_steps / self.num_steps, 6), round((small_steps + 0.5) / self.num_steps, 6)):
            if Plan.from_small_fractions(fraction).steps_per_model(self.num_steps)[0] == small_steps:
                return fraction
        raise AssertionError("unreachable: (k + 0.5) / n always gives k steps")


#: Published DiT shapes: (depth, heads, head width); patch 2, 256x256 images (32x32x4 latents), learned sigma.
DIT_SHAPES = {"DiT-S/2": (12, 6, 64), "DiT-B/2": (12, 12, 64), "DiT-XL/2": (28, 16, 72)}

#: Stable Diffusion 1.x U-Net (860M parameters) and BK-SDM-Tiny's (323M: the SD-1.x U-Net without its mid
#: block, its innermost stage, and one residual/attention pair per stage), as diffusers configs.
SD15_UNET = dict(in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8)
BKSDM_TINY_UNET = dict(SD15_UNET, block_out_channels=(320, 640, 1280), layers_per_block=1,
                       down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                       mid_block_type=None)


def _random_model(cls: type, config: dict[str, Any], name: str, device: torch.device, seed: int) -> nn.Module:
    """A randomly initialised diffusers model, built directly on ``device`` (speed does not depend on weights)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(**config)
    model._tstitch_name = name
    return model.to(device).eval().requires_grad_(False)


def dit_model(shape: str, device: torch.device | str = "cpu", seed: int = 0, sample_size: int = 32) -> nn.Module:
    """A published DiT shape (``DiT-S/2``, ``DiT-B/2``, ``DiT-XL/2``) with random weights, at 256x256 (32x32
    latents) unless ``sample_size`` (the latent side) says otherwise."""
    from diffusers import DiTTransformer2DModel

    depth, heads, head_dim = DIT_SHAPES[shape]
    config = dit_config(heads, head_dim, 4, 8, depth, sample_size, 2, 1000)
    return _random_model(DiTTransformer2DModel, config, shape, torch.device(device), seed)


def unet_model(name: str, latent_size: int, device: torch.device | str = "cpu", seed: int = 0) -> nn.Module:
    """``"SD-1.x"`` or ``"BK-SDM-Tiny"`` U-Net shapes with random weights, at ``latent_size`` latents."""
    from diffusers import UNet2DConditionModel

    config = {"SD-1.x": SD15_UNET, "BK-SDM-Tiny": BKSDM_TINY_UNET}[name]
    return _random_model(UNet2DConditionModel, {**config, "sample_size": latent_size}, name,
                         torch.device(device), seed)


def _digits_case(device: torch.device, seed: int, **options: Any) -> BenchCase:
    models = load_family(["digits-s", "digits-xl"], device=device)
    return BenchCase(
        name="digits", small=models["digits-s"], large=models["digits-xl"], small_name="digits-s",
        large_name="digits-xl",
        make_scheduler=scheduler_factory("ddim", {**scheduler_config(), "set_alpha_to_one": False}),
        description="the embedded digits family (trained), 8x8x1", **options,
    )


def _dit_case(name: str, small: str, large: str, sample_size: int = 32) -> Callable[..., BenchCase]:
    def build(device: torch.device, seed: int, **options: Any) -> BenchCase:
        return BenchCase(
            name=name,
            small=dit_model(small, device, seed, sample_size), large=dit_model(large, device, seed + 1, sample_size),
            small_name=small, large_name=large, make_scheduler=scheduler_factory("ddim", DIT_NOISE_SCHEDULE),
            description=f"{small} -> {large}, {8 * sample_size}x{8 * sample_size} ({sample_size}x{sample_size}x4 "
                        "latents), random weights", **options,
        )

    return build


def _unet_case(device: torch.device, seed: int, latent_size: int = 16, **options: Any) -> BenchCase:
    return BenchCase(
        name="sd15-bksdm-tiny", small=unet_model("BK-SDM-Tiny", latent_size, device, seed),
        large=unet_model("SD-1.x", latent_size, device, seed + 1), small_name="BK-SDM-Tiny", large_name="SD-1.x",
        make_scheduler=scheduler_factory("ddim", SD_NOISE_SCHEDULE), conditioning="text",
        description=f"U-Nets of SD-1.x and BK-SDM-Tiny shapes, {latent_size}x{latent_size}x4 latents, random weights",
        **options,
    )


def _ldm_case(device: torch.device, seed: int, tiny: bool = False, **options: Any) -> BenchCase:
    """LDM-S -> LDM U-Nets (each with its own class embedder), random weights; ``tiny``: the layout at the
    smallest widths and 8x8 latents (tests)."""
    shapes, size = (TINY_LDM_SHAPES, 8) if tiny else (LDM_SHAPES, 32)
    small, large = (random_ldm_model(*shapes[name], name=name, sample_size=size, device=device, seed=seed + i)
                    for i, name in enumerate(("LDM-S", "LDM")))
    return BenchCase(
        name="ldm-s-ldm", small=small, large=large, small_name="LDM-S", large_name="LDM",
        make_scheduler=scheduler_factory("ddim", ddim_scheduler_config()),
        description=f"LDM-S -> LDM U-Nets of the published shapes{' (tiny widths)' if tiny else ''}, "
        f"{size}x{size}x4 latents, random weights", **options,
    )


#: Case name -> builder ``(device, seed, **options) -> BenchCase``.
CASE_BUILDERS: dict[str, Callable[..., BenchCase]] = {
    "digits": _digits_case,
    "dit-s-b": _dit_case("dit-s-b", "DiT-S/2", "DiT-B/2"),
    "dit-s-xl": _dit_case("dit-s-xl", "DiT-S/2", "DiT-XL/2"),
    "dit-s-b-16": _dit_case("dit-s-b-16", "DiT-S/2", "DiT-B/2", sample_size=16),  # a reduced shape for CPUs
    "sd15-bksdm-tiny": _unet_case,
    "ldm-s-ldm": _ldm_case,
}

#: Named settings: the cases and their options. "cpu" is the full run on a 2-core CPU (minutes), "quick"
#: a check in under 2 minutes, "gpu-paper" the setting of the paper's DiT-S -> DiT-XL table (RTX 3090:
#: 16.5 s / 11.0 s / 1.7 s for 8 images at r = 0 / 0.4 / 1) at fractions 0, 0.2, ..., 1 (the paper's
#: 0.1 grid, ``PAPER_FRACTIONS``, doubles the time: on an H100 in fp32 one DiT-XL/2 run of 100 steps
#: takes seconds, and a repetition of this preset is some 860 of its forward passes).
SUITES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "quick": [("digits", dict(num_steps=10, num_images=16, repetitions=7))],
    "cpu": [
        ("digits", dict(num_steps=10, num_images=16, repetitions=15)),
        ("dit-s-b", dict(num_steps=5, num_images=1, repetitions=3)),
        ("dit-s-xl", dict(num_steps=5, num_images=1, repetitions=3)),
        ("sd15-bksdm-tiny", dict(num_steps=5, num_images=1, repetitions=3, latent_size=16)),
        ("ldm-s-ldm", dict(num_steps=5, num_images=1, repetitions=2, fractions=(0.4,))),  # LDM: ~10 s a call
    ],
    "gpu-paper": [
        ("dit-s-xl", dict(num_steps=100, num_images=8, guidance_scale=1.5, repetitions=3)),
    ],
}


def build_case(name: str, device: torch.device | str = "cpu", seed: int = 0, **options: Any) -> BenchCase:
    """A case of :data:`CASE_BUILDERS` by name, its models on ``device``."""
    if name not in CASE_BUILDERS:
        raise ValueError(f"unknown benchmark case {name!r}; known: {', '.join(CASE_BUILDERS)}")
    return CASE_BUILDERS[name](torch.device(device), seed, **options)


