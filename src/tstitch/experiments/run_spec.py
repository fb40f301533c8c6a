# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What ``tstitch sample`` asks for, and what it will run: a request, resolved once into a run description.

* :class:`SampleOptions`: the request, as a caller gives it (``None`` fields take the models' defaults). Made,
  it has passed every check that needs no models, so ``tstitch sample`` builds it before loading anything.
* :func:`resolve`: the request against the loaded models -> :class:`RunSpec`, every default filled in and every
  check that needs the models done, once; ``ValueError`` before any work.
* :class:`RunSpec`: the typed, frozen description that :func:`tstitch.experiments.generate.generate` runs; the
  plan stays a :class:`~tstitch.plan.Plan` down to the sampler, and :meth:`RunSpec.as_dict` is the ``settings``
  of ``summary.json``.
"""

from __future__ import annotations

import inspect
import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..caching import cache_settings
from ..models.families import official_sampler
from ..models.fastpaths import FastPaths
from ..models.loaded import OFFICIAL_MODES, ClassConditionalModels, LoadedModels, SamplingDefaults, StitchedPipeline
from ..models.presets import MODES, Mode
from ..plan import Plan
from ..planfile import plan_to_dict
from ..sampling import scheduler_name
from ..sampling.checks import check_guidance_scale
from ..sampling.official import SAMPLERS as OFFICIAL_SAMPLERS
from ..sampling.schedulers import check_scheduler
from .sample_plans import HYBRID, check_plan_models, check_plan_request, step_shares

logger = logging.getLogger(__name__)

__all__ = ["SampleOptions", "RunSpec", "resolve"]


# -- the request ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleOptions:
    """One ``tstitch sample`` request; ``None`` fields take the loaded models' defaults.

    ``num_images`` images are sampled (default: one per class label or prompt, labels and prompts are
    repeated in turn to fill it), ``batch_size`` of them per model call (default: all at once). The
    initial noise of all images is drawn at once from ``seed``, so with a deterministic sampler (DDIM,
    the published DDIM) an image does not depend on the batch size or the fraction's noise draws.

    Making one checks what needs no models (``ValueError``); :func:`resolve` checks the rest.
    """

    #: The small models' shares of the steps, smallest first (the large model takes the rest).
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
    #: Caches of the stitched run, ``{model index or name: config or spec}``
    #: (:func:`tstitch.caching.enable_cache`); not official mode.
    cache: Mapping[int | str, Any] | None = None

    def __post_init__(self) -> None:
        if self.plan is not None:
            check_plan_request(self.plan, self.fractions, self.num_steps)
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.class_labels and self.prompts:
            raise ValueError("give --class-labels (class-conditional models) or --prompt (text-to-image), not both")
        if self.batch_size is not None and not _whole(self.batch_size, 1):
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.num_images is not None and not _whole(self.num_images, 1):
            raise ValueError(f"number of images must be >= 1, got {self.num_images}")
        if self.size is not None and self.size < 8:
            raise ValueError(f"image size must be >= 8 pixels, got {self.size}")


def _whole(value: Any, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and value >= minimum


# -- the run ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """Every setting of one sampling run, defaults filled in and checked against the models (:func:`resolve`)."""

    label: str
    model_names: tuple[str, ...]
    #: Which model runs each step, for all the models (one model: the large model alone).
    plan: Plan
    #: Whether the request gave the plan (recorded in the settings) rather than fractions.
    plan_given: bool
    mode: Mode
    #: The scheduler's name; ``None``: a pipeline's own scheduler.
    scheduler: str | None
    num_steps: int
    #: ``None``: a pipeline's own default.
    guidance_scale: float | None
    seed: int
    num_images: int
    batch_size: int
    #: Class-conditional models: one label per image.
    class_labels: tuple[int, ...] | None = None
    #: Pipelines: one prompt per image, the negative prompt and the image size (``None``: the pipeline's).
    prompts: tuple[str, ...] | None = None
    negative_prompt: str | None = None
    size: int | None = None
    #: ``(model name, cache spec)`` of each cached model of the stitched run.
    cache: tuple[tuple[str, str], ...] = ()
    #: The speed options the run applies (class-conditional models in the bare loop only), and the dtype of
    #: the latents they take (``None``: the large model's).
    fast: FastPaths | None = None
    latent_dtype: str | None = None
    progress: bool = True
    warmup: bool = True

    @property
    def fractions(self) -> tuple[float | None, ...]:
        """Every model's share of the steps (an adaptive plan's: ``None``, known once it ran)."""
        return step_shares(self.plan)

    @property
    def fast_paths(self) -> str:
        """The speed options in words (``"none"`` without)."""
        return "none" if self.fast is None else str(self.fast)

    def as_dict(self) -> dict[str, Any]:
        """The ``settings`` of ``summary.json``."""
        settings: dict[str, Any] = {
            "label": self.label, "models": list(self.model_names), "fractions": list(self.fractions),
            "mode": self.mode, "seed": self.seed, "plan": plan_to_dict(self.plan) if self.plan_given else None,
        }
        if self.class_labels is not None:
            settings["class_labels"] = list(self.class_labels)
        else:
            settings.update(prompts=list(self.prompts), negative_prompt=self.negative_prompt, size=self.size)
        settings.update(scheduler=self.scheduler, num_steps=self.num_steps, guidance_scale=self.guidance_scale,
                        num_images=self.num_images, batch_size=self.batch_size)
        if self.cache:
            settings["cache"] = dict(self.cache)
        if self.latent_dtype is not None:
            settings["latent_dtype"] = self.latent_dtype
        settings["fast_paths"] = self.fast_paths
        return settings


# -- resolving ----------------------------------------------------------------------------------------------


def resolve(loaded: LoadedModels, options: SampleOptions) -> RunSpec:
    """``options`` against ``loaded``: defaults filled in, every check that needs the models; ``ValueError``
    before any work."""
    defaults = loaded.defaults
    names = tuple(loaded.names)
    plan = _plan(options, defaults, names)
    mode = options.mode or defaults.mode
    if plan.is_sequence and mode in OFFICIAL_MODES:
        raise ValueError(f"a per-step plan ({plan}) runs in the bare loop, not the published DiT sampler "
                         f"(mode {mode!r}): use --mode diffusers")
    if plan.adaptive is not None:
        _check_adaptive(loaded, plan, mode, options)
    scheduler = options.scheduler or defaults.scheduler
    if scheduler is not None:
        scheduler = scheduler_name(scheduler)
    steps = options.num_steps if options.num_steps is not None else defaults.num_steps
    if plan.is_sequence and options.num_steps is None:
        steps = plan.num_steps
    guidance = options.guidance_scale if options.guidance_scale is not None else defaults.guidance_scale

    if isinstance(loaded, ClassConditionalModels):
        labels = _class_labels(loaded, options)
        scheduler = _class_scheduler(loaded, mode, scheduler)
        steps = 50 if steps is None else steps
        guidance = 1.0 if guidance is None else guidance
        count, inputs = len(labels), {"class_labels": labels}
    else:
        steps, guidance = _pipeline_sampling(loaded, mode, scheduler, steps, guidance)
        prompts = _prompts(loaded, options)
        count, inputs = len(prompts), {"prompts": prompts, "negative_prompt": options.negative_prompt,
                                       "size": options.size}
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be >= 1 (an integer), got {steps!r}")
    if guidance is not None:
        guidance = check_guidance_scale(guidance, "guidance scale")
    cache = cache_settings(options.cache, list(names), mode in OFFICIAL_MODES) if options.cache else {}
    fast = _fast(loaded, options, mode)
    # the latents' dtype with fast paths: what the models take once the fast paths have cast them
    latent_dtype = None if fast is None else _dtype_name(fast.input_dtype(fast.torch_dtype or loaded.large.dtype))
    return RunSpec(
        label=loaded.label, model_names=names, plan=plan, plan_given=options.plan is not None, mode=mode,
        scheduler=scheduler, num_steps=int(steps), guidance_scale=guidance, seed=options.seed, num_images=count,
        batch_size=options.batch_size or count, **inputs, cache=tuple(cache.items()), fast=fast,
        latent_dtype=latent_dtype, progress=options.progress, warmup=options.warmup,
    )


def _plan(options: SampleOptions, defaults: SamplingDefaults, names: tuple[str, ...]) -> Plan:
    """The request's plan, or the plan of its fractions (default: the models'); one model runs alone."""
    if options.plan is not None:
        check_plan_models(options.plan, names)
        return options.plan
    if len(names) == 1:
        return Plan.coerce(None, 1)
    fractions = list(options.fractions if options.fractions is not None else defaults.fractions)
    if len(fractions) != len(names) - 1:
        if len(names) == 2:
            raise ValueError(f"2 models take one fraction (--fraction), got {len(fractions)}: {fractions}")
        raise ValueError(f"{len(names)} models take {len(names) - 1} fractions (--fractions, smallest model first), "
                         f"got {len(fractions)}: {fractions}")
    return Plan.coerce(fractions, len(names))


def _check_adaptive(loaded: LoadedModels, plan: Plan, mode: str, options: SampleOptions) -> None:
    """An adaptive plan runs class-conditional models in the bare loop, without feature caches."""
    if mode in OFFICIAL_MODES:
        raise ValueError(f"an adaptive plan ({plan}) runs in the bare loop, not the published DiT sampler "
                         f"(mode {mode!r}): use --mode diffusers")
    if not isinstance(loaded, ClassConditionalModels):
        raise ValueError(f"an adaptive plan ({plan}) runs class-conditional models in tstitch sample, not the "
                         f"pipeline {loaded.label or ''}".rstrip())
    if options.cache:
        raise ValueError(f"an adaptive plan ({plan}) splits a batch between the models; feature caches (--cache) "
                         "keep state per batch and do not follow the split: drop --cache")


def _cycle(values: Sequence[Any], count: int) -> tuple[Any, ...]:
    return tuple(values[i % len(values)] for i in range(count))


def _class_labels(loaded: ClassConditionalModels, options: SampleOptions) -> tuple[int, ...]:
    """The class label of every image (default: the models'), in range."""
    if options.prompts:
        raise ValueError(f"{loaded.label or 'these models'} are class-conditional: give --class-labels, not --prompt")
    if options.size is not None:
        raise ValueError("--size applies to text-to-image pipelines; a DiT samples at its trained size")
    labels = list(options.class_labels or loaded.defaults.class_labels)
    num_classes = loaded.num_classes
    if not labels:
        labels = list(range(min(num_classes or 1, 8)))
    if num_classes is not None:
        bad = [y for y in labels if isinstance(y, bool) or not isinstance(y, numbers.Integral)
               or not 0 <= y < num_classes]  # 1.7 is refused, not truncated; 10 of 10 classes is the null class
        if bad:
            raise ValueError(f"class labels must be in [0, {num_classes - 1}] for these models, got {bad}")
    return tuple(int(y) for y in _cycle(labels, options.num_images or len(labels)))


def _class_scheduler(loaded: ClassConditionalModels, mode: str, scheduler: str | None) -> str:
    """The scheduler (default DDIM), one the mode's sampler has and the models' noise schedule fits."""
    scheduler = scheduler or "ddim"
    if mode in OFFICIAL_MODES:
        official_sampler(loaded.family, mode)  # ValueError for a mode the family has not
        if scheduler not in OFFICIAL_SAMPLERS:
            raise ValueError(
                f"the published DiT sampler (--mode official) has the samplers {', '.join(OFFICIAL_SAMPLERS)}, "
                f"not {scheduler!r}; use --mode diffusers for other schedulers"
            )
    if mode != "official":  # a flow-matching scheduler for a DiT: refused now, naming why
        check_scheduler(scheduler, loaded.scheduler_config)
    return scheduler


def _pipeline_sampling(loaded: StitchedPipeline, mode: str, scheduler: str | None, steps: int | None,
                       guidance: float | None) -> tuple[Any, Any]:
    """A pipeline's steps and guidance (default: its own), after checking the mode and the scheduler."""
    if mode in OFFICIAL_MODES:
        raise ValueError("--mode official is the published DiT sampler, for class-conditional DiTs only")
    if scheduler is not None:
        check_scheduler(scheduler, loaded.pipe.scheduler)
    signature = inspect.signature(type(loaded.pipe).__call__).parameters
    if steps is None:
        steps = signature["num_inference_steps"].default if "num_inference_steps" in signature else 50
    if guidance is None and "guidance_scale" in signature:
        guidance = signature["guidance_scale"].default
    return steps, guidance


def _prompts(loaded: StitchedPipeline, options: SampleOptions) -> tuple[str, ...]:
    """The prompt of every image (default: the preset's)."""
    if options.class_labels:
        raise ValueError(f"{loaded.label or 'this pipeline'} is a text-to-image pipeline: give --prompt, "
                         "not --class-labels")
    default = loaded.defaults.prompt
    prompts = list(options.prompts) if options.prompts else ([default] if default else [])
    if not prompts:
        raise ValueError("give a prompt (--prompt TEXT)")
    return _cycle(prompts, options.num_images or len(prompts))


def _fast(loaded: LoadedModels, options: SampleOptions, mode: str) -> FastPaths | None:
    """The speed options that apply: class-conditional models in the bare loop only."""
    fast = options.fast if options.fast is not None and options.fast.enabled else None
    if fast is not None and (_plan_of(options).adaptive is not None or HYBRID in loaded.names):
        logger.info("fast paths (one batch shape per model) do not apply to adaptive or region plans; running "
                    "without them")
        return None
    if fast is not None and (not isinstance(loaded, ClassConditionalModels) or mode == "official"):
        logger.info("fast paths apply to class-conditional models in the bare loop; running without them")
        return None
    return fast


def _plan_of(options: SampleOptions) -> Plan:
    return options.plan if options.plan is not None else Plan.coerce(None, 1)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")
