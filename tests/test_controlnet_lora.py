# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Stitching with a ControlNet and with LoRA adapters (tiny random components, no network).

The published T-Stitch code stitches SDXL + ControlNet with SSD-1B, and LCM-LoRA pairs. Here:

* ControlNet: the ControlNet's residuals reach whichever U-Net runs the step, so a small U-Net needs the
  large one's block layout (SSD-1B has it: fewer transformer layers, same blocks); one without it
  (BK-SDM: fewer layers per block) is refused by ``check_controlnet_layout`` and by the loaders.
* LoRA on the large model, loaded with ``pipe.load_lora_weights`` (before or after stitching) or added with
  peft through ``pipe.unet.add_adapter``: it changes the large model's steps only. ``pipe.unet`` stays the
  large model when stitched, so the pipeline-level LoRA methods (``set_adapters``, ``fuse_lora``,
  ``unfuse_lora``, ``unload_lora_weights``) act on it exactly as without stitching.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)
from test_presets import save_unet, tiny_text_encoder, tiny_tokenizer
from tiny_models import (
    CROSS_ATTENTION_DIM,
    SCHEDULERS,
    SDXL_POOLED_DIM,
    UNET_SAMPLE_SIZE,
    StitchCallLog,
    follow_plan,
    sd_pipeline,
    tiny_unet,
    tiny_vae,
)

import tstitch
from tstitch.models.loaded import check_controlnet_layout
from tstitch.models.loading import load_models
from tstitch.stitcher import suspended

peft = pytest.importorskip("peft")
from peft import LoraConfig  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402

STEPS = 5
PLAN = [0, 0, 1, 1, 1]  # fraction 0.4 of 5 steps, one denoiser call per step (guidance batched)


def _embeds(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


PROMPT, NEGATIVE = _embeds(1, 1, 4, CROSS_ATTENTION_DIM), _embeds(2, 1, 4, CROSS_ATTENTION_DIM)
POOLED, NEGATIVE_POOLED = _embeds(3, 1, SDXL_POOLED_DIM), _embeds(4, 1, SDXL_POOLED_DIM)
LATENTS = _embeds(5, 1, 4, UNET_SAMPLE_SIZE, UNET_SAMPLE_SIZE)
CONTROL = _embeds(6, 1, 3, UNET_SAMPLE_SIZE, UNET_SAMPLE_SIZE).clamp(-1, 1) * 0.5 + 0.5


def run(pipe, **kwargs) -> torch.Tensor:
    kwargs.setdefault("prompt_embeds", PROMPT)
    kwargs.setdefault("negative_prompt_embeds", NEGATIVE)
    return pipe(num_inference_steps=STEPS, guidance_scale=4.0, latents=LATENTS.clone(), output_type="latent",
                **kwargs).images


def controlnet_for(unet) -> ControlNetModel:
    """A ControlNet built from ``unet``'s layout, its zero-initialised convolutions (the image embedding's
    output, the residual outputs) made random so that it acts."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4,))
        for parameter in [*controlnet.controlnet_down_blocks.parameters(),
                          *controlnet.controlnet_mid_block.parameters(),
                          *controlnet.controlnet_cond_embedding.conv_out.parameters()]:
            torch.nn.init.normal_(parameter, std=0.5)
    return controlnet.eval()


def tuner_layers(model: torch.nn.Module) -> int:
    return sum(isinstance(module, BaseTunerLayer) for module in model.modules())


# -- ControlNet ----------------------------------------------------------------------------------------------


def sd_controlnet_pipeline(large, controlnet):
    pipe = StableDiffusionControlNetPipeline(
        vae=tiny_vae(), text_encoder=None, tokenizer=None, unet=large, controlnet=controlnet,
        scheduler=SCHEDULERS["ddim"](), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_controlnet_residuals_reach_the_small_unet_at_its_steps():
    large = tiny_unet(seed=1, transformer_layers_per_block=2)
    small = tiny_unet(seed=2)  # SSD-1B-like: the same blocks, fewer transformer layers
    controlnet = controlnet_for(large)
    pipe = sd_controlnet_pipeline(large, controlnet)
    reference_pipe = sd_controlnet_pipeline(large, controlnet)
    with follow_plan(large, [small], PLAN):
        expected = run(reference_pipe, image=CONTROL)

    check_controlnet_layout(pipe, [small])
    tstitch.stitch(pipe, small, 0.4)
    residuals = []
    small.register_forward_pre_hook(
        lambda module, args, kwargs: residuals.append(kwargs.get("down_block_additional_residuals")),
        with_kwargs=True,
    )
    with StitchCallLog(controlnet=controlnet, small=small, large=large) as log:
        got = run(pipe, image=CONTROL)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert tstitch.get_record(pipe).model_per_step() == PLAN
    assert log.names == [name for step in PLAN for name in ("controlnet", ("small", "large")[step])]
    assert len(residuals) == 2 and all(r is not None and len(r) == 4 for r in residuals)

    # the control image matters in the small model's steps too
    with follow_plan(large, [small], [0] * STEPS):
        small_only = run(reference_pipe, image=CONTROL)
    with follow_plan(large, [small], [0] * STEPS):
        other_control = run(reference_pipe, image=1 - CONTROL)
    assert not torch.allclose(small_only, other_control)


def test_sdxl_controlnet_with_an_ssd1b_like_small_unet():
    large = tiny_unet(seed=1, sdxl=True, transformer_layers_per_block=2)
    small = tiny_unet(seed=2, sdxl=True)
    pipe = StableDiffusionXLControlNetPipeline(
        vae=tiny_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=large,
        controlnet=controlnet_for(large), scheduler=SCHEDULERS["euler"](), add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    check_controlnet_layout(pipe, [small])
    tstitch.stitch(pipe, small, 0.4)
    images = run(pipe, image=CONTROL, pooled_prompt_embeds=POOLED, negative_pooled_prompt_embeds=NEGATIVE_POOLED)
    assert images.shape == LATENTS.shape and torch.isfinite(images).all()
    assert tstitch.get_record(pipe).model_per_step() == PLAN


def test_a_small_unet_with_other_blocks_is_refused_for_a_controlnet(tmp_path):
    large = tiny_unet(seed=1, layers_per_block=2)
    bk_sdm_like = tiny_unet(seed=2, layers_per_block=1)  # BK-SDM drops layers from every block
    pipe = sd_controlnet_pipeline(large, controlnet_for(large))
    with pytest.raises(ValueError, match="cannot take the ControlNet's residuals: its layers_per_block is 1.* is 2"):
        check_controlnet_layout(pipe, [bk_sdm_like])
    check_controlnet_layout(sd_pipeline(large, SCHEDULERS["ddim"]()), [bk_sdm_like])  # no ControlNet: fine

    # the loaders refuse it too, before stitching
    pipe.register_modules(text_encoder=tiny_text_encoder(8, seed=3), tokenizer=tiny_tokenizer(tmp_path / "tok"))
    pipe.save_pretrained(tmp_path / "controlnet-pipe")
    small_folder = save_unet(tmp_path / "bk-sdm-like", seed=2, layers_per_block=1)
    with pytest.raises(ValueError, match="layers_per_block"):
        load_models([str(small_folder), str(tmp_path / "controlnet-pipe")])


# -- LoRA ----------------------------------------------------------------------------------------------------


def lora_state_dict(unet: torch.nn.Module, seed: int, rank: int = 2) -> dict[str, torch.Tensor]:
    """A random LoRA for every attention projection of ``unet``, in the keys ``load_lora_weights`` takes."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0")) and isinstance(module, torch.nn.Linear):
            state[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.5
            state[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.5
    return state


@pytest.fixture
def pair():
    large, small = tiny_unet(seed=1), tiny_unet(seed=2)
    pipe = sd_pipeline(large, SCHEDULERS["ddim"]())
    plain = {}
    for fraction in (0.4, 1.0):
        tstitch.stitch(pipe, small, fraction)
        plain[fraction] = run(pipe)
    tstitch.unstitch(pipe)
    return pipe, large, small, plain


@pytest.mark.parametrize("when", ["before stitching", "after stitching"])
def test_lora_on_the_large_model_acts_at_its_steps_only(pair, when):
    pipe, large, small, plain = pair
    if when == "before stitching":
        pipe.load_lora_weights(lora_state_dict(large, seed=0), adapter_name="style")
        tstitch.stitch(pipe, small, 0.4)
    else:
        tstitch.stitch(pipe, small, 0.4)
        pipe.load_lora_weights(lora_state_dict(large, seed=0), adapter_name="style")
    assert tuner_layers(large) > 0 and tuner_layers(small) == 0

    stitched = run(pipe)
    assert tstitch.get_record(pipe).model_per_step() == PLAN
    assert not torch.allclose(stitched, plain[0.4])  # the large model's steps changed ...
    reference_pipe = sd_pipeline(large, SCHEDULERS["ddim"]())
    with suspended(pipe), follow_plan(large, [small], PLAN):  # ... exactly as the LoRA'd large model computes them
        torch.testing.assert_close(stitched, run(reference_pipe), rtol=0, atol=0)
    tstitch.stitch(pipe, small, 1.0)  # the small model alone: no LoRA anywhere
    torch.testing.assert_close(run(pipe), plain[1.0], rtol=0, atol=0)


@pytest.mark.parametrize("stitched", [False, True])
def test_pipeline_level_lora_methods_act_on_the_large_model(pair, stitched):
    """The same sequence of pipeline-level LoRA calls, with and without the stitch, gives the same results
    (the unstitched runs use ``follow_plan`` to run the small model at the same steps)."""
    pipe, large, small, plain = pair
    if stitched:
        tstitch.stitch(pipe, small, 0.4)
        context = contextlib.nullcontext
    else:
        def context():
            return follow_plan(large, [small], PLAN)
    results = []
    pipe.load_lora_weights(lora_state_dict(large, seed=0), adapter_name="style")
    for action in (
        lambda: pipe.set_adapters(["style"], adapter_weights=[1.0]),
        lambda: pipe.set_adapters(["style"], adapter_weights=[0.0]),
        lambda: pipe.set_adapters(["style"], adapter_weights=[0.5]),
        lambda: pipe.fuse_lora(adapter_names=["style"]),
        lambda: pipe.unfuse_lora(),
        lambda: pipe.unload_lora_weights(),
    ):
        action()
        with context():
            results.append(run(pipe))
        assert tuner_layers(small) == 0
    assert tuner_layers(large) == 0
    torch.testing.assert_close(results[1], plain[0.4], rtol=0, atol=0)  # weight 0: no LoRA
    torch.testing.assert_close(results[-1], plain[0.4], rtol=1e-4, atol=1e-4)  # unloaded (fuse + unfuse: rounding)
    assert not torch.allclose(results[0], plain[0.4]) and not torch.allclose(results[2], results[0])
    torch.testing.assert_close(results[3], results[2], rtol=1e-4, atol=1e-5)  # fused: rounding only
    if stitched:
        assert pipe.unet is large and tstitch.get_record(pipe).model_per_step() == PLAN
    test_pipeline_level_lora_methods_act_on_the_large_model.results[stitched] = results
    done = test_pipeline_level_lora_methods_act_on_the_large_model.results
    if len(done) == 2:  # both variants ran in this process: they agree call by call
        for with_stitch, without in zip(done[True], done[False], strict=True):
            torch.testing.assert_close(with_stitch, without, rtol=0, atol=0)


test_pipeline_level_lora_methods_act_on_the_large_model.results = {}


def test_peft_adapter_added_through_the_stitched_denoiser(pair):
    pipe, large, small, plain = pair
    tstitch.stitch(pipe, small, 0.4)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        init_lora_weights=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pipe.unet.add_adapter(config, adapter_name="peft")
    assert tuner_layers(large) > 0 and tuner_layers(small) == 0
    assert not torch.allclose(run(pipe), plain[0.4])
    assert tstitch.get_record(pipe).model_per_step() == PLAN
    tstitch.stitch(pipe, small, 1.0)
    torch.testing.assert_close(run(pipe), plain[1.0], rtol=0, atol=0)


def test_lora_on_the_small_model_only(pair):
    """The LCM-LoRA pairing of the published code puts an adapter on the small model: it acts at its steps."""
    pipe, large, small, plain = pair
    small.load_lora_adapter(lora_state_dict(small, seed=1), prefix="unet", adapter_name="lcm")
    assert tuner_layers(small) > 0 and tuner_layers(large) == 0
    tstitch.stitch(pipe, small, 0.4)
    assert not torch.allclose(run(pipe), plain[0.4])
    tstitch.stitch(pipe, small, 0.0)
    tstitch.unstitch(pipe)
    large_alone = run(pipe)
    tstitch.stitch(pipe, small, 0.0)
    torch.testing.assert_close(run(pipe), large_alone, rtol=0, atol=0)
