# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""How the benchmark runs each configuration of a case: the plain loop, stitched sampling, the pipelines,
offloading. Every run goes through the one sampling loop or a diffusers pipeline."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..caching import cached
from ..experiments.batches import sample_batches
from ..models.fastpaths import disable_offload, enable_offload
from ..plan import Plan
from ..sampling import Guidance, denoise, num_classes_of, sample, timed
from ..stitcher import StitchedDenoiser, StitchRecord, get_record, stitch
from .cases import BenchCase

__all__ = ["plain_sample", "Planned", "ConfigRun", "Runner", "ClassRunner", "TextRunner", "make_runner",
           "fraction_of"]


# -- the plain baseline --------------------------------------------------------------------------------------


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
    """The one sampling loop with no stitching machinery: ``models[plan[i]]`` is picked directly at step
    ``i`` (the baseline of the overhead figure; first-order schedulers)."""
    if len(plan) != num_inference_steps:
        raise ValueError(f"plan has {len(plan)} steps for num_inference_steps={num_inference_steps}")
    null = num_classes_of(models[-1]) if null_class is None else null_class
    return denoise(lambda step: models[plan[step]], scheduler, noise, class_labels=class_labels,
                   num_inference_steps=num_inference_steps, guidance=Guidance(guidance_scale, null_class=null))


class Planned:
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



@dataclass
class ConfigRun:
    """One timed run of a configuration: its seconds, output and the model of each step."""

    seconds: float
    latents: torch.Tensor | None = None
    per_step: list[int] | None = None
    offload_seconds: float | None = None
    record: StitchRecord | None = None  # an adaptive plan's run: each sample's switch step, the calls


def fraction_of(config: str) -> float:
    """The fraction of a configuration name such as ``stitched@0.4``."""
    return float(config.split("@")[1])


def stand_in_vae(latent_channels: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
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


class Runner:
    """Runs the configurations of one case (subclasses: class- and text-conditional)."""

    def __init__(self, case: BenchCase, seed: int, offload_fraction: float | None):
        self.case = case
        self.seed = seed
        self.device = next(case.large.parameters()).device
        self.dtype = next(case.large.parameters()).dtype
        self.models = [case.small, case.large]
        self.offload_fraction = offload_fraction
        self.cache: dict[int, Any] = {}  # caches of the cached@r runs (tstitch.caching.enable_cache)
        #: an adaptive plan: each sample's switch step in the warm-up's full run, and k (:meth:`measure_switches`)
        self.switch_steps: list[int] | None = None
        self.together_step: int | None = None

    def plan(self, fraction: float | Plan, num_steps: int) -> list[int]:
        """The model of every step at a fraction of the small model, or of the case's per-step plan."""
        if isinstance(fraction, Plan):
            return fraction.assignment(num_steps)
        return Plan.from_small_fractions(fraction).assignment(num_steps)

    def schedule(self, config: str) -> float | Plan | None:
        """The fraction of a configuration such as ``stitched@0.4``, the case's plan for ``stitched@plan``, the
        fixed plan switching every sample at step ``k`` for ``together@k``."""
        if "@" not in config:
            return None
        if config.startswith("together@"):
            return self.together_plan(int(config.split("@")[1]))
        return self.case.plan if config.endswith("@plan") else fraction_of(config)

    def together_plan(self, k: int) -> Plan:
        """The fixed plan of the adaptive plan's models in which every sample switches at step ``k``."""
        rule = self.case.plan.adaptive
        steps = self.case.num_steps
        return Plan.from_sequence([rule.start_model] * k + [rule.end_model] * (steps - k), 2)

    def measure_switches(self) -> ConfigRun:
        """One full untimed ``adaptive`` run: its switch steps, and ``k``, their mean rounded half up."""
        run = self.run("adaptive")
        self.switch_steps = list(run.record.switch_steps)
        self.together_step = math.floor(statistics.fmean(self.switch_steps) + 0.5)
        return run

    def groups(self) -> list[list[str]]:
        """The configurations, in groups whose members are compared with each other and so run back to
        back: ``plain@r`` with ``stitched@r`` (and ``offload@r``), the pipeline pair."""
        groups = [[f"plain@{r:g}", f"stitched@{r:g}", *([f"cached@{r:g}"] if self.cache else [])]
                  for r in self.case.all_fractions]
        if self.case.adaptive:
            if self.together_step is None:
                raise RuntimeError("the adaptive plan's switch steps are measured first (measure_switches)")
            groups.append([f"together@{self.together_step}", "adaptive"])
        elif self.case.plan is not None:
            groups.append(["plain@plan", "stitched@plan"])
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
        names += ["cached@0", "cached@1"] if self.cache else []
        if self.offload_fraction is not None:
            names.append(f"offload@{self.offload_fraction:g}")
        return list(dict.fromkeys(names))

    def pipeline_configs(self) -> list[str]:
        return []

    def _run_together(self, plan: Plan, steps: int) -> ConfigRun:
        return self._run_stitched(plan, steps)

    def run(self, config: str, num_steps: int | None = None) -> ConfigRun:
        steps = num_steps or self.case.num_steps
        kind = config.split("@")[0]
        return getattr(self, f"_run_{kind.replace('-', '_')}")(self.schedule(config), steps)


class ClassRunner(Runner):
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
        vae = stand_in_vae(config.in_channels, self.device, self.dtype)
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

    def _run_plain(self, fraction: float, steps: int) -> ConfigRun:
        plan = self.plan(fraction, steps)
        scheduler = self.case.make_scheduler()
        seconds, latents = timed(lambda: plain_sample(self.models, plan, scheduler, **self._sample_kwargs(steps)),
                                  self.device)
        return ConfigRun(seconds, latents, plan)

    def _run_stitched(self, fraction: float, steps: int, cache: dict | None = None) -> ConfigRun:
        latents, seconds, per_step = sample_batches(
            self.models, fraction if isinstance(fraction, Plan) else [fraction], self.case.make_scheduler, self.noise,
            self.labels, num_steps=steps,
            guidance_scale=self.case.guidance_scale, batch_size=self.case.num_images, cache=cache,
        )
        return ConfigRun(seconds, latents, per_step)

    def _run_cached(self, fraction: float, steps: int) -> ConfigRun:
        return self._run_stitched(fraction, steps, self.cache)

    def _run_adaptive(self, _: None, steps: int) -> ConfigRun:
        records: list[StitchRecord] = []
        latents, seconds, per_step = sample_batches(
            self.models, self.case.plan, self.case.make_scheduler, self.noise, self.labels, num_steps=steps,
            guidance_scale=self.case.guidance_scale, batch_size=self.case.num_images, records=records,
        )
        return ConfigRun(seconds, latents, per_step, record=records[0])

    def _run_offload(self, fraction: float, steps: int) -> ConfigRun:
        denoiser = StitchedDenoiser(self.models, Plan.from_small_fractions(fraction))
        switch = enable_offload(denoiser, self.device)
        scheduler = self.case.make_scheduler()
        try:
            seconds, output = timed(lambda: sample(denoiser, None, scheduler, **self._sample_kwargs(steps)),
                                     self.device)
        finally:
            disable_offload(denoiser)
        return ConfigRun(seconds, output.latents, output.record.model_per_step(), switch.seconds)

    def _pipeline_call(self, key: str, steps: int) -> ConfigRun:
        pipe = self.pipes[key]
        labels = self.labels.tolist()
        seconds, _ = timed(lambda: pipe(class_labels=labels, guidance_scale=self.case.guidance_scale,
                                         generator=torch.Generator().manual_seed(self.seed),
                                         num_inference_steps=steps, output_type="pt"), self.device)
        per_step = get_record(pipe).model_per_step() if key == "pipeline-stitched" else None
        return ConfigRun(seconds, None, per_step)

    def _run_pipeline(self, fraction: None, steps: int) -> ConfigRun:
        return self._pipeline_call("pipeline", steps)

    def _run_pipeline_stitched(self, fraction: float, steps: int) -> ConfigRun:
        return self._pipeline_call("pipeline-stitched", steps)


class TextRunner(Runner):
    """Text-conditional U-Nets: a ``StableDiffusionPipeline`` stitched, against the same pipeline calling
    the models directly (``plain@0`` is the unstitched pipeline, ``plain@1`` the small model's)."""

    def __init__(self, case: BenchCase, seed: int, offload_fraction: float | None):
        super().__init__(case, seed, offload_fraction)
        config = case.large.config
        generator = torch.Generator().manual_seed(seed)
        shape = (case.num_images, case.text_tokens, config.cross_attention_dim)
        self.prompt = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        self.negative = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        self.vae = stand_in_vae(config.in_channels, self.device, self.dtype)
        self.size = config.sample_size
        self.pipes: dict[str, Any] = {}

    def _pipe(self, key: str, small_fraction: float | Plan | None = None) -> Any:
        """The pipeline named ``key`` (made once; stitched at ``small_fraction``, or a plan, when given)."""
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
        return timed(lambda: pipe(
            prompt_embeds=self.prompt, negative_prompt_embeds=self.negative, height=self.size, width=self.size,
            num_inference_steps=steps, guidance_scale=self.case.guidance_scale, output_type="latent",
            generator=torch.Generator().manual_seed(self.seed),
        ).images, self.device)

    def _run_plain(self, fraction: float, steps: int) -> ConfigRun:
        plan = self.plan(fraction, steps)
        if fraction == 0.0:
            pipe = self._pipe("large")  # the user's unstitched pipeline
        else:
            pipe = self._pipe("plain")
            denoiser = self.case.small if fraction == 1.0 else Planned(self.models, plan)
            object.__setattr__(pipe, "unet", denoiser)  # as stitch() does: no config rewrite
        seconds, latents = self._call(pipe, steps)
        return ConfigRun(seconds, latents, plan)

    def _run_stitched(self, fraction: float, steps: int) -> ConfigRun:
        pipe = self._pipe(f"stitched@{fraction}", fraction)
        seconds, latents = self._call(pipe, steps)
        return ConfigRun(seconds, latents, get_record(pipe).model_per_step())

    def _run_adaptive(self, _: None, steps: int) -> ConfigRun:
        pipe = self._pipe("adaptive", self.case.plan)
        seconds, latents = self._call(pipe, steps)
        record = get_record(pipe)
        return ConfigRun(seconds, latents, record.model_per_step(), record=copy.deepcopy(record))

    def _run_cached(self, fraction: float, steps: int) -> ConfigRun:
        pipe = self._pipe(f"stitched@{fraction}", fraction)
        with cached(pipe, self.cache):  # on only for this run: the pipelines share the models
            seconds, latents = self._call(pipe, steps)
        return ConfigRun(seconds, latents, get_record(pipe).model_per_step())

    def _run_offload(self, fraction: float, steps: int) -> ConfigRun:
        pipe = self._pipe(f"offload@{fraction:g}", fraction)
        switch = enable_offload(pipe, self.device)
        try:
            seconds, latents = self._call(pipe, steps)
        finally:
            disable_offload(pipe)
        return ConfigRun(seconds, latents, get_record(pipe).model_per_step(), switch.seconds)


def make_runner(case: BenchCase, seed: int, offload_fraction: float | None) -> Runner:
    return (ClassRunner if case.conditioning == "class" else TextRunner)(case, seed, offload_fraction)


