# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Sampling images with loaded, stitchable models: what ``tstitch sample`` runs.

Two kinds of loaded models (both built by :mod:`tstitch.models.presets`):

* :class:`ClassConditionalModels`: class-conditional DiTs (the published DiT pairs, the embedded digits
  family), sampled with the bare loop :func:`tstitch.sample` under any diffusers scheduler, or with the
  family's published sampler (:func:`tstitch.models.families.official_sampler`); latents are decoded by a VAE
  (or are the pixels, for the digits family).
* :class:`StitchedPipeline`: a diffusers pipeline (Stable Diffusion, SDXL, ...) stitched in place with
  :func:`tstitch.stitch`; the text encoders, tokenizers and VAE are the large pipeline's.

:func:`generate` runs a :class:`~tstitch.experiments.run_spec.RunSpec` (a :class:`SampleOptions` request is
resolved into one first) with the stitch and, on request, with the large model alone from the same noise,
timing both. :mod:`tstitch.experiments.images` writes the images.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..caching import cached, disable_cache, enable_cache
from ..models.families import denoiser_of, official_sampler
from ..models.loaded import OFFICIAL_MODES, ClassConditionalModels, LoadedModels, StitchedPipeline
from ..plan import Plan
from ..regions import HybridDenoiser
from ..sampling import make_scheduler, sample
from ..sampling.timing import Stopwatch, warm_up, warmup_fractions
from ..stitcher import StitchedDenoiser, get_record, stitch
from .run_spec import RunSpec, SampleOptions, resolve
from .sample_plans import plan_text, step_shares

logger = logging.getLogger(__name__)

__all__ = [
    "SampleOptions",
    "RunSpec",
    "RunResult",
    "GenerateResult",
    "generate",
]

#: The plan of the large model alone.
LARGE_ALONE = Plan.coerce(None, 1)

# -- results ----------------------------------------------------------------------------------


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
    #: The per-step plan's text form (``S8 > XL12``) when the run followed one, or the adaptive plan's rule.
    plan: str | None = None
    #: Adaptive plans: ``switch_steps`` (per sample, in order), ``switch_models`` and ``model_per_step_per_sample``;
    #: region plans: ``hybrid_calls``, one per call of the hybrid model (batch, step, mode, mask_fraction_used,
    #: tokens: the token indices the large model computed, per batch row).
    per_sample: dict[str, Any] | None = None

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
            **(self.per_sample or {}),
        }


@dataclass
class GenerateResult:
    """The stitched run and, with ``compare``, the large model alone from the same noise."""

    stitched: RunResult
    baseline: RunResult | None
    spec: RunSpec

    @property
    def settings(self) -> dict[str, Any]:
        """The run's settings (:meth:`RunSpec.as_dict`), as ``summary.json`` holds them."""
        return self.spec.as_dict()

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


# -- running -----------------------------------------------------------------------------------------------


def generate(loaded: LoadedModels, request: SampleOptions | RunSpec | None = None, *,
             compare: bool = False) -> GenerateResult:
    """Sample the run's images with the stitch and, with ``compare``, with the large model alone from the same
    initial noise (and the same random stream), timing both.

    ``request``: a :class:`RunSpec`, run as it is, or a :class:`SampleOptions` request (default: an empty one),
    resolved first (:func:`~tstitch.experiments.run_spec.resolve`: ``ValueError`` for a bad request before any
    sampling). Times are wall clock over the whole run (denoising, text encoding, VAE decoding) with CUDA
    synchronized; per-model denoiser times come from the stitch record. With ``warmup`` (default) a short run
    in which every model takes one step comes first, so that one-off costs are not counted.
    """
    spec = request if isinstance(request, RunSpec) else resolve(loaded, request or SampleOptions())
    fast = spec.fast
    if fast is not None:
        fast.apply(loaded.models)
    with fast.context() if fast is not None else contextlib.nullcontext():
        if spec.warmup:
            _warmup(loaded, spec)
        stitched = _run(loaded, spec, spec.plan, "stitched", spec.progress)
        baseline = None
        if compare:
            baseline = _run(loaded, spec, LARGE_ALONE, f"{loaded.names[-1]} alone", spec.progress)
    if compare and isinstance(loaded, StitchedPipeline):  # leave the pipeline stitched as asked
        stitch(loaded.pipe, loaded.small_models, spec.plan)
    return GenerateResult(stitched, baseline, spec)


def _run(loaded: LoadedModels, spec: RunSpec, plan: Plan, label: str, progress: bool) -> RunResult:
    """One run of ``spec`` under ``plan`` (a plan of one model: the large model alone)."""
    if isinstance(loaded, ClassConditionalModels):
        return _class_run(loaded, spec, plan, label, progress)
    return _pipeline_run(loaded, spec, plan, label, progress)


def _warmup(loaded: LoadedModels, spec: RunSpec) -> None:
    """One short run in which every model takes one step: one-off costs stay out of the timings."""
    k = len(loaded.names)
    # With fast paths (compiled for, and graphs captured at, one batch shape) the warm-up runs a whole batch.
    n = spec.batch_size if spec.fast is not None else 1
    quick = replace(spec, plan=Plan.coerce(warmup_fractions(k), k), plan_given=False, num_steps=max(k, 2),
                    num_images=n, batch_size=n)
    if isinstance(loaded, ClassConditionalModels):
        quick = replace(quick, class_labels=spec.class_labels[:n])
    else:
        quick = replace(quick, prompts=spec.prompts[:1])
    warm_up(lambda: _run(loaded, quick, quick.plan, "warm-up", progress=False), loaded.device)


def _initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Generator]:
    """The initial noise of all images, drawn at once on the CPU, and the generator it came from."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), generator


def _class_run(loaded: ClassConditionalModels, spec: RunSpec, plan: Plan, label: str, progress: bool) -> RunResult:
    alone = plan.num_models == 1
    models = [loaded.large] if alone else list(loaded.models)
    names = [loaded.names[-1]] if alone else list(loaded.names)
    k = len(models)
    device = loaded.device
    count, batch_size = spec.num_images, spec.batch_size
    noise, generator = _initial_noise(spec.seed, (count, *loaded.latent_shape))
    labels = torch.tensor(spec.class_labels, dtype=torch.long)
    dtype = getattr(torch, spec.latent_dtype) if spec.latent_dtype else loaded.large.dtype
    cache = dict(spec.cache) if spec.cache and not alone else None
    latents, model_seconds, per_step = [], [0.0] * k, []
    hybrid = next((m for m in models if isinstance(m, HybridDenoiser)), None)
    adaptive = plan.adaptive is not None
    per_sample: dict[str, Any] | None = None
    if adaptive:
        per_sample = {"switch_steps": [], "switch_models": None, "model_per_step_per_sample": []}
    elif hybrid is not None:
        per_sample = {"mask_fraction": hybrid.mask_fraction, "hybrid_calls": []}
    with Stopwatch(device) as watch:
        for begin in range(0, count, batch_size):
            batch_noise = noise[begin : begin + batch_size].to(device)
            batch_labels = labels[begin : begin + batch_size].to(device)
            if spec.mode in OFFICIAL_MODES:
                out = official_sampler(loaded.family, spec.mode)(
                    models, plan, noise=batch_noise, class_labels=batch_labels, num_steps=spec.num_steps,
                    sampler=spec.scheduler, guidance_scale=spec.guidance_scale, generator=generator,
                    progress=progress,
                )
            else:
                scheduler = make_scheduler(spec.scheduler, loaded.scheduler_config,
                                           learned_variance=loaded.learned_variance)
                denoiser = StitchedDenoiser(models, plan)
                if hybrid is not None:
                    hybrid.attach(denoiser)  # a fresh record and cache each run
                with cached(denoiser, cache):
                    out = sample(
                        denoiser, None, scheduler, noise=batch_noise.to(dtype), class_labels=batch_labels,
                        num_inference_steps=spec.num_steps, guidance_scale=spec.guidance_scale,
                        generator=generator, progress=progress,
                    )
                if hybrid is not None:
                    hybrid.detach(denoiser)
            per_step = out.record.model_per_step()
            if per_sample is not None:
                _note_per_sample(per_sample, out.record, hybrid, begin // batch_size)
            model_seconds = [a + b for a, b in zip(model_seconds, out.record.seconds, strict=True)]
            latents.append(out.latents)
        images = loaded.decode(torch.cat(latents), batch_size)
    if adaptive:  # the mean steps per sample of each model
        rows = per_sample["model_per_step_per_sample"]
        steps = [round(sum(row.count(i) for row in rows) / len(rows), 3) for i in range(k)]
        shares = step_shares(plan, rows)
    else:
        steps, shares = [per_step.count(i) for i in range(k)], step_shares(plan)
    return RunResult(label, images, watch.seconds, names, shares, steps, list(per_step), model_seconds,
                     None if alone else plan_text(plan, names), per_sample)


def _note_per_sample(per_sample: dict[str, Any], record: Any, hybrid: HybridDenoiser | None, batch: int) -> None:
    """Add one batch's adaptive switches or hybrid calls (:class:`RunResult.per_sample`)."""
    if "switch_steps" in per_sample:
        per_sample["switch_steps"] += list(record.switch_steps)
        per_sample["switch_models"] = list(record.switch_models)
        per_sample["model_per_step_per_sample"] += record.model_per_step_per_sample()
        return
    for call in hybrid.record.calls:
        step = None if call.stitch_call is None else record.calls[call.stitch_call][0]
        per_sample["hybrid_calls"].append({"batch": batch, "step": step, "mode": call.mode,
                                           "mask_fraction_used": call.mask_fraction_used, "tokens": call.tokens})


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
def _pipeline_run(loaded: StitchedPipeline, spec: RunSpec, plan: Plan, label: str, progress: bool) -> RunResult:
    pipe = loaded.pipe
    k = loaded.num_models
    alone = plan.num_models == 1  # the large model alone: every small model gets no step
    disable_cache(pipe)
    stitch(pipe, loaded.small_models, Plan.coerce([0.0] * (k - 1), k) if alone else plan)
    enable_cache(pipe, {} if alone else dict(spec.cache))
    if spec.scheduler is not None:
        pipe.scheduler = make_scheduler(spec.scheduler, pipe.scheduler)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    count, batch_size = spec.num_images, spec.batch_size
    shape = _pipeline_noise_shape(loaded, count, spec.size)
    noise = _initial_noise(spec.seed, shape)[0] if shape else None
    generator = torch.Generator().manual_seed(spec.seed)
    denoiser = denoiser_of(pipe)[1]
    images, model_seconds, per_step = [], [0.0] * k, []
    device = loaded.device
    with Stopwatch(device) as watch:
        for begin in range(0, count, batch_size):
            prompts = list(spec.prompts[begin : begin + batch_size])
            kwargs: dict[str, Any] = {
                "prompt": prompts, "num_inference_steps": spec.num_steps, "output_type": "pt", "generator": generator,
            }
            if spec.guidance_scale is not None:
                kwargs["guidance_scale"] = spec.guidance_scale
            if spec.negative_prompt:
                kwargs["negative_prompt"] = [spec.negative_prompt] * len(prompts)
            if spec.size:
                kwargs["height"] = kwargs["width"] = spec.size
            if noise is not None:
                kwargs["latents"] = noise[begin : begin + batch_size].to(device, denoiser.dtype)
            output = pipe(**kwargs)
            batch = output.images if hasattr(output, "images") else output[0]
            images.append(torch.as_tensor(batch).float().cpu())
            record = get_record(pipe)
            per_step = record.model_per_step()
            model_seconds = [a + b for a, b in zip(model_seconds, record.seconds, strict=True)]
    names = list(loaded.names)
    if alone:
        names, model_seconds, per_step = names[-1:], model_seconds[-1:], [0] * len(per_step)
    return RunResult(label, torch.cat(images), watch.seconds, names, step_shares(plan),
                     [per_step.count(i) for i in range(len(names))], list(per_step), model_seconds,
                     None if alone else plan_text(plan, names))
