# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch.stitch`` on real diffusers pipelines built from tiny random components.

A stitched run is checked three ways: the stitcher's own record, an independent log of which model object
was called (forward pre-hooks), and bit-exact equality with a reference run in which the large model is
patched to hand each call to the model an explicit per-call plan names (no tstitch code involved).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    StableDiffusionImg2ImgPipeline,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from tiny_models import (  # one_thread: an autouse fixture
    CROSS_ATTENTION_DIM,
    DIT_SAMPLE_SIZE,
    LATENT_CHANNELS,
    NO_SAFETY_CHECKER,
    SCHEDULERS,
    SD3_JOINT_DIM,
    SD3_POOLED_DIM,
    SDXL_POOLED_DIM,
    UNET_SAMPLE_SIZE,
    StitchCallLog,
    TwoCallCFGPipeline,
    controlnet_pipeline,
    dit_pipeline,
    follow_plan,
    one_thread,  # noqa: F401
    sd3_pipeline,
    sd_pipeline,
    sdxl_pipeline,
    step_of_each_scheduler_call,
    tiny_controlnet,
    tiny_dit,
    tiny_pipeline,
    tiny_sd3_transformer,
    tiny_unet,
    tiny_vae,
)

import tstitch
from tstitch import StitchedDenoiser, get_stitch
from tstitch.stitcher import suspended

N = 5  # scheduler steps per run
LABELS = [1, 7, 42]  # a batch of three class labels
HOOKS = {"step", "set_timesteps", "set_begin_index", "scale_model_input"}

_inputs = torch.Generator().manual_seed(1234)
PROMPT = torch.randn(2, 5, CROSS_ATTENTION_DIM, generator=_inputs)  # a batch of two "prompts"
NEGATIVE = torch.randn(2, 5, CROSS_ATTENTION_DIM, generator=_inputs)
POOLED = torch.randn(2, SDXL_POOLED_DIM, generator=_inputs)
NEGATIVE_POOLED = torch.randn(2, SDXL_POOLED_DIM, generator=_inputs)
SD3_PROMPT = torch.randn(2, 5, SD3_JOINT_DIM, generator=_inputs)
SD3_NEGATIVE = torch.randn(2, 5, SD3_JOINT_DIM, generator=_inputs)
SD3_POOLED = torch.randn(2, SD3_POOLED_DIM, generator=_inputs)
SD3_NEGATIVE_POOLED = torch.randn(2, SD3_POOLED_DIM, generator=_inputs)
CONTROL_IMAGE = torch.rand(1, 3, UNET_SAMPLE_SIZE, UNET_SAMPLE_SIZE, generator=_inputs)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# -- runs: each returns the final latents (``output_type="latent"``) or the decoded images -------------------


def run_dit(pipe, guidance_scale=4.0, output_type="latent", steps=N, labels=LABELS):
    torch.manual_seed(0)  # DiTPipeline steps DDPM without a generator: the global one
    if output_type != "latent":
        return pipe(
            labels,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=_generator(),
            output_type=output_type,
        ).images
    captured, decode = [], pipe.vae.decode  # DiTPipeline always decodes: catch the latents on their way

    def capture(latents, *args, **kwargs):
        captured.append(latents.clone())
        return decode(latents, *args, **kwargs)

    pipe.vae.decode = capture
    try:
        pipe(
            labels,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=_generator(),
            output_type="np",
        )
    finally:
        del pipe.vae.decode
    return captured[0]


def run_pipe(pipe, prompt, negative, guidance_scale, output_type, steps, **kwargs):
    return pipe(
        prompt_embeds=prompt,
        negative_prompt_embeds=negative,
        guidance_scale=guidance_scale,
        num_inference_steps=steps,
        generator=_generator(),
        output_type=output_type,
        **kwargs,
    ).images


def run_sd(pipe, guidance_scale=5.0, output_type="latent", steps=N, **kwargs):
    return run_pipe(pipe, PROMPT, NEGATIVE, guidance_scale, output_type, steps, **kwargs)


def run_sdxl(pipe, guidance_scale=5.0, output_type="latent", steps=N, **kwargs):
    return run_sd(pipe, guidance_scale, output_type, steps, pooled_prompt_embeds=POOLED,
                  negative_pooled_prompt_embeds=NEGATIVE_POOLED, **kwargs)


def run_sd3(pipe, guidance_scale=5.0, output_type="latent", steps=N, **kwargs):
    return run_pipe(pipe, SD3_PROMPT, SD3_NEGATIVE, guidance_scale, output_type, steps, pooled_prompt_embeds=SD3_POOLED,
                    negative_pooled_prompt_embeds=SD3_NEGATIVE_POOLED, **kwargs)


def run_controlnet(pipe, guidance_scale=5.0, output_type="latent", steps=N, **kwargs):
    return run_sd(pipe, guidance_scale, output_type, steps, image=CONTROL_IMAGE, **kwargs)


def run_two_call(pipe, guidance_scale=3.0, output_type="latent", steps=N):
    return pipe(LABELS, num_inference_steps=steps, guidance_scale=guidance_scale, generator=_generator()).images


@dataclass
class Kind:
    model: Callable[[int], torch.nn.Module]  # seed -> a denoiser
    pipe: Callable[[torch.nn.Module, Any], DiffusionPipeline]  # (denoiser, scheduler) -> pipeline
    run: Callable[..., Any]
    attr: str  # where the pipeline holds its denoiser


KINDS = {
    "dit": Kind(tiny_dit, dit_pipeline, run_dit, "transformer"),
    "sd": Kind(tiny_unet, sd_pipeline, run_sd, "unet"),
    "sdxl": Kind(lambda seed: tiny_unet(seed, sdxl=True), sdxl_pipeline, run_sdxl, "unet"),
    "sd3": Kind(tiny_sd3_transformer, sd3_pipeline, run_sd3, "transformer"),
    "controlnet": Kind(
        tiny_unet, lambda unet, s: controlnet_pipeline(unet, tiny_controlnet(), s), run_controlnet, "unet"
    ),
    "two-call": Kind(tiny_dit, TwoCallCFGPipeline, run_two_call, "transformer"),
}


def plan_for(scheduler_name: str, assignment: list[int], calls_at: Callable[[int], int] = lambda p: 1):
    """For each denoiser call of a run: its scheduler-call position, its step and the model it must use."""
    step_of_call = step_of_each_scheduler_call(scheduler_name, len(assignment))
    positions = [p for p in range(len(step_of_call)) for _ in range(calls_at(p))]
    steps = [step_of_call[p] for p in positions]
    return positions, steps, [assignment[s] for s in steps]


def check_stitched_run(
    kind_name, scheduler_name, fractions, assignment, guidance_scale, calls_at=lambda p: 1, **run_kwargs
):
    """Stitch fresh models into a fresh pipeline, run it and check the run exactly; returns the pipeline."""
    kind = KINDS[kind_name]
    if isinstance(fractions, tstitch.Plan):
        num_small = fractions.num_models - 1
    else:
        num_small = 1 if isinstance(fractions, float) else len(fractions)
    *smalls, large = [kind.model(seed) for seed in range(1, num_small + 2)]
    pipe = kind.pipe(large, SCHEDULERS[scheduler_name]())
    tstitch.stitch(pipe, smalls[0] if isinstance(fractions, float) else smalls, fractions)
    names = [f"model{i}" for i in range(num_small + 1)]
    with StitchCallLog(**dict(zip(names, [*smalls, large]))) as log:
        out = kind.run(pipe, guidance_scale, **run_kwargs)

    positions, steps, plan = plan_for(scheduler_name, assignment, calls_at)
    record = tstitch.get_record(pipe)
    assert log.names == [names[i] for i in plan]  # which model object ran, call by call
    assert record.calls == list(zip(steps, plan))
    assert record.model_per_step() == assignment
    assert record.num_steps == len(assignment)
    assert record.num_calls == [plan.count(i) for i in range(num_small + 1)]
    timesteps = pipe.scheduler.timesteps.tolist()
    assert len(timesteps) == len(step_of_each_scheduler_call(scheduler_name, len(assignment)))
    assert log.timesteps == record.timesteps == [timesteps[p] for p in positions]

    assert getattr(pipe, kind.attr) is large  # the pipeline keeps its own model object
    reference_pipe = kind.pipe(large, SCHEDULERS[scheduler_name]())
    with suspended(pipe):  # the large model alone, following the plan call by call: an independent reference
        with follow_plan(large, smalls, plan):
            reference = kind.run(reference_pipe, guidance_scale, **run_kwargs)
        assert torch.equal(out, reference)
        assert torch.isfinite(out).all()
        if set(plan) != {num_small}:  # the small models ran: the result differs from the large model alone
            assert not torch.equal(out, kind.run(reference_pipe, guidance_scale, **run_kwargs))
    return pipe


# -- stitched runs across pipelines and schedulers -----------------------------------------------------------

ALL_SCHEDULERS = ["ddpm", "ddim", "dpmsolver++", "euler", "heun", "kdpm2", "unipc"]


@pytest.mark.parametrize("scheduler_name", ALL_SCHEDULERS)
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_dit(scheduler_name, guidance_scale):
    check_stitched_run("dit", scheduler_name, 0.4, [0, 0, 1, 1, 1], guidance_scale)


@pytest.mark.parametrize("scheduler_name", ["ddim", "heun", "dpmsolver++"])
def test_dit_three_models(scheduler_name):
    check_stitched_run("dit", scheduler_name, [0.2, 0.4], [0, 1, 1, 2, 2], 4.0)


@pytest.mark.parametrize(
    ("scheduler_name", "guidance_scale"),
    [(name, 5.0) for name in ALL_SCHEDULERS] + [("ddim", 1.0), ("heun", 1.0), ("unipc", 1.0)],
)
def test_stable_diffusion(scheduler_name, guidance_scale):
    check_stitched_run("sd", scheduler_name, 0.6, [0, 0, 0, 1, 1], guidance_scale)


def test_stable_diffusion_three_models():
    check_stitched_run("sd", "unipc", [0.2, 0.2], [0, 1, 2, 2, 2], 5.0)


@pytest.mark.parametrize(
    ("scheduler_name", "guidance_scale"),
    [("dpmsolver++", 5.0), ("heun", 5.0), ("euler", 5.0), ("ddim", 1.0)],
)
def test_stable_diffusion_xl(scheduler_name, guidance_scale):
    check_stitched_run("sdxl", scheduler_name, 0.4, [0, 0, 1, 1, 1], guidance_scale)


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_stable_diffusion_3_flow_matching(guidance_scale):
    check_stitched_run("sd3", "flow-euler", 0.4, [0, 0, 1, 1, 1], guidance_scale)


def test_stable_diffusion_3_three_models():
    check_stitched_run("sd3", "flow-euler", [0.2, 0.2], [0, 1, 2, 2, 2], 5.0)


def test_stable_diffusion_3_skip_layer_guidance_calls_the_denoiser_twice_per_step():
    # Skip-layer guidance makes a second transformer call in steps 1..N-1 (start 0.01, stop 1.0 of N):
    # both calls of a step must see the same model, including at the switch (step 2).
    pipe = check_stitched_run(
        "sd3",
        "flow-euler",
        0.4,
        [0, 0, 1, 1, 1],
        5.0,
        calls_at=lambda p: 1 if p == 0 else 2,
        skip_guidance_layers=[1],
        skip_layer_guidance_start=0.01,
        skip_layer_guidance_stop=1.0,
    )
    assert tstitch.get_record(pipe).calls == [
        (0, 0),
        (1, 0),
        (1, 0),
        (2, 1),
        (2, 1),
        (3, 1),
        (3, 1),
        (4, 1),
        (4, 1),
    ]


# -- per-step plans: segments in any order --------------------------------------------------------------------

SEQUENCES = {
    "S>B>XL>B": [0, 1, 2, 2, 1],
    "XL>S>B (large first)": [2, 2, 0, 1, 1],
    "B>S>XL>S alternating": [1, 0, 2, 0, 2],
}


@pytest.mark.parametrize("scheduler_name", ["ddim", "heun"])
@pytest.mark.parametrize("kind_name", ["dit", "sd"])
@pytest.mark.parametrize("label", list(SEQUENCES))
def test_per_step_plans_run_exactly_the_named_models(label, kind_name, scheduler_name):
    """Per-call records and outputs for non-prefix plans; Heun's two scheduler calls of a step stay on one model."""
    sequence = SEQUENCES[label]
    plan = tstitch.Plan.from_sequence(sequence, names=["S", "B", "XL"])
    pipe = check_stitched_run(kind_name, scheduler_name, plan, sequence, 4.0 if kind_name == "dit" else 5.0)
    assert tstitch.get_record(pipe).model_per_step() == sequence


def test_large_first_two_model_plan_from_segments():
    plan = tstitch.Plan.from_segments([(1, 2), (0, 3)])
    assert str(plan) == "1x2 > 0x3"
    check_stitched_run("dit", "dpmsolver++", plan, [1, 1, 0, 0, 0], 4.0)


def test_a_per_step_plan_for_another_step_count_raises_before_any_model_runs():
    small, large = tiny_dit(1), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    tstitch.stitch(pipe, small, tstitch.Plan.from_sequence([0, 0, 1, 1, 1, 1]))
    computed = []
    handles = [m.pos_embed.register_forward_pre_hook(lambda *a: computed.append(1)) for m in (small, large)]
    with pytest.raises(ValueError, match=r"gives the model of 6 steps, but the run has num_steps=5"):
        run_dit(pipe)
    assert computed == []  # refused at the first denoiser call, before either model computed anything
    for handle in handles:
        handle.remove()
    run_dit(pipe, steps=6)
    assert tstitch.get_record(pipe).model_per_step() == [0, 0, 1, 1, 1, 1]


def test_a_plan_for_another_model_count_is_refused():
    small, large = tiny_dit(1), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    with pytest.raises(ValueError, match=r"2 models but the plan 0x1 > 1x1 > 2x1 is for 3 models"):
        tstitch.stitch(pipe, small, tstitch.Plan.from_sequence([0, 1, 2]))
    assert pipe.transformer is large and "forward" not in vars(large)


@pytest.mark.parametrize("scheduler_name", ["euler", "heun"])
def test_guidance_as_two_denoiser_calls_per_step(scheduler_name):
    pipe = check_stitched_run("two-call", scheduler_name, 0.4, [0, 0, 1, 1, 1], 3.0, calls_at=lambda p: 2)
    calls = tstitch.get_record(pipe).calls
    if scheduler_name == "heun":  # 2 calls per scheduler call, 2 scheduler calls per step but the last
        assert calls == [(s, 0) for s in (0, 0, 0, 0, 1, 1, 1, 1)] + [(s, 1) for s in (2, 2, 2, 2, 3, 3, 3, 3, 4, 4)]
    else:
        assert calls == [(0, 0), (0, 0), (1, 0), (1, 0), (2, 1), (2, 1), (3, 1), (3, 1), (4, 1), (4, 1)]


@pytest.mark.parametrize("scheduler_name", ["ddim", "heun"])
@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_controlnet(scheduler_name, guidance_scale):
    check_stitched_run("controlnet", scheduler_name, 0.4, [0, 0, 1, 1, 1], guidance_scale)


def test_controlnet_calls_interleave_with_one_model_per_step():
    small, large = tiny_unet(1), tiny_unet(2)
    pipe = controlnet_pipeline(large, tiny_controlnet(), SCHEDULERS["heun"]())
    tstitch.stitch(pipe, small, 0.4)
    with StitchCallLog(controlnet=pipe.controlnet, small=small, large=large) as log:
        run_controlnet(pipe)
    _, _, plan = plan_for("heun", [0, 0, 1, 1, 1])
    expected = []
    for model in plan:
        expected += ["controlnet", ("small", "large")[model]]
    assert log.names == expected
    # the ControlNet and the denoiser of one scheduler call see the same timestep
    assert log.timesteps[0::2] == log.timesteps[1::2] == pipe.scheduler.timesteps.tolist()


def test_img2img_counts_from_the_begin_index():
    """Img2img starts at a later step (``set_begin_index``): steps keep their place in the full schedule.

    Only schedulers with ``set_begin_index`` tell where a partial run starts; DDIM and DDPM have none, so
    with them a partial run is counted from its first step (a known limitation, not tested here).
    """

    def make(unet, scheduler):
        return tiny_pipeline(StableDiffusionImg2ImgPipeline, scheduler, unet=unet, **NO_SAFETY_CHECKER)

    image = torch.rand(2, 3, UNET_SAMPLE_SIZE, UNET_SAMPLE_SIZE, generator=torch.Generator().manual_seed(5))
    for scheduler_name in ("euler", "heun", "dpmsolver++"):
        small, large = tiny_unet(1), tiny_unet(2)
        pipe = make(large, SCHEDULERS[scheduler_name]())
        tstitch.stitch(pipe, small, 0.6)  # steps 0, 1, 2 small; strength 0.6 of 5 steps runs steps 2, 3, 4
        out = run_sd(pipe, image=image, strength=0.6)
        record = tstitch.get_record(pipe)
        _, steps, plan = plan_for(scheduler_name, [0, 0, 0, 1, 1])
        start = steps.index(2)
        assert record.calls == list(zip(steps[start:], plan[start:]))
        with suspended(pipe), follow_plan(large, [small], plan[start:]):
            reference = run_sd(make(large, SCHEDULERS[scheduler_name]()), image=image, strength=0.6)
        assert torch.equal(out, reference)


# -- exactness at the edges, unstitch, re-stitch -------------------------------------------------------------

EDGE_KINDS = ["dit", "sd", "sdxl", "sd3"]
EDGE_SCHEDULER = {"dit": "dpmsolver++", "sd": "heun", "sdxl": "euler", "sd3": "flow-euler"}


def _no_hooks(scheduler) -> bool:
    return not (HOOKS | {"_tstitch_counters", "_tstitch_saved"}) & set(vars(scheduler))


def _edge(kind_name):
    """The kind, its small and large model, and the maker of its edge scheduler."""
    kind = KINDS[kind_name]
    return kind, kind.model(1), kind.model(2), SCHEDULERS[EDGE_SCHEDULER[kind_name]]


def _outputs(kind, pipe):
    """The pipeline's latents and its images, each from a run of its own."""
    return kind.run(pipe), kind.run(pipe, output_type="np")


def _same(outputs, expected) -> bool:
    return torch.equal(outputs[0], expected[0]) and np.array_equal(outputs[1], expected[1])


@pytest.mark.parametrize("kind_name", EDGE_KINDS)
def test_fraction_zero_is_bit_identical_to_the_plain_pipeline(kind_name):
    kind, small, large, scheduler = _edge(kind_name)
    pipe = kind.pipe(large, scheduler())
    plain = _outputs(kind, pipe)
    tstitch.stitch(pipe, small, 0.0)
    with StitchCallLog(small=small) as log:
        assert _same(_outputs(kind, pipe), plain)
    assert log.names == []
    assert tstitch.get_record(pipe).num_calls[0] == 0


@pytest.mark.parametrize("kind_name", EDGE_KINDS)
def test_fraction_one_is_the_pipeline_built_around_the_small_model(kind_name):
    kind, small, large, scheduler = _edge(kind_name)
    small_alone = _outputs(kind, kind.pipe(small, scheduler()))
    pipe = kind.pipe(large, scheduler())
    assert not torch.equal(kind.run(pipe), small_alone[0])
    tstitch.stitch(pipe, small, 1.0)
    with StitchCallLog(small=small, large=large) as log:
        assert _same(_outputs(kind, pipe), small_alone)
    assert set(log.names) == {"small"}  # the large model hands every call on
    assert tstitch.get_record(pipe).num_calls[1] == 0


@pytest.mark.parametrize("kind_name", EDGE_KINDS)
def test_unstitch_restores_the_pipeline(kind_name):
    kind, small, large, scheduler = _edge(kind_name)
    pipe = kind.pipe(large, scheduler())
    before = kind.run(pipe)
    assert tstitch.stitch(pipe, small, 0.4) is pipe
    assert not torch.equal(kind.run(pipe), before)
    assert tstitch.unstitch(pipe) is pipe
    assert getattr(pipe, kind.attr) is large
    assert _no_hooks(pipe.scheduler)
    assert torch.equal(kind.run(pipe), before)
    with pytest.raises(ValueError, match="is not stitched"):
        tstitch.get_record(pipe)
    assert tstitch.unstitch(pipe) is pipe  # a no-op on a plain pipeline
    assert getattr(pipe, kind.attr) is large


@pytest.mark.parametrize("kind_name", ["dit", "sd"])
def test_restitching_replaces_the_stitch(kind_name):
    kind, scheduler_name = KINDS[kind_name], EDGE_SCHEDULER[kind_name]
    first, second, third, large = (kind.model(seed) for seed in (1, 2, 3, 4))
    pipe = kind.pipe(large, SCHEDULERS[scheduler_name]())
    before = kind.run(pipe)
    tstitch.stitch(pipe, first, 0.4)
    kind.run(pipe)
    old = get_stitch(pipe)
    tstitch.stitch(pipe, [second, third], [0.2, 0.4])  # around the original model, not the old stitch
    denoiser = get_stitch(pipe)
    assert denoiser is not old and denoiser.large is large and getattr(pipe, kind.attr) is large
    assert list(denoiser.models) == [second, third, large]
    with StitchCallLog(first=first, second=second, third=third, large=large) as log:
        out = kind.run(pipe)
    _, steps, plan = plan_for(scheduler_name, [0, 1, 1, 2, 2])
    assert log.names == [("second", "third", "large")[i] for i in plan]  # the first small model is gone
    assert tstitch.get_record(pipe).calls == list(zip(steps, plan))  # no double counting of steps
    assert set(vars(pipe.scheduler)) & HOOKS == HOOKS
    tstitch.unstitch(pipe)
    assert getattr(pipe, kind.attr) is large and _no_hooks(pipe.scheduler)
    assert torch.equal(kind.run(pipe), before)
    fresh = kind.pipe(large, SCHEDULERS[scheduler_name]())
    tstitch.stitch(fresh, [second, third], [0.2, 0.4])
    assert torch.equal(out, kind.run(fresh))
    tstitch.unstitch(fresh)


def test_stitching_takes_a_pipeline_as_the_small_model():
    small, large = tiny_dit(1), tiny_dit(2)
    small_pipe = dit_pipeline(small, SCHEDULERS["ddim"]())
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    tstitch.stitch(pipe, small_pipe, 0.4)
    assert get_stitch(pipe).models[0] is small
    with StitchCallLog(small=small, large=large) as log:
        run_dit(pipe)
    assert log.names == ["small"] * 2 + ["large"] * 3


def test_small_model_takes_the_pipelines_dtype():
    small, large = tiny_dit(1).to(torch.float64), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    tstitch.stitch(pipe, small, np.float32(0.4))  # a numpy fraction works too
    assert small.dtype == torch.float32
    out = run_dit(pipe)
    with suspended(pipe), follow_plan(large, [small], [0, 0, 1, 1, 1]):
        assert torch.equal(out, run_dit(dit_pipeline(large, SCHEDULERS["ddim"]())))


# -- the stitched denoiser stands in for the model it replaces -----------------------------------------------


def test_the_pipeline_keeps_its_model_and_the_stitch_lives_beside_it():
    small, large = tiny_dit(1), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    keys, modules, attrs = list(large.state_dict()), list(large.modules()), set(vars(large))
    tstitch.stitch(pipe, small, 0.4)
    assert pipe.transformer is large and pipe.components["transformer"] is large
    assert pipe.config.transformer == ("diffusers", "DiTTransformer2DModel")  # the config is not rewritten
    assert list(large.state_dict()) == keys and list(large.modules()) == modules  # no small model inside
    assert inspect.signature(large.forward) == inspect.signature(tiny_dit(3).forward)
    assert large.forward.__name__ == "forward"
    assert pipe.dtype == torch.float32 and pipe.device.type == "cpu"
    denoiser = get_stitch(pipe)
    assert get_stitch(large) is denoiser and get_stitch(denoiser) is denoiser
    assert isinstance(denoiser, StitchedDenoiser) and list(denoiser.models) == [small, large]
    assert denoiser.large is large and denoiser.plan == tstitch.Plan.from_small_fractions(0.4)
    assert denoiser.config is large.config and denoiser.out_channels == large.out_channels
    tstitch.unstitch(pipe)
    assert set(vars(large)) == attrs and list(large.state_dict()) == keys


def test_direct_calls_follow_the_scheduler_and_return_what_the_model_returns():
    small, large = tiny_dit(1), tiny_dit(2)
    x = torch.randn(2, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE, generator=_generator())
    kwargs = dict(timestep=torch.tensor([500, 500]), class_labels=torch.tensor([3, 4]))
    with torch.no_grad():
        small_out, large_out = small(x, **kwargs), large(x, **kwargs)
        large_tuple = large(x, return_dict=False, **kwargs)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    tstitch.stitch(pipe, small, 0.4)
    with torch.no_grad():
        pipe.scheduler.set_timesteps(N)
        out = pipe.transformer(x, **kwargs)
        assert type(out) is Transformer2DModelOutput
        assert torch.equal(out.sample, small_out.sample)  # step 0: the small model
        plain = pipe.transformer(x, return_dict=False, **kwargs)
        assert type(plain) is tuple and type(plain) is type(large_tuple)
        for t in pipe.scheduler.timesteps[:2]:  # steps 0 and 1 done: step 2 belongs to the large model
            pipe.scheduler.step(out.sample[:, :LATENT_CHANNELS], t, x)
        assert torch.equal(pipe.transformer(x, **kwargs).sample, large_out.sample)
    assert tstitch.get_record(pipe).calls == [(0, 0), (0, 0), (2, 1)]


def test_small_models_follow_the_large_models_dtype():
    small, large = tiny_dit(1), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    tstitch.stitch(pipe, small, 0.4)
    pipe.to(torch.float64)  # moves the pipeline's own model; the small one follows at its next call
    assert large.dtype == pipe.dtype == torch.float64
    latents = run_dit(pipe)
    assert small.dtype == torch.float64
    assert latents.dtype == torch.float64 and torch.isfinite(latents).all()
    assert tstitch.get_record(pipe).model_per_step() == [0, 0, 1, 1, 1]


def test_sdxl_reads_the_large_models_modules_through_the_stitch():
    small, large = tiny_unet(1, sdxl=True), tiny_unet(2, sdxl=True)
    pipe = sdxl_pipeline(large, SCHEDULERS["euler"]())
    tstitch.stitch(pipe, small, 0.4)
    assert pipe.unet is large  # StableDiffusionXLPipeline._get_add_time_ids reads large.add_embedding
    assert inspect.signature(pipe.unet.forward) == inspect.signature(tiny_unet(3, sdxl=True).forward)


def test_model_cpu_offload():
    small, large = tiny_dit(1), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["heun"]())
    tstitch.stitch(pipe, small, 0.4)
    expected = run_dit(pipe)
    pipe.enable_model_cpu_offload(device="cpu")
    assert "_hf_hook" in vars(large)  # accelerate hooked the large model, over the stitch
    _, steps, plan = plan_for("heun", [0, 0, 1, 1, 1])
    for _ in range(2):  # the hooks are re-armed after each run
        assert torch.equal(run_dit(pipe), expected)
        assert tstitch.get_record(pipe).calls == list(zip(steps, plan))
    assert inspect.signature(large.forward) == inspect.signature(tiny_dit(3).forward)
    tstitch.unstitch(pipe)
    plain = dit_pipeline(tiny_dit(2), SCHEDULERS["heun"]())
    assert torch.equal(run_dit(pipe), run_dit(plain))


def test_stitching_a_pipeline_with_model_cpu_offload_already_on():
    """Accelerate re-installs its hook after every call, resetting ``forward``: the stitch sits under it."""
    small, large = tiny_dit(1), tiny_dit(2)
    expected = run_dit(tstitch.stitch(dit_pipeline(tiny_dit(2), SCHEDULERS["heun"]()), tiny_dit(1), 0.4))
    pipe = dit_pipeline(large, SCHEDULERS["heun"]())
    pipe.enable_model_cpu_offload(device="cpu")
    plain = run_dit(pipe)
    tstitch.stitch(pipe, small, 0.4)
    for _ in range(3):
        assert torch.equal(run_dit(pipe), expected)
        assert tstitch.get_record(pipe).model_per_step() == [0, 0, 1, 1, 1]
    tstitch.unstitch(pipe)
    assert torch.equal(run_dit(pipe), plain)


def test_sequential_cpu_offload():
    probe = dit_pipeline(tiny_dit(9), SCHEDULERS["ddim"]())
    probe.enable_sequential_cpu_offload(device="cpu")
    try:
        run_dit(probe)
        runs_here = None
    except Exception as error:  # an environment limitation: it fails on a plain pipeline
        runs_here = f"{type(error).__name__}: {str(error).splitlines()[0]}"

    small, large = tiny_dit(1), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    tstitch.stitch(pipe, small, 0.4)
    expected = run_dit(pipe)
    pipe.enable_sequential_cpu_offload(device="cpu")
    hooked = [m for m in large.modules() if list(m.parameters(recurse=False))]
    assert hooked and all(hasattr(m, "_hf_hook") for m in hooked)
    # the small models are not pipeline components: offloading them is tstitch.fastpaths' job
    assert not any(hasattr(m, "_hf_hook") for m in small.modules())
    assert pipe._execution_device.type == "cpu"
    if runs_here is not None:
        pytest.skip(f"sequential CPU offload does not run here even without stitching ({runs_here})")
    assert torch.equal(run_dit(pipe), expected)


# -- swapping the scheduler ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind_name", ["dit", "sd"])
def test_swapping_the_scheduler_after_stitching(kind_name):
    kind = KINDS[kind_name]
    small, large = kind.model(1), kind.model(2)
    pipe = kind.pipe(large, SCHEDULERS["ddim"]())
    tstitch.stitch(pipe, small, 0.4)
    kind.run(pipe)
    for name in ("heun", "dpmsolver++", "kdpm2", "euler"):
        old = pipe.scheduler
        pipe.scheduler = SCHEDULERS[name]()
        out = kind.run(pipe)
        _, steps, plan = plan_for(name, [0, 0, 1, 1, 1])
        record = tstitch.get_record(pipe)
        assert record.calls == list(zip(steps, plan)), name
        assert record.timesteps == pipe.scheduler.timesteps.tolist()
        assert _no_hooks(old)  # the stitch let go of the old scheduler
        with suspended(pipe), follow_plan(large, [small], plan):
            reference = kind.run(kind.pipe(large, SCHEDULERS[name]()))
        assert torch.equal(out, reference), name


def test_pipelines_sharing_a_scheduler_count_independently():
    small, large = tiny_dit(1), tiny_dit(2)
    first = dit_pipeline(large, SCHEDULERS["ddim"]())
    second = DiTPipeline(**{**first.components, "transformer": tiny_dit(2)})  # same scheduler object
    second.set_progress_bar_config(disable=True)
    tstitch.stitch(first, small, 0.2)
    tstitch.stitch(second, small, 0.6)
    out_first, out_second = run_dit(first), run_dit(second)
    assert tstitch.get_record(first).model_per_step() == [0, 1, 1, 1, 1]  # not wiped by the second run
    assert tstitch.get_record(second).model_per_step() == [0, 0, 0, 1, 1]
    tstitch.unstitch(first)  # must not silence the second pipeline's step counting
    assert not _no_hooks(second.scheduler)
    assert torch.equal(run_dit(second), out_second)
    assert tstitch.get_record(second).calls == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1)]
    tstitch.unstitch(second)
    assert _no_hooks(first.scheduler)
    with follow_plan(large, [small], [0, 1, 1, 1, 1]):
        assert torch.equal(run_dit(first), out_first)


# -- the record ----------------------------------------------------------------------------------------------


def test_record_of_the_last_run():
    small, large = tiny_dit(1), tiny_dit(2)
    small._tstitch_name = "DiT-tiny"
    pipe = dit_pipeline(large, SCHEDULERS["heun"]())
    tstitch.stitch(pipe, small, 0.4, sync_timing=True)
    run_dit(pipe)
    record = tstitch.get_record(pipe)
    assert record is tstitch.get_record(pipe.transformer)
    assert record.model_names == ["DiT-tiny", "DiTTransformer2DModel[1]"]
    assert record.num_steps == N
    assert record.num_calls == [4, 5]
    assert all(seconds > 0 for seconds in record.seconds)
    timesteps = pipe.scheduler.timesteps.tolist()
    as_dict = record.as_dict()
    assert as_dict["model_per_step"] == [0, 0, 1, 1, 1]
    assert as_dict["calls"] == [
        {"step": step, "timestep": timesteps[i], "model": model} for i, (step, model) in enumerate(record.calls)
    ]
    assert as_dict["num_calls"] == [4, 5] and as_dict["num_steps"] == N

    run_dit(pipe, steps=3)  # a new run starts a new record
    assert record.num_steps == 3
    assert record.calls == [(0, 0), (0, 0), (1, 1), (1, 1), (2, 1)]  # floor(0.4 * 3) = 1 small step
    assert record.num_calls == [2, 3]
    assert record.timesteps == pipe.scheduler.timesteps.tolist()

    tstitch.stitch(pipe, small, 0.0)
    run_dit(pipe, steps=3)
    assert tstitch.get_record(pipe).seconds[0] == 0.0
    assert tstitch.get_record(pipe).num_calls == [0, 5]


# -- bad input: a ValueError naming the problem, and the pipeline left as it was -----------------------------


class NoDenoiserPipeline(DiffusionPipeline):
    def __init__(self, vae, scheduler):
        super().__init__()
        self.register_modules(vae=vae, scheduler=scheduler)


def _bad_cases():
    dit, unet = tiny_dit, tiny_unet
    v_prediction = DDIMScheduler.from_config(SCHEDULERS["ddim"]().config, prediction_type="v_prediction")
    stitched = StitchedDenoiser([dit(1), dit(2)], tstitch.Plan.from_small_fractions(0.5))
    return [
        ("dit", lambda: dit(1), 1.5, r"fractions\[0\] must be in \[0, 1\], got 1\.5"),
        ("dit", lambda: dit(1), -0.25, r"fractions\[0\] must be in \[0, 1\], got -0\.25"),
        ("dit", lambda: dit(1), float("nan"), r"fractions\[0\] must be in \[0, 1\], got nan"),
        (
            "dit",
            lambda: [dit(1), dit(3)],
            [0.3, float("nan")],
            r"fractions\[1\] must be in \[0, 1\], got nan",
        ),
        ("dit", lambda: [dit(1), dit(3)], [0.6, 0.5], r"sum to 1\.1, more than 1"),
        ("dit", lambda: [dit(1), dit(3)], [0.3], r"3 models but 1 fractions"),
        ("dit", lambda: dit(1), [0.3, 0.3], r"fractions must sum to 1"),
        ("dit", lambda: [dit(1), dit(3)], 0.3, r"3 models but a single fraction"),
        (
            "dit",
            lambda: dit(1, in_channels=8, out_channels=8),
            0.4,
            r"models\[0\] .*latent channels \(config\.in_channels\) is 8, the pipeline's is 4",
        ),
        (
            "dit",
            lambda: dit(1, sample_size=8),
            0.4,
            r"models\[0\] .*sample size \(config\.sample_size\) is 8, the pipeline's is 4",
        ),
        (
            "dit",
            lambda: dit(1, out_channels=4),
            0.4,
            r"output channels \(learned sigma\) \(config\.out_channels\) is 4, the pipeline's is 8",
        ),
        (
            "dit",
            lambda: dit(1, out_channels=None),  # the effective value, not the config's None
            0.4,
            r"output channels \(learned sigma\) \(config\.out_channels\) is 4, the pipeline's is 8",
        ),
        (
            "dit",
            lambda: dit(1, num_embeds_ada_norm=10),
            0.4,
            r"class count \(config\.num_embeds_ada_norm\) is 10, the pipeline's is 1000",
        ),
        (
            "dit",
            lambda: [dit(1), dit(3, sample_size=8)],
            [0.2, 0.2],
            r"models\[1\] does not match .*sample_size",
        ),
        (
            "dit",
            lambda: dit_pipeline(dit(1), v_prediction),
            0.4,
            r"models\[0\] .*prediction type is 'v_prediction', the pipeline's is 'epsilon'",
        ),
        (
            "dit",
            lambda: NoDenoiserPipeline(tiny_vae(), SCHEDULERS["ddim"]()),
            0.4,
            r"NoDenoiserPipeline has no denoiser to stitch",
        ),
        (
            "dit",
            lambda: "DiT-S/2",
            0.4,
            r"models\[0\] must be a torch module or a diffusers pipeline, got str",
        ),
        ("dit", lambda: stitched, 0.4, r"models\[0\] is itself a stitched denoiser"),
        (
            "sd",
            lambda: unet(1, cross_attention_dim=16),
            0.4,
            r"cross-attention width \(config\.cross_attention_dim\) is 16, the pipeline's is 8",
        ),
        ("sd", lambda: unet(1, num_class_embeds=10), 0.4, r"class count \(config\.num_class_embeds\) is 10"),
        ("sd", lambda: unet(1, in_channels=8), 0.4, r"latent channels \(config\.in_channels\) is 8"),
        (
            "sdxl",
            lambda: unet(1),
            0.4,
            r"added conditioning \(config\.addition_embed_type\) is None, "
            r"the pipeline's is 'text_time'",
        ),
        (
            "sd3",
            lambda: tiny_sd3_transformer(1, joint_attention_dim=16),
            0.4,
            r"cross-attention width \(config\.joint_attention_dim\) is 16, the pipeline's is 8",
        ),
    ]


BAD_CASES = _bad_cases()


@pytest.mark.parametrize(
    ("kind_name", "make_models", "fractions", "match"),
    BAD_CASES,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(BAD_CASES)],
)
def test_bad_input_raises_and_leaves_the_pipeline_untouched(kind_name, make_models, fractions, match):
    kind = KINDS[kind_name]
    large = kind.model(2)
    pipe = kind.pipe(large, SCHEDULERS["ddim"]())
    before = kind.run(pipe)
    models = make_models()
    modules = [m for m in (models if isinstance(models, list) else [models]) if isinstance(m, torch.nn.Module)]
    for module in modules:
        module.to(torch.float64)  # stitch() would cast these: it must not before validation passed
    with pytest.raises(ValueError, match=match):
        tstitch.stitch(pipe, models, fractions)
    assert getattr(pipe, kind.attr) is large
    assert _no_hooks(pipe.scheduler)
    assert all(module.dtype == torch.float64 for module in modules)
    assert torch.equal(kind.run(pipe), before)


def test_bad_input_leaves_a_stitched_pipeline_stitched():
    small, large = tiny_dit(1), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    tstitch.stitch(pipe, small, 0.4)
    denoiser = pipe.transformer
    before = run_dit(pipe)
    for models, fractions in [
        (tiny_dit(3), 2.0),
        (tiny_dit(3, sample_size=8), 0.4),
        ([tiny_dit(3)] * 2, 0.5),
    ]:
        with pytest.raises(ValueError):
            tstitch.stitch(pipe, models, fractions)
        assert pipe.transformer is denoiser
        assert torch.equal(run_dit(pipe), before)
        assert tstitch.get_record(pipe).model_per_step() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    "pipe", [NoDenoiserPipeline(tiny_vae(), DDIMScheduler()), object()], ids=["pipeline", "object"]
)
def test_a_pipeline_without_denoiser(pipe):
    with pytest.raises(
        ValueError,
        match="has no denoiser to stitch: expected a torch module in one of the attributes transformer, unet",
    ):
        tstitch.stitch(pipe, tiny_dit(1), 0.4)
    with pytest.raises(ValueError, match="is not stitched"):
        tstitch.get_record(pipe)
