# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Tiny random diffusers components and pipelines for the stitching tests (built in code, no downloads).

Every builder takes a ``seed`` so that a "small" and a "large" model of the same architecture get different
weights (their outputs differ, so a wrong model choice changes the result). All models are in eval mode:
DiT's label embedding drops labels at random in train mode.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run a test module on one CPU thread (import this fixture into the module to use it).

    Tiny models gain nothing from threads, and on a shared machine with two cores the default thread pool
    made these tests about twenty times slower. The previous setting comes back after the module.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- sizes shared by the builders ----------------------------------------------------------------------------
LATENT_CHANNELS = 4
DIT_SAMPLE_SIZE = 4
UNET_SAMPLE_SIZE = 8
SD3_SAMPLE_SIZE = 4
CROSS_ATTENTION_DIM = 8
SDXL_POOLED_DIM = 8
SDXL_TIME_EMBED_DIM = 4
SD3_JOINT_DIM = 8
SD3_POOLED_DIM = 8
NUM_CLASSES = 1000  # DiTPipeline hard-codes the null class 1000


def _seeded(seed: int, build):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


def tiny_dit(seed: int = 0, **overrides: Any) -> DiTTransformer2DModel:
    """A DiT with learned sigma (8 output channels for 4 latent channels) and 1000 classes."""
    kwargs = dict(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=LATENT_CHANNELS,
        out_channels=2 * LATENT_CHANNELS,
        num_layers=1,
        sample_size=DIT_SAMPLE_SIZE,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
    )
    kwargs.update(overrides)
    return _seeded(seed, lambda: DiTTransformer2DModel(**kwargs))


def tiny_vae(seed: int = 100) -> AutoencoderKL:
    """A one-block VAE: the latent size equals the image size (``vae_scale_factor == 1``)."""
    return _seeded(
        seed,
        lambda: AutoencoderKL(
            block_out_channels=[4],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D"],
            latent_channels=LATENT_CHANNELS,
            norm_num_groups=2,
            layers_per_block=1,
            shift_factor=0.0,  # StableDiffusion3Pipeline needs one
        ),
    )


def tiny_unet(seed: int = 0, sdxl: bool = False, **overrides: Any) -> UNet2DConditionModel:
    kwargs: dict[str, Any] = dict(
        sample_size=UNET_SAMPLE_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=2,
        norm_num_groups=2,
    )
    if sdxl:
        kwargs.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=SDXL_POOLED_DIM + 6 * SDXL_TIME_EMBED_DIM,
        )
    kwargs.update(overrides)
    return _seeded(seed, lambda: UNet2DConditionModel(**kwargs))


def tiny_controlnet(seed: int = 50) -> ControlNetModel:
    """A ControlNet matching :func:`tiny_unet` (no conditioning downsampling: the VAE does not scale)."""
    return _seeded(
        seed,
        lambda: ControlNetModel(
            in_channels=LATENT_CHANNELS,
            block_out_channels=(4, 8),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            cross_attention_dim=CROSS_ATTENTION_DIM,
            attention_head_dim=2,
            norm_num_groups=2,
            conditioning_embedding_out_channels=(4,),
        ),
    )


def tiny_sd3_transformer(seed: int = 0, **overrides: Any) -> SD3Transformer2DModel:
    kwargs = dict(
        sample_size=SD3_SAMPLE_SIZE,
        patch_size=1,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=4,
        num_attention_heads=2,
        joint_attention_dim=SD3_JOINT_DIM,
        caption_projection_dim=8,
        pooled_projection_dim=SD3_POOLED_DIM,
        pos_embed_max_size=SD3_SAMPLE_SIZE,
    )
    kwargs.update(overrides)
    return _seeded(seed, lambda: SD3Transformer2DModel(**kwargs))


# -- schedulers ----------------------------------------------------------------------------------------------

_BETAS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")

#: fresh scheduler factories by short name; "heun" and "kdpm2" are second order (two calls per step)
SCHEDULERS = {
    "ddpm": lambda: DDPMScheduler(**_BETAS),
    "ddim": lambda: DDIMScheduler(**_BETAS, clip_sample=False),
    "dpmsolver++": lambda: DPMSolverMultistepScheduler(**_BETAS, algorithm_type="dpmsolver++", solver_order=2),
    "euler": lambda: EulerDiscreteScheduler(**_BETAS),
    "heun": lambda: HeunDiscreteScheduler(**_BETAS),
    "kdpm2": lambda: KDPM2DiscreteScheduler(**_BETAS),
    "unipc": lambda: UniPCMultistepScheduler(**_BETAS),
    "flow-euler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
}
SECOND_ORDER = {"heun", "kdpm2"}


def step_of_each_scheduler_call(scheduler_name: str, num_steps: int) -> list[int]:
    """The solver step that each ``scheduler.step()`` call belongs to, written out from what the
    schedulers do (not from their ``order`` attribute).

    Heun and KDPM2 make ``2N - 1`` calls: step ``k`` is a first-order call at its start timestep and a
    correction call at its end (Heun) or midpoint (KDPM2) timestep; the last step, which ends at sigma 0,
    is the first-order call alone.
    """
    if scheduler_name in SECOND_ORDER:
        return [position // 2 for position in range(2 * num_steps - 1)]
    return list(range(num_steps))


# -- pipelines -----------------------------------------------------------------------------------------------


#: What the Stable Diffusion pipelines need to run without their safety checker.
NO_SAFETY_CHECKER = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_pipeline(cls: type, scheduler: Any, vae: AutoencoderKL | None = None, **parts: Any):
    """A ``cls`` pipeline of ``parts`` with a tiny VAE (unless ``vae``), none of the text encoders and tokenizers
    its constructor names (the tests pass embeddings) and no progress bar."""
    empty = {name: None for name in inspect.signature(cls.__init__).parameters
             if name.startswith(("text_encoder", "tokenizer"))}
    pipe = cls(vae=vae or tiny_vae(), scheduler=scheduler, **empty, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dit_pipeline(transformer: DiTTransformer2DModel, scheduler: Any, vae: AutoencoderKL | None = None):
    return tiny_pipeline(DiTPipeline, scheduler, vae, transformer=transformer)


def sd_pipeline(unet: UNet2DConditionModel, scheduler: Any, vae: AutoencoderKL | None = None):
    return tiny_pipeline(StableDiffusionPipeline, scheduler, vae, unet=unet, **NO_SAFETY_CHECKER)


def sdxl_pipeline(unet: UNet2DConditionModel, scheduler: Any, vae: AutoencoderKL | None = None):
    return tiny_pipeline(StableDiffusionXLPipeline, scheduler, vae, unet=unet, add_watermarker=False)


def sd3_pipeline(transformer: SD3Transformer2DModel, scheduler: Any, vae: AutoencoderKL | None = None):
    return tiny_pipeline(StableDiffusion3Pipeline, scheduler, vae, transformer=transformer)


def controlnet_pipeline(unet: UNet2DConditionModel, controlnet: ControlNetModel, scheduler: Any, vae=None):
    return tiny_pipeline(StableDiffusionControlNetPipeline, scheduler, vae, unet=unet, controlnet=controlnet,
                         **NO_SAFETY_CHECKER)


class TwoCallCFGPipeline(DiffusionPipeline):
    """A minimal class-conditional pipeline doing classifier-free guidance as two denoiser calls per step
    (conditional, then unconditional), as several diffusers pipelines do."""

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: DiTTransformer2DModel, scheduler: Any):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int],
        num_inference_steps: int = 4,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
    ) -> ImagePipelineOutput:
        channels = self.transformer.config.in_channels
        size = self.transformer.config.sample_size
        labels = torch.tensor(list(class_labels))
        null = torch.full_like(labels, self.transformer.config.num_embeds_ada_norm)
        shape = (len(labels), channels, size, size)
        latents = randn_tensor(shape, generator=generator, dtype=self.transformer.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            model_input = self.scheduler.scale_model_input(latents, t)
            timestep = t.expand(len(labels))
            cond = self.transformer(model_input, timestep=timestep, class_labels=labels).sample[:, :channels]
            uncond = self.transformer(model_input, timestep=timestep, class_labels=null).sample[:, :channels]
            eps = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(eps, t, latents).prev_sample
        return ImagePipelineOutput(images=latents)


# -- call logging, independent of the stitcher's own record --------------------------------------------------


class CallLog:
    """Logs every forward call of the watched models, in call order: the model's name, its timesteps,
    batch size and class labels.

    Forward pre-hooks fire inside ``nn.Module.__call__``, so they see the calls the stitched denoiser makes
    to the models it holds, without relying on anything in ``tstitch``.
    """

    def __init__(self, **models: torch.nn.Module):
        self.entries: list[dict[str, Any]] = []
        self._handles = [
            model.register_forward_pre_hook(functools.partial(self._hook, name), with_kwargs=True)
            for name, model in models.items()
        ]

    def _hook(self, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        labels = kwargs.get("class_labels")
        self.entries.append(
            {
                "name": name,
                "timesteps": torch.as_tensor(t).reshape(-1).tolist() if t is not None else [],
                "batch": None if sample is None else sample.shape[0],
                "class_labels": None if labels is None else labels.tolist(),
            }
        )

    @property
    def names(self) -> list[str]:
        return [entry["name"] for entry in self.entries]

    @property
    def timesteps(self) -> list[float]:
        """The first timestep value of each call."""
        return [entry["timesteps"][0] for entry in self.entries]

    def clear(self) -> None:
        self.entries.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> CallLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@contextlib.contextmanager
def follow_plan(large: torch.nn.Module, small_models: Sequence[torch.nn.Module], plan: Sequence[int]):
    """Within the block, ``large`` answers its calls with the model that ``plan`` names call by call (an
    index into ``[*small_models, large]``): an independent reference for what a stitched run computes.

    The plan must be used up exactly.
    """
    models = [*small_models, large]
    original = large.forward
    used = []

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        index = plan[len(used)]
        used.append(index)
        return original(*args, **kwargs) if index == len(models) - 1 else models[index](*args, **kwargs)

    large.forward = forward
    try:
        yield
    finally:
        del large.forward
    assert len(used) == len(plan), f"the pipeline made {len(used)} denoiser calls, the plan has {len(plan)}"


class StitchCallLog(CallLog):
    """A :class:`CallLog` for stitched models: a call that one watched model hands on to another (a stitched
    large model routing the step to a small model, or :func:`follow_plan`) is logged once, as the model that
    computed it. Nesting is seen with forward pre- and post-hooks only.
    """

    def __init__(self, **models: torch.nn.Module):
        self._open: list[bool] = []  # per call in progress: whether its entry is still the last entry
        super().__init__(**models)
        self._handles += [model.register_forward_hook(self._done, always_call=True) for model in models.values()]

    def _hook(self, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self._open and self._open[-1]:
            self.entries.pop()  # the enclosing call was handed on to this model
            self._open[-1] = False
        super()._hook(name, module, args, kwargs)
        self._open.append(True)

    def _done(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self._open.pop()
