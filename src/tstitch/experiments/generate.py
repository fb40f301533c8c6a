# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Sampling images with loaded, stitchable models: what ``tstitch sample`` runs.

Two kinds of loaded models (both built by :mod:`tstitch.models.presets`):

* :class:`ClassConditionalModels`: class-conditional DiTs (the published DiT pairs, the embedded digits
  family), sampled with the bare loop :func:`tstitch.sample` under any diffusers scheduler, or with the
  published DiT sampler :func:`tstitch.official.sample_official`; latents are decoded by a VAE (or are the
  pixels, for the digits family).
* :class:`StitchedPipeline`: a diffusers pipeline (Stable Diffusion, SDXL, ...) stitched in place with
  :func:`tstitch.stitch`; the text encoders, tokenizers and VAE are the large pipeline's.

:func:`generate` samples with a stitch and, on request, with the large model alone from the same noise,
timing both; :func:`save_images` writes the images as PNG files.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..caching import cache_settings, cached, disable_cache, enable_cache
from ..models.families import denoiser_of, official_sampler
from ..models.fastpaths import FastPaths
from ..models.loaded import MODES, OFFICIAL_MODES, ClassConditionalModels, LoadedModels, Mode, StitchedPipeline
from ..plan import Plan
from ..planfile import plan_to_dict
from ..sampling import make_scheduler, sample, scheduler_name
from ..sampling.checks import check_guidance_scale
from ..sampling.official import SAMPLERS as OFFICIAL_SAMPLERS
from ..sampling.schedulers import check_scheduler
from ..sampling.timing import Stopwatch, warm_up, warmup_fractions
from ..stitcher import StitchedDenoiser, get_record, stitch
from ..utils import atomic_write, ensure_writable_dir, write_json
from .plots import plot_grid
from .sample_plans import check_plan, plan_text, run_plan

logger = logging.getLogger(__name__)

__all__ = [
    "SampleOptions",
    "RunResult",
    "GenerateResult",
    "generate",
    "save_images",
]

# -- requests and results ----------------------------------------------------------------------------------


@dataclass
class SampleOptions:
    """One ``tstitch sample`` request; ``None`` fields take the loaded models' defaults.

    ``num_images`` images are sampled (default: one per class label or prompt, labels and prompts are
    repeated in turn to fill it), ``batch_size`` of them per model call (default: all at once). The
    initial noise of all images is drawn at once from ``seed``, so with a deterministic sampler (DDIM,
    the published DDIM) an image does not depend on the batch size or the fraction's noise draws.
    """

    fractions: Sequence[float] | None = None
    #: A :class:`~tstitch.plan.Plan` instead of ``fractions`` (e.g. a per-step plan from ``tstitch tune``); a
    #: per-step plan fixes the step count and runs in the bare loop (not the published sampler).
    plan: Plan | None = None
    num_steps: int | None = None
    scheduler: str | None = None
    mode: Mode | None = None
    guidance_scale: float | None = None
    class_labels: Sequence[int] | None = None
    prompts: Sequence[str] | None = None
    negative_prompt: str | None = None
    num_images: int | None = None
    batch_size: int | None = None
    seed: int = 0
    size: int | None = None
    progress: bool = True
    warmup: bool = True
    #: Speed options for the denoisers of class-conditional models in the bare loop (None: none); applied
    #: to the loaded models in place. The published sampler (``mode="official"``) and pipelines run without.
    fast: FastPaths | None = None
    #: Caches of the stitched run, ``{model index: config}`` (:func:`tstitch.caching.enable_cache`); not official mode.
    cache: dict[int, Any] | None = None


@dataclass
class RunResult:
    """One sampling run: its images and what ran when."""

    label: str
    images: torch.Tensor
    seconds: float
    model_names: list[str]
    fractions: tuple[float, ...]
    steps_per_model: list[int]
    model_per_step: list[int]
    model_seconds: list[float]
    #: The per-step plan's text form (``S8 > XL12``) when the run followed one.
    plan: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "plan": self.plan,
            "seconds": self.seconds,
            "models": list(self.model_names),
            "fractions": list(self.fractions),
            "steps_per_model": list(self.steps_per_model),
            "model_per_step": list(self.model_per_step),
            "model_seconds": list(self.model_seconds),
        }


@dataclass
class GenerateResult:
    """The stitched run and, with ``compare``, the large model alone from the same noise."""

    stitched: RunResult
    baseline: RunResult | None
    settings: dict[str, Any]

    @property
    def speedup(self) -> float | None:
        """End-to-end time of the large model alone over the stitched run's."""
        if self.baseline is None or self.stitched.seconds <= 0:
            return None
        return self.baseline.seconds / self.stitched.seconds

    @property
    def denoiser_speedup(self) -> float | None:
        """The same ratio over the time spent in the denoisers only."""
        if self.baseline is None or sum(self.stitched.model_seconds) <= 0:
            return None
        return sum(self.baseline.model_seconds) / sum(self.stitched.model_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "stitched": self.stitched.as_dict(),
            "baseline": None if self.baseline is None else self.baseline.as_dict(),
            "speedup": self.speedup,
            "denoiser_speedup": self.denoiser_speedup,
        }


# -- resolving a request -----------------------------------------------------------------------------------


def _full_fractions(fractions: Sequence[float], num_models: int) -> tuple[float, ...]:
    if len(fractions) != num_models - 1:
        if num_models == 2:
            raise ValueError(f"2 models take one fraction (--fraction), got {len(fractions)}: {list(fractions)}")
        raise ValueError(
            f"{num_models} models take {num_models - 1} fractions (--fractions, smallest model first), "
            f"got {len(fractions)}: {list(fractions)}"
        )
    return Plan.from_small_fractions(list(fractions)).fractions


def _cycle(values: Sequence[Any], count: int) -> list[Any]:
    return [values[i % len(values)] for i in range(count)]


def _resolve(loaded: LoadedModels, options: SampleOptions) -> dict[str, Any]:
    """Every setting of the run, defaults filled in and checked; raises ``ValueError`` before any work."""
    defaults = loaded.defaults
    num_models = len(loaded.names)
    plan = check_plan(options.plan, options.fractions, options.num_steps, loaded.names)
    fractions = tuple(options.fractions) if options.fractions is not None else defaults.fractions
    if num_models == 1:
        fractions = ()
    if plan is not None:
        full = plan.fractions or tuple(n / plan.num_steps for n in plan.steps_per_model(plan.num_steps))
    else:
        full = _full_fractions(fractions, num_models) if num_models > 1 else (1.0,)
    mode = options.mode or defaults.mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if plan is not None and plan.is_sequence and mode in OFFICIAL_MODES:
        raise ValueError(f"a per-step plan ({plan}) runs in the bare loop, not the published DiT sampler "
                         f"(mode {mode!r}): use --mode diffusers")
    scheduler = options.scheduler or defaults.scheduler
    if scheduler is not None:
        scheduler = scheduler_name(scheduler)
    steps = options.num_steps if options.num_steps is not None else defaults.num_steps
    if plan is not None and plan.is_sequence:
        steps = plan.num_steps if options.num_steps is None else steps
    guidance = options.guidance_scale if options.guidance_scale is not None else defaults.guidance_scale
    if options.batch_size is not None and (not isinstance(options.batch_size, numbers.Integral)
                                           or options.batch_size < 1):
        raise ValueError(f"batch size must be >= 1, got {options.batch_size}")
    if options.num_images is not None and (not isinstance(options.num_images, numbers.Integral)
                                           or options.num_images < 1):
        raise ValueError(f"number of images must be >= 1, got {options.num_images}")
    if options.size is not None and options.size < 8:
        raise ValueError(f"image size must be >= 8 pixels, got {options.size}")

    settings: dict[str, Any] = {
        "label": loaded.label, "models": list(loaded.names), "fractions": list(full), "mode": mode,
        "seed": options.seed, "plan": None if plan is None else plan_to_dict(plan),
    }
    if isinstance(loaded, ClassConditionalModels):
        if options.prompts:
            raise ValueError(
                f"{loaded.label or 'these models'} are class-conditional: give --class-labels, not --prompt"
            )
        if options.size is not None:
            raise ValueError("--size applies to text-to-image pipelines; a DiT samples at its trained size")
        if mode in OFFICIAL_MODES:
            official_sampler(loaded.family, mode)  # ValueError for a mode the family has not
            scheduler = scheduler or "ddim"
            if scheduler not in OFFICIAL_SAMPLERS:
                raise ValueError(
                    f"the published DiT sampler (--mode official) has the samplers {', '.join(OFFICIAL_SAMPLERS)}, "
                    f"not {scheduler!r}; use --mode diffusers for other schedulers"
                )
        scheduler = scheduler or "ddim"
        if mode != "official":  # a flow-matching scheduler for a DiT: refused now, naming why
            check_scheduler(scheduler, loaded.scheduler_config)
        steps = 50 if steps is None else steps
        guidance = 1.0 if guidance is None else guidance
        labels = list(options.class_labels) if options.class_labels else list(defaults.class_labels)
        num_classes = loaded.num_classes
        if not labels:
            labels = list(range(min(num_classes or 1, 8)))
        if num_classes is not None:
            bad = [y for y in labels if isinstance(y, bool) or not isinstance(y, numbers.Integral)
                   or not 0 <= y < num_classes]  # 1.7 is refused, not truncated; 10 of 10 classes is the null class
            if bad:
                raise ValueError(f"class labels must be in [0, {num_classes - 1}] for these models, got {bad}")
        count = options.num_images or len(labels)
        settings["class_labels"] = [int(y) for y in _cycle(labels, count)]
    else:
        if mode in OFFICIAL_MODES:
            raise ValueError("--mode official is the published DiT sampler, for class-conditional DiTs only")
        if options.class_labels:
            raise ValueError(f"{loaded.label or 'this pipeline'} is a text-to-image pipeline: give --prompt, "
                             "not --class-labels")
        if scheduler is not None:
            check_scheduler(scheduler, loaded.pipe.scheduler)
        signature = inspect.signature(type(loaded.pipe).__call__).parameters
        if steps is None:
            steps = signature["num_inference_steps"].default if "num_inference_steps" in signature else 50
        if guidance is None and "guidance_scale" in signature:
            guidance = signature["guidance_scale"].default
        prompts = list(options.prompts) if options.prompts else ([defaults.prompt] if defaults.prompt else [])
        if not prompts:
            raise ValueError("give a prompt (--prompt TEXT)")
        count = options.num_images or len(prompts)
        settings["prompts"] = _cycle(prompts, count)
        settings["negative_prompt"] = options.negative_prompt
        settings["size"] = options.size
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be >= 1 (an integer), got {steps!r}")
    if guidance is not None:
        guidance = check_guidance_scale(guidance, "guidance scale")
    settings.update(
        scheduler=scheduler, num_steps=int(steps), guidance_scale=guidance, num_images=count,
        batch_size=options.batch_size or count,
    )
    return settings


# -- running -----------------------------------------------------------------------------------------------


def _initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Generator]:
    """The initial noise of all images, drawn at once on the CPU, and the generator it came from."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), generator


def _class_run(
    loaded: ClassConditionalModels, settings: dict[str, Any], full: tuple[float, ...], label: str, progress: bool
) -> RunResult:
    models = loaded.models if len(full) > 1 else [loaded.large]
    plan = run_plan(settings) if len(full) > 1 else None
    k = len(models)
    device = loaded.device
    count, batch_size = settings["num_images"], settings["batch_size"]
    noise, generator = _initial_noise(settings["seed"], (count, *loaded.latent_shape))
    labels = torch.tensor(settings["class_labels"], dtype=torch.long)
    dtype = getattr(torch, settings["latent_dtype"]) if settings.get("latent_dtype") else loaded.large.dtype
    latents, model_seconds, per_step = [], [0.0] * k, []
    with Stopwatch(device) as watch:
        for begin in range(0, count, batch_size):
            batch_noise = noise[begin : begin + batch_size].to(device)
            batch_labels = labels[begin : begin + batch_size].to(device)
            if settings["mode"] in OFFICIAL_MODES:
                out = official_sampler(loaded.family, settings["mode"])(
                    models, (plan or full) if k > 1 else None, noise=batch_noise, class_labels=batch_labels,
                    num_steps=settings["num_steps"], sampler=settings["scheduler"],
                    guidance_scale=settings["guidance_scale"], generator=generator, progress=progress,
                )
                per_step = out.record.model_per_step()
                seconds = out.record.seconds
                batch_latents = out.latents
            else:
                scheduler = make_scheduler(
                    settings["scheduler"], loaded.scheduler_config, learned_variance=loaded.learned_variance
                )
                denoiser = StitchedDenoiser(models, plan or list(full[:-1]))
                with cached(denoiser, settings.get("cache") if k > 1 else None):
                    out = sample(
                        denoiser, None, scheduler, noise=batch_noise.to(dtype), class_labels=batch_labels,
                        num_inference_steps=settings["num_steps"], guidance_scale=settings["guidance_scale"],
                        generator=generator, progress=progress,
                    )
                per_step = out.record.model_per_step()
                seconds = out.record.seconds
                batch_latents = out.latents
            model_seconds = [a + b for a, b in zip(model_seconds, seconds, strict=True)]
            latents.append(batch_latents)
        images = loaded.decode(torch.cat(latents), batch_size)
    elapsed = watch.seconds
    names = loaded.names if k > 1 else [loaded.names[-1]]
    return RunResult(label, images, elapsed, list(names), tuple(full),
                     [per_step.count(i) for i in range(k)], list(per_step), model_seconds, plan_text(plan, names))


def _pipeline_noise_shape(loaded: StitchedPipeline, count: int, size: int | None) -> tuple[int, ...] | None:
    """The shape of the initial latents the pipeline would draw, when it takes them as (N, C, h, w)."""
    pipe = loaded.pipe
    if "latents" not in inspect.signature(type(pipe).__call__).parameters:
        return None
    large = getattr(pipe, "unet", None)
    if large is None:
        return None  # transformer pipelines pack latents their own ways: they draw them from the generator
    config = large.config
    scale = getattr(pipe, "vae_scale_factor", 8)
    height = size or int(config.sample_size) * scale
    return count, int(config.in_channels), height // scale, height // scale


@torch.no_grad()
def _pipeline_run(
    loaded: StitchedPipeline, settings: dict[str, Any], full: tuple[float, ...], label: str, progress: bool
) -> RunResult:
    pipe = loaded.pipe
    k = loaded.num_models
    alone = len(full) == 1  # the large model alone: every small model gets no step
    plan = None if alone else run_plan(settings)
    disable_cache(pipe)
    stitch(pipe, loaded.small_models, [0.0] * (k - 1) if alone else (plan or list(full[:-1])))
    enable_cache(pipe, {} if alone else settings.get("cache") or {})
    if settings["scheduler"] is not None:
        pipe.scheduler = make_scheduler(settings["scheduler"], pipe.scheduler)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    count, batch_size = settings["num_images"], settings["batch_size"]
    shape = _pipeline_noise_shape(loaded, count, settings["size"])
    noise = _initial_noise(settings["seed"], shape)[0] if shape else None
    generator = torch.Generator().manual_seed(settings["seed"])
    denoiser = denoiser_of(pipe)[1]
    images, model_seconds, per_step = [], [0.0] * k, []
    device = loaded.device
    with Stopwatch(device) as watch:
        for begin in range(0, count, batch_size):
            prompts = settings["prompts"][begin : begin + batch_size]
            kwargs: dict[str, Any] = {
                "prompt": prompts, "num_inference_steps": settings["num_steps"], "output_type": "pt",
                "generator": generator,
            }
            if settings["guidance_scale"] is not None:
                kwargs["guidance_scale"] = settings["guidance_scale"]
            if settings["negative_prompt"]:
                kwargs["negative_prompt"] = [settings["negative_prompt"]] * len(prompts)
            if settings["size"]:
                kwargs["height"] = kwargs["width"] = settings["size"]
            if noise is not None:
                kwargs["latents"] = noise[begin : begin + batch_size].to(device, denoiser.dtype)
            output = pipe(**kwargs)
            batch = output.images if hasattr(output, "images") else output[0]
            images.append(torch.as_tensor(batch).float().cpu())
            record = get_record(pipe)
            per_step = record.model_per_step()
            model_seconds = [a + b for a, b in zip(model_seconds, record.seconds, strict=True)]
    elapsed = watch.seconds
    names = list(loaded.names)
    if alone:
        names, model_seconds, per_step = names[-1:], model_seconds[-1:], [0] * len(per_step)
    return RunResult(label, torch.cat(images), elapsed, names, tuple(full),
                     [per_step.count(i) for i in range(len(names))], list(per_step), model_seconds,
                     plan_text(plan, names))


def _warmup(loaded: LoadedModels, settings: dict[str, Any]) -> None:
    """One short run in which every model takes one step: one-off costs stay out of the timings."""
    k = len(loaded.names)
    full = warmup_fractions(k)
    # With fast paths (compiled for, and graphs captured at, one batch shape) the warm-up runs a whole batch.
    n = settings["batch_size"] if settings.get("fast_paths", "none") != "none" else 1
    quick = {**settings, "num_steps": max(k, 2), "num_images": n, "batch_size": n, "plan": None}
    if isinstance(loaded, ClassConditionalModels):
        quick["class_labels"] = settings["class_labels"][:n]
        warm_up(lambda: _class_run(loaded, quick, full, "warm-up", progress=False), loaded.device)
    else:
        quick["prompts"] = settings["prompts"][:1]
        warm_up(lambda: _pipeline_run(loaded, quick, full, "warm-up", progress=False), loaded.device)


def generate(loaded: LoadedModels, options: SampleOptions | None = None, *, compare: bool = False) -> GenerateResult:
    """Sample ``options.num_images`` images with the stitch and, with ``compare``, with the large model
    alone from the same initial noise (and the same random stream), timing both.

    Times are wall clock over the whole run (denoising, text encoding, VAE decoding) with CUDA synchronized;
    per-model denoiser times come from the stitch record. With ``options.warmup`` (default) a short run in
    which every model takes one step comes first, so that one-off costs are not counted. Raises
    ``ValueError`` for a bad request before any sampling.
    """
    options = options or SampleOptions()
    settings = _resolve(loaded, options)
    if options.cache:
        settings["cache"] = cache_settings(options.cache, list(loaded.names), settings["mode"] in OFFICIAL_MODES)
    full = tuple(settings["fractions"])
    fast = options.fast if options.fast is not None and options.fast.enabled else None
    if fast is not None and (not isinstance(loaded, ClassConditionalModels) or settings["mode"] == "official"):
        logger.info("fast paths apply to class-conditional models in the bare loop; running without them")
        fast = None
    if fast is not None:
        fast.apply(loaded.models)
        settings["latent_dtype"] = str(fast.input_dtype(loaded.large.dtype)).replace("torch.", "")
    settings["fast_paths"] = str(fast) if fast is not None else "none"
    with fast.context() if fast is not None else contextlib.nullcontext():
        if options.warmup:
            _warmup(loaded, settings)
        stitched = _run(loaded, settings, full, "stitched", options.progress)
        baseline = None
        if compare:
            baseline = _run(loaded, settings, (1.0,), f"{loaded.names[-1]} alone", options.progress)
    if compare and isinstance(loaded, StitchedPipeline):  # leave the pipeline stitched as asked
        stitch(loaded.pipe, loaded.small_models, run_plan(settings) or list(full[:-1]))
    return GenerateResult(stitched, baseline, settings)


def _run(loaded: LoadedModels, settings: dict[str, Any], full: tuple[float, ...], label: str,
         progress: bool) -> RunResult:
    if isinstance(loaded, ClassConditionalModels):
        return _class_run(loaded, settings, full, label, progress)
    return _pipeline_run(loaded, settings, full, label, progress)


# -- writing -----------------------------------------------------------------------------------------------

#: Images smaller than this (the 8x8 digits) are enlarged, pixel for pixel, in the per-image PNGs.
MIN_PNG_SIZE = 64


def _to_pil(image: torch.Tensor, invert: bool):
    from PIL import Image

    picture = image.detach().float().clamp(0, 1)
    if invert:
        picture = 1.0 - picture
    array = (picture * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    side = max(pil.size)
    if side < MIN_PNG_SIZE:
        factor = math.ceil(MIN_PNG_SIZE / side)
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)
    return pil


def save_images(result: GenerateResult, out_dir: str | Path) -> list[Path]:
    """Write ``grid.png`` (one row per run, the same noise in each column), ``sample-NNN.png`` per stitched
    image, ``large-NNN.png`` per image of the large model alone (with ``compare``) and ``summary.json``.

    Every file is written under a temporary name and renamed, so none is ever half written. One-channel
    images (the digits) are saved dark on light, as the grid shows them. Returns the paths written.
    """
    out = ensure_writable_dir(out_dir)
    runs = [result.stitched] + ([result.baseline] if result.baseline is not None else [])
    written = []
    for run, prefix in zip(runs, ("sample", "large"), strict=False):
        for index, image in enumerate(run.images):
            pil = _to_pil(image, invert=image.shape[0] == 1)
            path = out / f"{prefix}-{index:03d}.png"
            written.append(atomic_write(path, lambda tmp, p=pil: p.save(tmp, format="PNG")))
    labels = [_row_label(run) for run in runs]
    written.append(plot_grid([run.images for run in runs], labels, out / "grid.png",
                             title="same initial noise in each column"))
    written.append(write_json(out / "summary.json", result.as_dict()))
    return written


def _row_label(run: RunResult) -> str:
    if run.plan is not None:
        return run.plan.replace(" > ", "\n")
    if len(run.model_names) == 1 or run.fractions[-1] >= 1.0:
        return f"{run.model_names[-1]} alone"
    return "\n".join(f"{name} {share:g}" for name, share in zip(run.model_names, run.fractions, strict=True))
