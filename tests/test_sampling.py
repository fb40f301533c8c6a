# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The bare sampling loop ``tstitch.sample`` with DiTTransformer2DModel denoisers and diffusers schedulers."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_models import (  # one_thread: an autouse fixture
    DIT_SAMPLE_SIZE,
    LATENT_CHANNELS,
    NUM_CLASSES,
    SCHEDULERS,
    SECOND_ORDER,
    CallLog,
    dit_pipeline,
    one_thread,  # noqa: F401
    step_of_each_scheduler_call,
    tiny_dit,
)

import tstitch
from tstitch import Plan, StitchedDenoiser

NUM_STEPS = 5
LABELS = [1, 7, 42]
ALL_SCHEDULERS = ["ddpm", "ddim", "dpmsolver++", "euler", "heun", "kdpm2", "unipc"]


def make_scheduler(name: str, learned_sigma: bool = True):
    scheduler = SCHEDULERS[name]()
    if name == "ddpm" and learned_sigma:  # the DiT training setup: the model predicts its variance too
        scheduler = type(scheduler).from_config(scheduler.config, variance_type="learned_range")
    return scheduler


def make_noise(batch: int = len(LABELS), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE, generator=generator)


def run_sample(models, fractions, scheduler, guidance_scale=4.0, labels=LABELS, **kwargs):
    """``tstitch.sample`` on the test's noise; ``scheduler``: a scheduler, or a name to make one by."""
    kwargs.setdefault("generator", torch.Generator().manual_seed(123))
    learned_sigma = kwargs.pop("learned_sigma", True)
    return tstitch.sample(
        models,
        fractions,
        make_scheduler(scheduler, learned_sigma=learned_sigma) if isinstance(scheduler, str) else scheduler,
        noise=make_noise(len(labels)),
        class_labels=labels,
        num_inference_steps=NUM_STEPS,
        guidance_scale=guidance_scale,
        **kwargs,
    )


@torch.no_grad()
def reference_sample(plan, scheduler, labels, guidance_scale, guided_channels=None, seed=123):
    """A plain DiT sampling loop, written after the published DiT sampler (``forward_with_cfg``), that runs
    ``plan[i]`` at the i-th scheduler call. Independent of tstitch."""
    generator = torch.Generator().manual_seed(seed)
    noise = make_noise(len(labels))
    batch, channels = noise.shape[:2]
    guided = channels if guided_channels is None else guided_channels
    learned = scheduler.config.get("variance_type") in ("learned", "learned_range")
    labels = torch.tensor(labels)
    cfg = guidance_scale > 1
    if cfg:
        labels = torch.cat([labels, torch.full_like(labels, NUM_CLASSES)])
    scheduler.set_timesteps(NUM_STEPS)
    assert len(scheduler.timesteps) == len(plan)
    x = noise * scheduler.init_noise_sigma
    for model, t in zip(plan, scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([x, x]) if cfg else x, t)
        out = model(model_input, timestep=t.expand(len(model_input)), class_labels=labels).sample
        if cfg:
            eps, rest = out[:, :guided], out[:, guided:]
            cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
            half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
            out = torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)[:batch]
        model_output = out if learned else out[:, :channels]
        step_kwargs = {"generator": generator} if "generator" in _step_params(scheduler) else {}
        x = scheduler.step(model_output, t, x, **step_kwargs).prev_sample
    return x


def _step_params(scheduler):
    import inspect

    return inspect.signature(scheduler.step).parameters


def expected_plan(scheduler_name: str, assignment: list[int]) -> list[int]:
    return [assignment[step] for step in step_of_each_scheduler_call(scheduler_name, NUM_STEPS)]


@pytest.fixture(scope="module")
def models():
    return tiny_dit(seed=1), tiny_dit(seed=2), tiny_dit(seed=3)  # small, medium, large


# -- exactness at the edges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler_name", ["ddpm", "ddim", "heun", "dpmsolver++"])
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_fraction_zero_is_the_large_model_alone(models, scheduler_name, guidance_scale):
    small, _, large = models
    stitched = run_sample([small, large], 0.0, scheduler_name, guidance_scale)
    alone = run_sample(large, 0.0, scheduler_name, guidance_scale)
    assert torch.equal(stitched.latents, alone.latents)
    assert stitched.record.num_calls[0] == 0
    reference = reference_sample(
        [large] * len(stitched.record.calls), make_scheduler(scheduler_name), LABELS, guidance_scale
    )
    assert torch.equal(stitched.latents, reference)


@pytest.mark.parametrize("scheduler_name", ["ddpm", "ddim", "heun", "unipc"])
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_fraction_one_is_the_small_model_alone(models, scheduler_name, guidance_scale):
    small, _, large = models
    stitched = run_sample([small, large], 1.0, scheduler_name, guidance_scale)
    alone = run_sample(small, None, scheduler_name, guidance_scale)
    assert torch.equal(stitched.latents, alone.latents)
    assert stitched.record.num_calls[1] == 0
    assert not torch.equal(stitched.latents, run_sample(large, None, scheduler_name, guidance_scale).latents)


# -- stitched runs against an independent loop ---------------------------------------------------------------


@pytest.mark.parametrize("scheduler_name", ALL_SCHEDULERS)
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_two_models_match_reference_and_call_order(models, scheduler_name, guidance_scale):
    small, _, large = models
    assignment = [0, 0, 1, 1, 1]  # 0.4 of 5 steps
    plan = expected_plan(scheduler_name, assignment)
    with CallLog(small=small, large=large) as log:
        out = run_sample([small, large], 0.4, scheduler_name, guidance_scale)
    names = ["small", "large"]
    assert log.names == [names[i] for i in plan]
    steps = step_of_each_scheduler_call(scheduler_name, NUM_STEPS)
    assert out.record.calls == [(step, assignment[step]) for step in steps]
    assert out.record.model_per_step() == assignment
    assert out.record.num_calls == [plan.count(0), plan.count(1)]
    scheduler = make_scheduler(scheduler_name)
    scheduler.set_timesteps(NUM_STEPS)
    assert log.timesteps == scheduler.timesteps.tolist() == out.record.timesteps
    batch = len(LABELS) * (2 if guidance_scale > 1 else 1)
    assert all(entry["batch"] == batch for entry in log.entries)
    reference = reference_sample(
        [(small, large)[i] for i in plan], make_scheduler(scheduler_name), LABELS, guidance_scale
    )
    assert torch.equal(out.latents, reference)
    assert torch.isfinite(out.latents).all()


@pytest.mark.parametrize("scheduler_name", SECOND_ORDER)
def test_second_order_never_switches_inside_a_step(models, scheduler_name):
    small, _, large = models
    # 0.5 of 5 steps is 2 steps (floor 2.5); counted per call, half of the 9 calls would end mid-step 2
    out = run_sample([small, large], 0.5, scheduler_name)
    assert out.record.calls == [(0, 0), (0, 0), (1, 0), (1, 0), (2, 1), (2, 1), (3, 1), (3, 1), (4, 1)]
    for step in range(NUM_STEPS):
        assert len({model for s, model in out.record.calls if s == step}) == 1


@pytest.mark.parametrize("scheduler_name", ["ddim", "heun", "dpmsolver++"])
def test_three_models(models, scheduler_name):
    small, medium, large = models
    assignment = [0, 1, 1, 2, 2]  # (0.2, 0.4) of 5 steps: boundaries 1 and 3
    plan = expected_plan(scheduler_name, assignment)
    with CallLog(small=small, medium=medium, large=large) as log:
        out = run_sample([small, medium, large], [0.2, 0.4], scheduler_name)
    names = ["small", "medium", "large"]
    assert log.names == [names[i] for i in plan]
    assert out.record.model_per_step() == assignment
    reference = reference_sample([models[i] for i in plan], make_scheduler(scheduler_name), LABELS, 4.0)
    assert torch.equal(out.latents, reference)


def test_schedule_object_and_single_label(models):
    small, _, large = models
    out = run_sample([small, large], Plan((0.6, 0.4)), "ddim", labels=[5])
    assert out.record.model_per_step() == [0, 0, 0, 1, 1]
    assert out.latents.shape == (1, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE)


# -- guidance, learned sigma, labels -------------------------------------------------------------------------


class StepSpy:
    """Wraps ``scheduler.step`` to keep the model outputs it is given."""

    def __init__(self, scheduler):
        self.outputs = []
        original = scheduler.step

        @functools.wraps(original)
        def step(model_output, *args, **kwargs):
            self.outputs.append(model_output.clone())
            return original(model_output, *args, **kwargs)

        scheduler.step = step


class OutputSpy:
    """Keeps the raw outputs of a model."""

    def __init__(self, model):
        self.outputs = []
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.outputs.append(output.sample.clone())


@pytest.mark.parametrize(("learned_sigma", "channels"), [(True, 2 * LATENT_CHANNELS), (False, LATENT_CHANNELS)])
def test_learned_sigma_reaches_only_schedulers_that_learn_it(models, learned_sigma, channels):
    small, _, large = models
    scheduler = make_scheduler("ddpm", learned_sigma=learned_sigma)
    spy = StepSpy(scheduler)
    run_sample([small, large], 0.4, scheduler, generator=torch.Generator().manual_seed(0))
    expected = (len(LABELS), channels, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE)
    assert [tuple(o.shape) for o in spy.outputs] == [expected] * NUM_STEPS


@pytest.mark.parametrize("guided_channels", [None, 3, 0])
def test_guided_channels(models, guided_channels):
    small, _, large = models
    scheduler = make_scheduler("ddpm")
    step_spy = StepSpy(scheduler)
    small_spy, large_spy = OutputSpy(small), OutputSpy(large)
    scale, batch, channels = 4.0, len(LABELS), LATENT_CHANNELS
    try:
        run_sample([small, large], 0.4, scheduler, guidance_scale=scale, guided_channels=guided_channels,
                   generator=torch.Generator().manual_seed(0))
    finally:
        small_spy.handle.remove()
        large_spy.handle.remove()
    raw_outputs = small_spy.outputs + large_spy.outputs  # small ran the first steps
    guided = channels if guided_channels is None else guided_channels
    for raw, given in zip(raw_outputs, step_spy.outputs, strict=True):
        cond, uncond = raw[:batch], raw[batch:]
        expected_eps = uncond[:, :guided] + scale * (cond[:, :guided] - uncond[:, :guided])
        assert torch.equal(given[:, :guided], expected_eps)
        assert torch.equal(given[:, guided:channels], cond[:, guided:channels])  # unguided: conditional
        assert torch.equal(given[:, channels:], cond[:, channels:])  # learned variance: conditional


@pytest.mark.parametrize("scheduler_name", ["ddpm", "euler"])
def test_guided_channels_matches_published_sampler(models, scheduler_name):
    small, _, large = models
    out = run_sample([small, large], 0.4, scheduler_name, guided_channels=3)
    plan = expected_plan(scheduler_name, [0, 0, 1, 1, 1])
    reference = reference_sample(
        [(small, large)[i] for i in plan], make_scheduler(scheduler_name), LABELS, 4.0, guided_channels=3
    )
    assert torch.equal(out.latents, reference)
    assert not torch.equal(out.latents, run_sample([small, large], 0.4, scheduler_name).latents)


def test_null_class_defaults_to_the_class_count(models):
    small, _, large = models
    with CallLog(small=small, large=large) as log:
        run_sample([small, large], 0.4, "ddim", guidance_scale=2.0)
    assert all(entry["class_labels"] == LABELS + [NUM_CLASSES] * len(LABELS) for entry in log.entries)
    with CallLog(small=small, large=large) as log:
        run_sample([small, large], 0.4, "ddim", guidance_scale=2.0, null_class=999)
    assert all(entry["class_labels"] == LABELS + [999] * len(LABELS) for entry in log.entries)
    with CallLog(small=small, large=large) as log:
        run_sample([small, large], 0.4, "ddim", guidance_scale=1.0)
    assert all(entry["class_labels"] == LABELS and entry["batch"] == len(LABELS) for entry in log.entries)


def test_tuple_outputs_and_unknown_null_class():
    class Plain(torch.nn.Module):  # no config: no class count; returns a tuple
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x, timestep=None, class_labels=None):
            return (x * self.scale + class_labels.view(-1, 1, 1, 1),)

    small, large = Plain(0.5), Plain(0.25)
    with pytest.raises(ValueError, match="null class"):
        run_sample([small, large], 0.4, "ddim", guidance_scale=2.0)
    out = run_sample([small, large], 0.4, "ddim", guidance_scale=2.0, null_class=0)
    assert out.record.model_per_step() == [0, 0, 1, 1, 1]
    assert torch.isfinite(out.latents).all()


# -- bad input -----------------------------------------------------------------------------------------------


def test_bad_input(models):
    small, _, large = models
    with pytest.raises(ValueError, match="2 class labels for a batch of 3"):
        tstitch.sample([small, large], 0.4, make_scheduler("ddim"), noise=make_noise(3), class_labels=[1, 2])
    with pytest.raises(ValueError, match="classifier-free guidance needs class_labels"):
        tstitch.sample([small, large], 0.4, make_scheduler("ddim"), noise=make_noise(), guidance_scale=3.0)
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 4\)"):
        tstitch.sample([small, large], 0.4, make_scheduler("ddim"), noise=make_noise()[0], class_labels=[1])
    with pytest.raises(ValueError, match=r"fractions\[0\] must be in \[0, 1\], got 1\.5"):
        tstitch.sample([small, large], 1.5, make_scheduler("ddim"), noise=make_noise(), class_labels=LABELS)
    with pytest.raises(ValueError, match="3 models but the plan 0.5 -> 0.5 is for 2 models"):
        tstitch.sample(
            [small, small, large],
            Plan((0.5, 0.5)),
            make_scheduler("ddim"),
            noise=make_noise(),
            class_labels=LABELS,
        )


# -- a ready StitchedDenoiser, the record --------------------------------------------------------------------


def test_ready_stitched_denoiser_and_scheduler_restored(models):
    small, _, large = models
    denoiser = StitchedDenoiser([small, large], Plan.from_small_fractions(0.6))
    scheduler = make_scheduler("ddim")
    out = tstitch.sample(
        denoiser,
        0.0,
        scheduler,
        noise=make_noise(),
        class_labels=LABELS,
        num_inference_steps=NUM_STEPS,
        guidance_scale=4.0,
    )  # fractions ignored
    assert out.record is denoiser.record
    assert out.record.model_per_step() == [0, 0, 0, 1, 1]
    assert not {"step", "set_timesteps", "set_begin_index"} & set(vars(scheduler))  # hooks removed
    again = run_sample([small, large], 0.6, "ddim")
    assert torch.equal(out.latents, again.latents)


def test_sampling_with_a_stitched_pipelines_denoiser_keeps_the_pipeline_stitched(models):
    small, _, large = models
    pipe = dit_pipeline(large, make_scheduler("ddim"))
    tstitch.stitch(pipe, small, 0.4)

    def run_pipe():
        return pipe(
            LABELS,
            num_inference_steps=NUM_STEPS,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images

    before = run_pipe()
    out = tstitch.sample(
        tstitch.get_stitch(pipe),  # the pipeline's stitch, borrowed (pipe.transformer is the plain large model)
        None,
        make_scheduler("euler"),
        noise=make_noise(),
        class_labels=LABELS,
        num_inference_steps=NUM_STEPS,
    )
    assert out.record.model_per_step() == [0, 0, 1, 1, 1]
    after = run_pipe()  # still stitched, still counting the pipeline's steps
    assert (before == after).all()
    assert tstitch.get_record(pipe).model_per_step() == [0, 0, 1, 1, 1]
    tstitch.unstitch(pipe)
    assert pipe.transformer is large


def test_record(models):
    small, _, large = models
    out = run_sample([small, large], 0.4, "heun")
    record = out.record
    assert record.model_names == ["DiTTransformer2DModel[0]", "DiTTransformer2DModel[1]"]
    assert record.num_steps == NUM_STEPS
    assert record.num_calls == [4, 5]
    assert len(record.seconds) == 2 and all(s > 0 for s in record.seconds)
    as_dict = record.as_dict()
    assert as_dict["model_per_step"] == [0, 0, 1, 1, 1]
    assert [c["step"] for c in as_dict["calls"]] == step_of_each_scheduler_call("heun", NUM_STEPS)
    assert [c["model"] for c in as_dict["calls"]] == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    scheduler = make_scheduler("heun")
    scheduler.set_timesteps(NUM_STEPS)
    assert [c["timestep"] for c in as_dict["calls"]] == scheduler.timesteps.tolist()


def test_progress_bar_and_single_model(models):
    _, _, large = models
    out = run_sample([large], 0.0, "ddim", progress=True)
    assert out.record.model_per_step() == [0] * NUM_STEPS
    assert torch.equal(out.latents, run_sample(large, 0.0, "ddim").latents)
