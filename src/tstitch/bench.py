# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The timing harness behind ``tstitch bench``: stitched sampling held against what it promises.

T-Stitch promises that sampling at fraction ``r`` of the small model takes ``(1 - r) * T_large + r * T_small``
and that the machinery on top of the models costs nothing. For each *case* (a small and a large model, a
scheduler, a step count, a batch) the harness times complete sampling runs of several *configurations*:

- ``stitched@r``: stitched sampling at each fraction ``r`` (``tstitch.sample`` for class-conditional
  models, through :func:`tstitch.study.timed_sample`; a stitched diffusers pipeline for text-conditional
  U-Nets);
- ``plain@r``: the same loop calling the models directly, model ``plan[i]`` at step ``i``, the same number
  of times (``plain@0`` is the large model alone and ``plain@1`` the small model alone: the single-model
  runs);
- ``pipeline`` and ``pipeline-stitched@0``: the user's unstitched diffusers pipeline and the same pipeline
  stitched at fraction 0 (for text-conditional cases ``plain@r`` already runs through the pipeline, so
  ``plain@0`` *is* the unstitched pipeline);
- ``offload@r`` (on CUDA, when asked): stitched sampling with the idle model offloaded to the CPU.

After an untimed warm-up pass, every repetition runs every configuration once, in an order that reverses
from one repetition to the next, so that a machine that speeds up or slows down hits all configurations
alike. Every figure is a ratio of runs made in the same repetition (the median over repetitions, with its
min and max), so it holds on a busy machine:

- overhead: ``stitched@r / plain@r`` (target at most 1.01);
- linearity: ``stitched@r / ((1 - r) * plain@0 + r * plain@1)`` (target 0.98 to 1.02);
- no tax: ``pipeline-stitched@0 / pipeline`` (target at most 1.01);
- speed-up: ``plain@0 / stitched@r`` beside the ideal ``1 / ((1 - r) + r * T_small / T_large)``;
- peak memory: the large model alone against a stitched run, whose difference should be the small
  model's weights plus little else.

The harness also checks that every stitched run used the models of the plan, step by step, and that its
output equals the plain loop's.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fastpaths import FastPaths, compiled_graph_count, disable_offload, enable_offload
from .plan import Plan
from .sampling import guided_output, num_classes_of, sample
from .stitcher import StitchedDenoiser, get_record, stitch
from .study import _pyplot, _save, timed_sample
from .utils import ensure_writable_dir, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "FRACTIONS",
    "PAPER_FRACTIONS",
    "TARGETS",
    "PRESETS",
    "CASE_BUILDERS",
    "BenchCase",
    "BenchSettings",
    "build_case",
    "dit_model",
    "unet_model",
    "run_case",
    "run_bench",
    "plain_sample",
    "dispatch_overhead",
    "machine_info",
    "format_report",
    "plot_times",
]

FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_FRACTIONS = tuple(round(i / 10, 1) for i in range(11))

#: The issue's targets: each a ratio measured within one run of the harness.
TARGETS = {"overhead_max": 1.01, "linearity_min": 0.98, "linearity_max": 1.02, "no_tax_max": 1.01}


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
        if getattr(self.make_scheduler(), "order", 1) != 1:
            raise ValueError(f"case {self.name}: the harness needs a first-order scheduler (one call per step)")

    @property
    def all_fractions(self) -> tuple[float, ...]:
        """The measured fractions, always with 0 and 1 (the single-model runs)."""
        return tuple(sorted({0.0, 1.0, *self.fractions}))


def _ddim(**config: Any) -> Callable[[], Any]:
    from diffusers import DDIMScheduler

    return lambda: DDIMScheduler(**config)


#: The noise schedule of DiT (linear betas) and of Stable Diffusion 1.x (scaled linear), as DDIM.
DIT_SCHEDULER = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                     clip_sample=False, set_alpha_to_one=False)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1)

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


def dit_model(shape: str, device: torch.device | str = "cpu", seed: int = 0) -> nn.Module:
    """A published DiT shape (``DiT-S/2``, ``DiT-B/2``, ``DiT-XL/2``) at 256x256 with random weights."""
    from diffusers import DiTTransformer2DModel

    from .checkpoints import _config

    depth, heads, head_dim = DIT_SHAPES[shape]
    config = _config(heads, head_dim, 4, 8, depth, 32, 2, 1000)
    return _random_model(DiTTransformer2DModel, config, shape, torch.device(device), seed)


def unet_model(name: str, latent_size: int, device: torch.device | str = "cpu", seed: int = 0) -> nn.Module:
    """``"SD-1.x"`` or ``"BK-SDM-Tiny"`` U-Net shapes with random weights, at ``latent_size`` latents."""
    from diffusers import UNet2DConditionModel

    config = {"SD-1.x": SD15_UNET, "BK-SDM-Tiny": BKSDM_TINY_UNET}[name]
    return _random_model(UNet2DConditionModel, {**config, "sample_size": latent_size}, name,
                         torch.device(device), seed)


def _digits_case(device: torch.device, seed: int, **options: Any) -> BenchCase:
    from .zoo import load_family, scheduler_config

    models = load_family(["digits-s", "digits-xl"], device=device)
    return BenchCase(
        name="digits", small=models["digits-s"], large=models["digits-xl"], small_name="digits-s",
        large_name="digits-xl", make_scheduler=_ddim(**scheduler_config(), set_alpha_to_one=False),
        description="the embedded digits family (trained), 8x8x1", **options,
    )


def _dit_case(name: str, small: str, large: str) -> Callable[..., BenchCase]:
    def build(device: torch.device, seed: int, **options: Any) -> BenchCase:
        return BenchCase(
            name=name,
            small=dit_model(small, device, seed), large=dit_model(large, device, seed + 1),
            small_name=small, large_name=large, make_scheduler=_ddim(**DIT_SCHEDULER),
            description=f"{small} -> {large}, 256x256 (32x32x4 latents), random weights", **options,
        )

    return build


def _unet_case(device: torch.device, seed: int, latent_size: int = 16, **options: Any) -> BenchCase:
    return BenchCase(
        name="sd15-bksdm-tiny", small=unet_model("BK-SDM-Tiny", latent_size, device, seed),
        large=unet_model("SD-1.x", latent_size, device, seed + 1), small_name="BK-SDM-Tiny", large_name="SD-1.x",
        make_scheduler=_ddim(**SD_SCHEDULER), conditioning="text",
        description=f"U-Nets of SD-1.x and BK-SDM-Tiny shapes, {latent_size}x{latent_size}x4 latents, random weights",
        **options,
    )


#: Case name -> builder ``(device, seed, **options) -> BenchCase``.
CASE_BUILDERS: dict[str, Callable[..., BenchCase]] = {
    "digits": _digits_case,
    "dit-s-b": _dit_case("dit-s-b", "DiT-S/2", "DiT-B/2"),
    "dit-s-xl": _dit_case("dit-s-xl", "DiT-S/2", "DiT-XL/2"),
    "sd15-bksdm-tiny": _unet_case,
}

#: Named settings: the cases and their options. "cpu" is the full run on a 2-core CPU (minutes), "quick"
#: a check in under 2 minutes, "gpu-paper" the setting of the paper's DiT-S -> DiT-XL table (RTX 3090:
#: 16.5 s / 11.0 s / 1.7 s for 8 images at r = 0 / 0.4 / 1) at fractions 0, 0.2, ..., 1 (the paper's
#: 0.1 grid, ``PAPER_FRACTIONS``, doubles the time: on an H100 in fp32 one DiT-XL/2 run of 100 steps
#: takes seconds, and a repetition of this preset is some 860 of its forward passes).
PRESETS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "quick": [("digits", dict(num_steps=10, num_images=16, repetitions=7))],
    "cpu": [
        ("digits", dict(num_steps=10, num_images=16, repetitions=15)),
        ("dit-s-b", dict(num_steps=5, num_images=1, repetitions=3)),
        ("dit-s-xl", dict(num_steps=5, num_images=1, repetitions=3)),
        ("sd15-bksdm-tiny", dict(num_steps=5, num_images=1, repetitions=3, latent_size=16)),
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


# -- the plain baseline --------------------------------------------------------------------------------------


@torch.no_grad()
def plain_sample(
    models: Sequence[nn.Module],
    plan: Sequence[int],
    scheduler: Any,
    *,
    noise: torch.Tensor,
    class_labels: torch.Tensor,
    num_inference_steps: int,
    guidance_scale: float = 1.0,
    null_class: int | None = None,
) -> torch.Tensor:
    """The loop of :func:`tstitch.sample` with no stitching machinery: ``models[plan[i]]`` is called
    directly at step ``i`` (the baseline of the overhead figure; first-order schedulers)."""
    channels = noise.shape[1]
    use_cfg = guidance_scale > 1.0
    labels = class_labels
    if use_cfg:
        null = num_classes_of(models[-1]) if null_class is None else null_class
        labels = torch.cat([labels, torch.full_like(labels, null)])
    learned_variance = scheduler.config.get("variance_type") in ("learned", "learned_range")
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    for index, t in zip(plan, scheduler.timesteps, strict=True):
        model_input = torch.cat([latents, latents]) if use_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        timestep = t.expand(model_input.shape[0])
        model_output = guided_output(
            models[index](model_input, timestep=timestep, class_labels=labels), channels, guidance_scale,
            keep_variance=learned_variance,
        )
        latents = scheduler.step(model_output, t, latents).prev_sample
    return latents


class _Planned:
    """Stands in for a pipeline's denoiser and calls ``models[plan[i]]`` directly at its ``i``-th call."""

    def __init__(self, models: Sequence[nn.Module], plan: Sequence[int]):
        self._models = list(models)
        self._plan = list(plan)
        self._calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        index = self._plan[self._calls]
        self._calls += 1
        return self._models[index](*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # config, dtype, device ... are the large model's
        return getattr(self._models[-1], name)


# -- runs ------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    output = fn()
    _sync(device)
    return time.perf_counter() - start, output


@dataclass
class _Run:
    seconds: float
    latents: torch.Tensor | None = None
    per_step: list[int] | None = None
    offload_seconds: float | None = None


def _fraction_of(config: str) -> float:
    return float(config.split("@")[1])


def _stand_in_vae(latent_channels: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A one-block VAE (scale factor 1): the pipelines need one; its decode is the same in every run."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8], in_channels=3, out_channels=3, latent_channels=latent_channels,
                        down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"],
                        norm_num_groups=2, layers_per_block=1)
    vae = vae.to(device)
    if dtype != torch.float32:  # diffusers warns at every cast with a dtype, even to float32
        vae = vae.to(dtype)
    return vae.eval().requires_grad_(False)


class _Runner:
    """Runs the configurations of one case (subclasses: class- and text-conditional)."""

    def __init__(self, case: BenchCase, seed: int, offload_fraction: float | None):
        self.case = case
        self.seed = seed
        self.device = next(case.large.parameters()).device
        self.dtype = next(case.large.parameters()).dtype
        self.models = [case.small, case.large]
        self.offload_fraction = offload_fraction

    def plan(self, fraction: float, num_steps: int) -> list[int]:
        return Plan.from_small_fractions(fraction).assignment(num_steps)

    def groups(self) -> list[list[str]]:
        """The configurations, in groups whose members are compared with each other and so run back to
        back: ``plain@r`` with ``stitched@r`` (and ``offload@r``), the pipeline pair."""
        groups = [[f"plain@{r:g}", f"stitched@{r:g}"] for r in self.case.all_fractions]
        if self.pipeline_configs():
            groups.append(self.pipeline_configs())
        if self.offload_fraction is not None:
            offload = f"offload@{self.offload_fraction:g}"
            home = next((g for g in groups if f"stitched@{self.offload_fraction:g}" in g), None)
            if home is not None:
                home.append(offload)
            else:
                groups.append([offload])
        return groups

    def warmup_configs(self) -> list[str]:
        """One configuration of each kind, every model reached (warm-up and compilation)."""
        names = ["plain@0", "plain@1", "stitched@0", "stitched@1", *self.pipeline_configs()]
        if self.offload_fraction is not None:
            names.append(f"offload@{self.offload_fraction:g}")
        return list(dict.fromkeys(names))

    def pipeline_configs(self) -> list[str]:
        return []

    def run(self, config: str, num_steps: int | None = None) -> _Run:
        steps = num_steps or self.case.num_steps
        kind, fraction = config.split("@")[0], _fraction_of(config) if "@" in config else None
        return getattr(self, f"_run_{kind.replace('-', '_')}")(fraction, steps)


class _ClassRunner(_Runner):
    """Class-conditional DiT-style models: ``tstitch.sample`` against :func:`plain_sample`, and a
    ``DiTPipeline`` unstitched and stitched at fraction 0."""

    def __init__(self, case: BenchCase, seed: int, offload_fraction: float | None):
        super().__init__(case, seed, offload_fraction)
        from diffusers import DiTPipeline

        config = case.large.config
        generator = torch.Generator().manual_seed(seed)
        shape = (case.num_images, config.in_channels, config.sample_size, config.sample_size)
        self.noise = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        self.labels = (torch.arange(case.num_images) % num_classes_of(case.large)).to(self.device)
        vae = _stand_in_vae(config.in_channels, self.device, self.dtype)
        self.pipes = {}
        for key in ("pipeline", "pipeline-stitched"):
            pipe = DiTPipeline(transformer=case.large, vae=vae, scheduler=case.make_scheduler())
            pipe.set_progress_bar_config(disable=True)
            self.pipes[key] = pipe
        stitch(self.pipes["pipeline-stitched"], case.small, 0.0)

    def pipeline_configs(self) -> list[str]:
        return ["pipeline", "pipeline-stitched@0"]

    def _sample_kwargs(self, steps: int) -> dict[str, Any]:
        return dict(noise=self.noise, class_labels=self.labels, num_inference_steps=steps,
                    guidance_scale=self.case.guidance_scale)

    def _run_plain(self, fraction: float, steps: int) -> _Run:
        plan = self.plan(fraction, steps)
        scheduler = self.case.make_scheduler()
        seconds, latents = _timed(lambda: plain_sample(self.models, plan, scheduler, **self._sample_kwargs(steps)),
                                  self.device)
        return _Run(seconds, latents, plan)

    def _run_stitched(self, fraction: float, steps: int) -> _Run:
        latents, seconds, per_step = timed_sample(
            self.models, [fraction], self.case.make_scheduler, self.noise, self.labels, num_steps=steps,
            guidance_scale=self.case.guidance_scale, batch_size=self.case.num_images,
        )
        return _Run(seconds, latents, per_step)

    def _run_offload(self, fraction: float, steps: int) -> _Run:
        denoiser = StitchedDenoiser(self.models, Plan.from_small_fractions(fraction))
        switch = enable_offload(denoiser, self.device)
        scheduler = self.case.make_scheduler()
        try:
            seconds, output = _timed(lambda: sample(denoiser, None, scheduler, **self._sample_kwargs(steps)),
                                     self.device)
        finally:
            disable_offload(denoiser)
        return _Run(seconds, output.latents, output.record.model_per_step(), switch.seconds)

    def _pipeline_call(self, key: str, steps: int) -> _Run:
        pipe = self.pipes[key]
        labels = self.labels.tolist()
        seconds, _ = _timed(lambda: pipe(class_labels=labels, guidance_scale=self.case.guidance_scale,
                                         generator=torch.Generator().manual_seed(self.seed),
                                         num_inference_steps=steps, output_type="pt"), self.device)
        per_step = get_record(pipe).model_per_step() if key == "pipeline-stitched" else None
        return _Run(seconds, None, per_step)

    def _run_pipeline(self, fraction: None, steps: int) -> _Run:
        return self._pipeline_call("pipeline", steps)

    def _run_pipeline_stitched(self, fraction: float, steps: int) -> _Run:
        return self._pipeline_call("pipeline-stitched", steps)


class _TextRunner(_Runner):
    """Text-conditional U-Nets: a ``StableDiffusionPipeline`` stitched, against the same pipeline calling
    the models directly (``plain@0`` is the unstitched pipeline, ``plain@1`` the small model's)."""

    def __init__(self, case: BenchCase, seed: int, offload_fraction: float | None):
        super().__init__(case, seed, offload_fraction)
        config = case.large.config
        generator = torch.Generator().manual_seed(seed)
        shape = (case.num_images, case.text_tokens, config.cross_attention_dim)
        self.prompt = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        self.negative = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        self.vae = _stand_in_vae(config.in_channels, self.device, self.dtype)
        self.size = config.sample_size
        self.pipes: dict[str, Any] = {}

    def _pipe(self, key: str, small_fraction: float | None = None) -> Any:
        """The pipeline named ``key`` (made once; stitched at ``small_fraction`` when given)."""
        from diffusers import StableDiffusionPipeline

        if key not in self.pipes:
            pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=None, tokenizer=None, unet=self.case.large,
                                           scheduler=self.case.make_scheduler(), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            if small_fraction is not None:
                stitch(pipe, self.case.small, small_fraction)
            self.pipes[key] = pipe
        return self.pipes[key]

    def _call(self, pipe: Any, steps: int) -> tuple[float, torch.Tensor]:
        return _timed(lambda: pipe(
            prompt_embeds=self.prompt, negative_prompt_embeds=self.negative, height=self.size, width=self.size,
            num_inference_steps=steps, guidance_scale=self.case.guidance_scale, output_type="latent",
            generator=torch.Generator().manual_seed(self.seed),
        ).images, self.device)

    def _run_plain(self, fraction: float, steps: int) -> _Run:
        plan = self.plan(fraction, steps)
        if fraction == 0.0:
            pipe = self._pipe("large")  # the user's unstitched pipeline
        else:
            pipe = self._pipe("plain")
            denoiser = self.case.small if fraction == 1.0 else _Planned(self.models, plan)
            object.__setattr__(pipe, "unet", denoiser)  # as stitch() does: no config rewrite
        seconds, latents = self._call(pipe, steps)
        return _Run(seconds, latents, plan)

    def _run_stitched(self, fraction: float, steps: int) -> _Run:
        pipe = self._pipe(f"stitched@{fraction:g}", fraction)
        seconds, latents = self._call(pipe, steps)
        return _Run(seconds, latents, get_record(pipe).model_per_step())

    def _run_offload(self, fraction: float, steps: int) -> _Run:
        pipe = self._pipe(f"offload@{fraction:g}", fraction)
        switch = enable_offload(pipe, self.device)
        try:
            seconds, latents = self._call(pipe, steps)
        finally:
            disable_offload(pipe)
        return _Run(seconds, latents, get_record(pipe).model_per_step(), switch.seconds)


def _runner(case: BenchCase, seed: int, offload_fraction: float | None) -> _Runner:
    return (_ClassRunner if case.conditioning == "class" else _TextRunner)(case, seed, offload_fraction)


# -- memory ------------------------------------------------------------------------------------------------------


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


class _RSS:
    """Peak resident memory of this process during a block, on Linux (``/proc/self``).

    Before the block, ``malloc_trim(0)`` hands the heap's free pages back to the system (so that a buffer
    reused from an earlier run counts again when it is touched) and ``clear_refs`` resets the high-water
    mark to the current resident set. The allocator's settings are left alone: timings are not disturbed.
    """

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/self/clear_refs")
        self._libc = None
        with contextlib.suppress(OSError):
            self._libc = ctypes.CDLL("libc.so.6")

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"no {key} in /proc/self/status")

    def peak_delta(self, fn: Callable[[], Any]) -> int:
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        before = self._status("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        fn()
        return self._status("VmHWM") - before


def _measure_memory(runner: _Runner) -> dict[str, Any]:
    """Peak memory of the large model alone, of a stitched run and (when on) of an offloaded stitched run.

    On CUDA each peak is measured whole: ``torch.cuda.max_memory_allocated`` over the run, with the small
    model moved to the CPU for the runs that do not hold it on the GPU. On CPU it is the weights the run
    holds (counted from the tensors) plus the rise of the resident set over the run (measured). One step
    of each model is enough: the peak of a run is that of its largest step.
    """
    device, case = runner.device, runner.case
    steps = 2
    small_bytes = _weight_bytes(case.small)
    configs = {"large_alone": "plain@0", "stitched": "stitched@0.5"}
    if runner.offload_fraction is not None:
        configs["offloaded"] = "offload@0.5"
    result: dict[str, Any] = {"steps": steps, "small_weight_bytes": small_bytes,
                              "large_weight_bytes": _weight_bytes(case.large)}
    if device.type == "cuda":
        result["method"] = ("torch.cuda.max_memory_allocated() over the run: weights, activations and the "
                            "pipeline's stand-in VAE; the small model waits on the CPU in the runs that do not "
                            "keep it on the GPU")
        for label, config in configs.items():
            away = [] if label == "stitched" else [case.small]
            for model in away:
                model.to("cpu")
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            runner.run(config, steps)
            torch.cuda.synchronize(device)
            result[label] = {"config": config, "peak_bytes": torch.cuda.max_memory_allocated(device)}
            for model in away:
                model.to(device)
    else:
        rss = _RSS()
        if not rss.available:
            return {"method": "unavailable (no /proc/self/clear_refs)"}
        result["method"] = ("weights held (counted from the tensors) + rise of the resident set over the run "
                            "(VmHWM after clear_refs minus VmRSS before, the heap's free pages handed back with "
                            "malloc_trim first)")
        for label, config in configs.items():
            held = _weight_bytes(case.large) + (small_bytes if label == "stitched" else 0)
            rise = rss.peak_delta(lambda config=config: runner.run(config, steps))
            result[label] = {"config": config, "weight_bytes": held, "rss_rise_bytes": rise, "peak_bytes": held + rise}
    extra = result["stitched"]["peak_bytes"] - result["large_alone"]["peak_bytes"]
    result["stitched_minus_large_bytes"] = extra
    result["beyond_small_weights_bytes"] = extra - small_bytes
    return result


# -- statistics ----------------------------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _paired(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """The ratio within each repetition (median, min, max), and the ratio of the fastest runs (``fastest``:
    on a busy machine noise only adds time, so the fastest runs are the least disturbed)."""
    ratios = _stats([a / b for a, b in zip(numerators, denominators, strict=True)])
    return {**ratios, "fastest": min(numerators) / min(denominators)}


def _case_rows(case: BenchCase, seconds: dict[str, list[float]], diffs: dict[float, float]) -> list[dict[str, Any]]:
    images = case.num_images
    large, small = seconds["plain@0"], seconds["plain@1"]
    t_large, t_small = statistics.median(large), statistics.median(small)
    rows = []
    for r in case.all_fractions:
        stitched, plain = seconds[f"stitched@{r:g}"], seconds[f"plain@{r:g}"]
        small_steps = Plan.from_small_fractions(r).steps_per_model(case.num_steps)[0]
        e = small_steps / case.num_steps  # the fraction of steps the small model really ran
        ideal = [(1 - e) * a + e * b for a, b in zip(large, small, strict=True)]
        rows.append({
            "fraction": r,
            "small_steps": small_steps,
            "effective_fraction": e,
            "seconds_per_image": statistics.median(stitched) / images,
            "seconds_per_image_min": min(stitched) / images,
            "seconds_per_image_max": max(stitched) / images,
            "plain_seconds_per_image": statistics.median(plain) / images,
            "ideal_seconds_per_image": ((1 - e) * t_large + e * t_small) / images,
            "overhead": _paired(stitched, plain),
            "linearity": {**_paired(stitched, ideal),
                          "fastest": min(stitched) / ((1 - e) * min(large) + e * min(small))},
            "speedup": _paired(large, stitched),
            "ideal_speedup": 1.0 / ((1 - e) + e * t_small / t_large),
            "max_abs_diff_vs_plain": diffs.get(r),
        })
    return rows


# -- the harness ---------------------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """How to run the harness (the cases carry their own steps, images and repetitions)."""

    seed: int = 0
    fast: FastPaths = field(default_factory=FastPaths)
    memory: bool = True
    offload_fraction: float = 0.4
    warmup_steps: int = 1
    dispatch_calls: int = 2000


def _interleaved(groups: Sequence[Sequence[str]], repetitions: int) -> Iterator[tuple[int, str]]:
    """Every configuration once per repetition: the members of a group back to back, their order reversed
    every other repetition, and the groups in an order rotated by one at each repetition."""
    for rep in range(repetitions):
        shift = rep % len(groups)
        for group in [*groups[shift:], *groups[:shift]]:
            for config in (group if rep % 2 == 0 else list(reversed(group))):
                yield rep, config


def _check_plan(runner: _Runner, config: str, run: _Run, steps: int) -> None:
    if run.per_step is None or "@" not in config:
        return
    expected = runner.plan(_fraction_of(config), steps)
    if run.per_step != expected:
        raise RuntimeError(f"{runner.case.name} {config}: models per step {run.per_step}, the plan says {expected}")


def run_case(case: BenchCase, settings: BenchSettings,
             checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Time one case (warm-up, interleaved repetitions, memory); returns its results dictionary.

    ``checkpoint``, if given, receives the results so far after each repetition (for a run cut short).
    """
    case.validate()
    settings.fast.apply([case.small, case.large])
    device = next(case.large.parameters()).device
    offload = settings.offload_fraction if settings.fast.offload and device.type == "cuda" else None
    if settings.fast.offload and offload is None:
        logger.info(f"{case.name}: offloading needs a CUDA device; skipped on {device.type}")
    runner = _runner(case, settings.seed, offload)
    groups = runner.groups()
    configs = [config for group in groups for config in group]

    # Warm-up: one configuration of each kind; with compilation twice, the difference being compile time.
    passes = []
    for _ in range(2 if settings.fast.compile else 1):
        start = time.perf_counter()
        for config in runner.warmup_configs():
            runner.run(config, settings.warmup_steps)
        passes.append(time.perf_counter() - start)
    graphs_before = compiled_graph_count() if settings.fast.compile else None

    seconds: dict[str, list[float]] = {config: [] for config in configs}
    offload_seconds: list[float] = []
    first_latents: dict[str, torch.Tensor] = {}

    def results_so_far() -> dict[str, Any]:
        result = _case_result(case, runner, seconds, first_latents)
        result["warmup_seconds"] = passes
        if graphs_before is not None:
            result["compile"] = {"compile_seconds": passes[0] - passes[1],
                                 "graphs_compiled_during_timing": compiled_graph_count() - graphs_before,
                                 "method": "first warm-up pass minus the second, identical one"}
        if offload is not None:
            key, stitched = f"offload@{offload:g}", f"stitched@{offload:g}"
            result["offload"] = {
                "fraction": offload,
                "seconds_per_image": statistics.median(seconds[key]) / case.num_images,
                "ratio_vs_stitched": _paired(seconds[key], seconds[stitched]) if stitched in seconds else None,
                "transfer_seconds_per_run": _stats(offload_seconds),
            }
        return result

    logger.info(f"{case.name}: {len(configs)} configurations x {case.repetitions} repetitions")
    done, rep_start = 0, time.perf_counter()
    for rep, config in _interleaved(groups, case.repetitions):
        run = runner.run(config)
        _check_plan(runner, config, run, case.num_steps)
        seconds[config].append(run.seconds)
        if run.offload_seconds is not None:
            offload_seconds.append(run.offload_seconds)
        if rep == 0 and run.latents is not None:
            first_latents[config] = run.latents
        done += 1
        if done % len(configs) == 0:
            logger.info(f"{case.name}: repetition {rep + 1}/{case.repetitions} done "
                        f"({time.perf_counter() - rep_start:.0f} s)")
            rep_start = time.perf_counter()
            if checkpoint is not None and rep + 1 < case.repetitions:
                checkpoint(results_so_far())
    result = results_so_far()
    if settings.memory:
        logger.info(f"{case.name}: peak memory")
        result["memory"] = _measure_memory(runner)
    return result


def _case_result(case: BenchCase, runner: _Runner, seconds: dict[str, list[float]],
                 first_latents: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The results of a case from the seconds of its runs (complete repetitions)."""
    # The stitched runs must compute what the plain loop computes.
    diffs = {
        r: float((first_latents[f"stitched@{r:g}"].float() - first_latents[f"plain@{r:g}"].float()).abs().max())
        for r in case.all_fractions if f"stitched@{r:g}" in first_latents and f"plain@{r:g}" in first_latents
    }
    result: dict[str, Any] = {
        "name": case.name,
        "description": case.description,
        "conditioning": case.conditioning,
        "small": {"name": case.small_name, "parameters": sum(p.numel() for p in case.small.parameters()),
                  "weight_bytes": _weight_bytes(case.small)},
        "large": {"name": case.large_name, "parameters": sum(p.numel() for p in case.large.parameters()),
                  "weight_bytes": _weight_bytes(case.large)},
        "num_steps": case.num_steps,
        "num_images": case.num_images,
        "guidance_scale": case.guidance_scale,
        "scheduler": type(case.make_scheduler()).__name__,
        "dtype": str(runner.dtype).replace("torch.", ""),
        "repetitions": len(seconds["plain@0"]),
        "repetitions_planned": case.repetitions,
        "order": "each repetition runs every configuration once: plain@r and stitched@r back to back (their "
                 "order alternating), the pipeline pair back to back, the groups rotated by one each repetition",
        "runs": {config: {"seconds": list(values), **_stats(values)} for config, values in seconds.items()},
        "rows": _case_rows(case, seconds, diffs),
    }
    no_tax_base = "pipeline" if "pipeline" in seconds else "plain@0"
    no_tax_stitched = "pipeline-stitched@0" if "pipeline" in seconds else "stitched@0"
    result["no_tax"] = {
        "baseline": no_tax_base if no_tax_base == "pipeline" else "plain@0 (the unstitched pipeline)",
        "stitched": no_tax_stitched,
        "ratio": _paired(seconds[no_tax_stitched], seconds[no_tax_base]),
        "baseline_seconds_per_image": statistics.median(seconds[no_tax_base]) / case.num_images,
    }
    return result


class _Nop(nn.Module):
    def forward(self, sample: torch.Tensor, timestep: Any = None, class_labels: Any = None) -> torch.Tensor:
        return sample


class _NullScheduler:
    """Just enough of a scheduler for the stitched denoiser to count steps on."""

    order = 1
    config: dict[str, Any] = {}

    def __init__(self, num_steps: int):
        self.num_inference_steps = num_steps
        self.timesteps = list(range(num_steps))

    def set_timesteps(self, num_steps: int) -> None:
        self.num_inference_steps = num_steps

    def step(self) -> None:
        return None


def dispatch_overhead(calls: int = 2000, repeats: int = 5) -> dict[str, float]:
    """Microseconds per step that stitching adds: a do-nothing model called through a bound
    :class:`StitchedDenoiser` (with its counted scheduler step) against the same model called directly."""
    x = torch.zeros(1)

    def loop(model: Callable[..., Any], scheduler: _NullScheduler) -> float:
        best = math.inf
        for _ in range(repeats):
            scheduler.set_timesteps(calls)
            start = time.perf_counter()
            for t in range(calls):
                model(x, timestep=t)
                scheduler.step()
            best = min(best, time.perf_counter() - start)
        return best / calls * 1e6

    small, large = _Nop(), _Nop()
    direct = loop(large, _NullScheduler(calls))
    scheduler = _NullScheduler(calls)
    denoiser = StitchedDenoiser([small, large], Plan.from_small_fractions(0.4)).bind(scheduler)
    try:
        stitched = loop(denoiser, scheduler)
    finally:
        denoiser.unbind()
    return {"direct_us_per_step": direct, "stitched_us_per_step": stitched, "overhead_us_per_step": stitched - direct}


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on."""
    import diffusers

    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["label"] = f"{info['gpu']}, torch {torch.__version__} (CUDA {torch.version.cuda})"
    else:
        info["label"] = (f"{cpu} ({info['usable_cpus']} CPUs), {info['torch_threads']} torch threads, "
                         f"torch {torch.__version__}")
    return info


def _summary(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The worst value of each target over all cases and fractions: of the per-repetition medians (``value``,
    judged against the target) and of the fastest-run ratios (``fastest``)."""
    ratios = {
        "overhead": [(row["overhead"], f"{c['name']} r={row['fraction']:g}") for c in cases for row in c["rows"]],
        "linearity": [(row["linearity"], f"{c['name']} r={row['fraction']:g}") for c in cases for row in c["rows"]],
        "no_tax": [(c["no_tax"]["ratio"], c["name"]) for c in cases],
    }
    summary: dict[str, Any] = {}
    for key, target in TARGETS.items():
        name, side = key.rsplit("_", 1)
        values = ratios[name]
        if not values:
            summary[key] = None
            continue
        pick = min if side == "min" else max
        stats, where = pick(values, key=lambda item: item[0]["median"])
        fastest, fastest_where = pick(values, key=lambda item: item[0]["fastest"])
        met = stats["median"] >= target if side == "min" else stats["median"] <= target
        summary[key] = {"value": stats["median"], "where": where, "target": target, "met": met,
                        "fastest": fastest["fastest"], "fastest_where": fastest_where}
    return summary


def run_bench(
    cases: Sequence[BenchCase | tuple[str, dict[str, Any]]],
    out_dir: str | Path | None = None,
    settings: BenchSettings | None = None,
    *,
    device: torch.device | str = "cpu",
    preset: str | None = None,
) -> dict[str, Any]:
    """Run the harness over ``cases`` (ready :class:`BenchCase` objects, or ``(name, options)`` built on
    ``device`` one at a time so that only one pair is in memory) and write ``bench.json`` and ``bench.png``
    into ``out_dir`` (when given), after each repetition (``"complete": false`` until the end), so that a run
    cut short keeps what it measured. Returns the results dictionary."""
    settings = settings or BenchSettings()
    out = ensure_writable_dir(out_dir) if out_dir is not None else None
    started = time.perf_counter()
    machine = machine_info(device)
    results: dict[str, Any] = {
        "machine": machine,
        "preset": preset,
        "fast_paths": settings.fast.as_dict(),
        "fast_paths_label": str(settings.fast),
        "targets": dict(TARGETS),
        "dispatch": dispatch_overhead(settings.dispatch_calls),
        "cases": [],
        "complete": False,
    }
    finished: list[dict[str, Any]] = []

    def save(partial: dict[str, Any] | None = None) -> None:
        results["cases"] = finished + ([partial] if partial is not None else [])
        results["summary"] = _summary(results["cases"])
        machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        results["wall_seconds"] = time.perf_counter() - started
        results["complete"] = partial is None and len(finished) == len(cases)
        if out is not None:
            write_json(out / "bench.json", results)
            plot_times(results, out / "bench.png")

    for entry in cases:
        if isinstance(entry, BenchCase):
            case = entry
        else:
            name, options = entry
            logger.info(f"{name}: building the models")
            case = build_case(name, device, settings.seed, **options)
        logger.info(f"{case.name}: {case.small_name} -> {case.large_name}, {case.num_steps} steps, "
                    f"{case.num_images} images, guidance {case.guidance_scale:g}")
        finished.append(run_case(case, settings, checkpoint=save))
        del case
        gc.collect()
        save()
    return results


# -- report -----------------------------------------------------------------------------------------------------


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def _ratio(stats: dict[str, float]) -> str:
    return f"{stats['median']:.3f} [{stats['min']:.3f}-{stats['max']:.3f}]"


def format_report(results: dict[str, Any]) -> str:
    """The tables the CLI prints: per case, time per image and the ratios at each fraction."""
    lines = [f"machine: {results['machine']['label']}; fast paths: {results['fast_paths_label']}"]
    dispatch = results["dispatch"]
    lines.append(f"stitching dispatch: {dispatch['overhead_us_per_step']:.1f} us per step ("
                 f"{dispatch['stitched_us_per_step']:.1f} vs {dispatch['direct_us_per_step']:.1f} us, no-op model)")
    for case in results["cases"]:
        lines.append("")
        lines.append(f"{case['name']}: {case['small']['name']} ({case['small']['parameters'] / 1e6:.1f}M) -> "
                     f"{case['large']['name']} ({case['large']['parameters'] / 1e6:.1f}M), {case['scheduler']} "
                     f"{case['num_steps']} steps, {case['num_images']} images, guidance {case['guidance_scale']:g}, "
                     f"{case['dtype']}, {case['repetitions']} repetitions (median [min-max])")
        lines.append(f"  {'r':>4} {'ms/img':>10} {'ideal':>10} {'overhead':>21} {'linearity':>21} "
                     f"{'speed-up':>21} {'ideal':>6}")
        for row in case["rows"]:
            lines.append(
                f"  {row['fraction']:>4.2g} {1000 * row['seconds_per_image']:>10.2f} "
                f"{1000 * row['ideal_seconds_per_image']:>10.2f} {_ratio(row['overhead']):>21} "
                f"{_ratio(row['linearity']):>21} {_ratio(row['speedup']):>21} {row['ideal_speedup']:>5.2f}x"
            )
        no_tax = case["no_tax"]
        lines.append(f"  no tax: stitched at r=0 / {no_tax['baseline']}: {_ratio(no_tax['ratio'])}")
        diffs = [row["max_abs_diff_vs_plain"] for row in case["rows"] if row["max_abs_diff_vs_plain"] is not None]
        if diffs:
            lines.append(f"  stitched output vs plain loop: max |difference| {max(diffs):.3g}")
        memory = case.get("memory")
        if memory and "stitched" in memory:
            lines.append(
                f"  peak memory: large alone {_mib(memory['large_alone']['peak_bytes'])}, stitched "
                f"{_mib(memory['stitched']['peak_bytes'])}: +{_mib(memory['stitched_minus_large_bytes'])} = small "
                f"weights {_mib(memory['small_weight_bytes'])} {memory['beyond_small_weights_bytes']:+,} bytes"
            )
            if "offloaded" in memory:
                lines.append(f"  peak memory with offloading: {_mib(memory['offloaded']['peak_bytes'])}")
        if "compile" in case:
            compiled = case["compile"]
            lines.append(f"  compile: {compiled['compile_seconds']:.1f} s (apart from sampling); graphs compiled "
                         f"during the timed runs: {compiled['graphs_compiled_during_timing']}")
        if "offload" in case:
            offload = case["offload"]
            ratio = offload["ratio_vs_stitched"]
            lines.append(f"  offload at r={offload['fraction']:g}: {1000 * offload['seconds_per_image']:.2f} ms/img"
                         + (f", {_ratio(ratio)}x the stitched run" if ratio else "")
                         + f", transfers {offload['transfer_seconds_per_run']['median']:.3f} s per run")
    lines.append("")
    lines.append("targets (worst median of the per-repetition ratios; in brackets the worst ratio of the fastest "
                 "runs):")
    for key, entry in results["summary"].items():
        if entry is not None:
            lines.append(f"  {key.replace('_', ' '):<14} {entry['value']:.3f} at {entry['where']:<22} target "
                         f"{entry['target']}: {'met' if entry['met'] else 'MISSED'}  [{entry['fastest']:.3f} at "
                         f"{entry['fastest_where']}]")
    return "\n".join(lines)


def plot_times(results: dict[str, Any], path: str | Path) -> Path:
    """Time per image against the fraction of the small model, one panel per case: measured points (median,
    min-max bars), the plain loop, and the ideal line ``(1 - r) * T_large + r * T_small``."""
    plt = _pyplot()
    cases = results["cases"]
    columns = min(len(cases), 2)
    rows_of_panels = math.ceil(len(cases) / columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(5.2 * columns, 3.9 * rows_of_panels + 0.4),
                             squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases):
        rows = case["rows"]
        x = [row["effective_fraction"] for row in rows]
        y = [1000 * row["seconds_per_image"] for row in rows]
        low = [y_ - 1000 * row["seconds_per_image_min"] for y_, row in zip(y, rows, strict=True)]
        high = [1000 * row["seconds_per_image_max"] - y_ for y_, row in zip(y, rows, strict=True)]
        ends = [rows[0], rows[-1]]
        ax.plot([r["effective_fraction"] for r in ends], [1000 * r["ideal_seconds_per_image"] for r in ends], "--",
                color="tab:green", label="ideal (1-r) T_large + r T_small", zorder=1)
        ax.scatter(x, [1000 * row["plain_seconds_per_image"] for row in rows], marker="x", color="gray",
                   label="plain loop", zorder=2)
        ax.errorbar(x, y, yerr=[low, high], fmt="o", color="tab:blue", capsize=3, label="stitched (median, min-max)",
                    zorder=3)
        ax.set_title(f"{case['name']}: {case['small']['name']} -> {case['large']['name']}\n"
                     f"{case['num_steps']} steps, {case['num_images']} images", fontsize=9)
        ax.set_xlabel("fraction of steps on the small model")
        ax.set_ylabel("ms per image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"time per image against the fraction of the small model: {results['machine']['label']}"
                 f" ({results['fast_paths_label']})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path)
