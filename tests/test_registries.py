# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Every row of every registry, exercised: a scheduler, a model family or a preset added as one row is tested
here the moment it is added (SCHEDULERS, FAMILIES, PRESETS, the benchmark's SUITES)."""

from __future__ import annotations

import pytest
import torch
from test_presets import save_sd
from tiny_models import DIT_SAMPLE_SIZE, LATENT_CHANNELS, one_thread, tiny_dit, tiny_vae  # noqa: F401

import tstitch
from tstitch.bench import CASE_BUILDERS, SUITES
from tstitch.models.checkpoints import save_dit_safetensors
from tstitch.models.families import FAMILIES, embedded_models, family_of_class, family_of_name
from tstitch.models.loading import check_preset, load_preset
from tstitch.models.presets import PRESETS, ModelSource, Preset
from tstitch.plan import Plan
from tstitch.sampling import SCHEDULERS, Guidance, denoise, make_scheduler
from tstitch.sampling.schedulers import DIT_NOISE_SCHEDULE

LABELS = [1, 7]
STEPS = 4


@pytest.fixture(scope="module")
def dits():
    return [tiny_dit(0).eval(), tiny_dit(1, num_layers=2).eval()]


def noise(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(LABELS), LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE, generator=generator)


# -- SCHEDULERS ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_samples_a_stitch_with_the_one_loop(dits, name):
    if SCHEDULERS[name].pipelines_only:  # flow matching on a DiT's beta schedule: refused when it is built
        with pytest.raises(ValueError, match="needs a flow-matching model"):
            make_scheduler(name, DIT_NOISE_SCHEDULE, learned_variance=True)
        return
    scheduler = make_scheduler(name, DIT_NOISE_SCHEDULE, learned_variance=True)
    out = tstitch.sample(dits, 0.5, scheduler, noise=noise(), class_labels=LABELS, num_inference_steps=STEPS,
                         guidance_scale=3.0, generator=torch.Generator().manual_seed(1))
    assert out.latents.shape == noise().shape and torch.isfinite(out.latents).all()
    per_step = out.record.model_per_step()
    assert set(per_step) == {0, 1} and per_step == sorted(per_step)  # small model first, then the large one
    if len(scheduler.timesteps) == STEPS:  # one call per step: the stitch is exactly the loop picking the models itself
        assert per_step == Plan.from_small_fractions(0.5).assignment(STEPS)
        fresh = make_scheduler(name, DIT_NOISE_SCHEDULE, learned_variance=True)
        plain = denoise(lambda step: dits[per_step[step]], fresh, noise(), class_labels=LABELS,
                        num_inference_steps=STEPS, guidance=Guidance(3.0, null_class=1000),
                        generator=torch.Generator().manual_seed(1))
        assert torch.equal(out.latents, plain)


# -- FAMILIES ------------------------------------------------------------------------------------------------


def family_sources(name: str, tmp_path) -> tuple[str, dict, object]:
    """A source of family ``name``, load options, and the condition its call takes."""
    if name == "digits":
        return "digits-s", {}, torch.tensor([3])
    if name == "dit":
        return str(save_dit_safetensors(tiny_dit(2).eval(), tmp_path / "dit.safetensors")), {}, torch.tensor([3])
    if name == "diffusers-pipeline":
        return str(save_sd(tmp_path / "sd")), {}, None
    if name == "ldm":
        from write_ldm_checkpoints import write_ldm_checkpoints

        return str(write_ldm_checkpoints(tmp_path, tiny=True)[0]), {}, torch.tensor([3])
    raise AssertionError(f"no test source for the new family {name!r}: add one here")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_loads_calls_and_decodes(name, tmp_path):
    family = FAMILIES[name]
    source, options, condition = family_sources(name, tmp_path)
    loaded = family.load(source, device=torch.device("cpu"), dtype=torch.float32, offline=True, **options)
    if family.kind == "pipeline":
        from tstitch.models.families import denoiser_of

        _, model = denoiser_of(loaded)
        vae = loaded.vae
        condition = torch.zeros(1, 4, model.config.cross_attention_dim)
    else:
        model, vae = loaded, (tiny_vae() if family.decode is not FAMILIES["digits"].decode else None)
    config = model.config
    x = torch.randn(1, config.in_channels, config.sample_size, config.sample_size)
    with torch.no_grad():
        prediction = family.call(model, x, torch.tensor([500]), condition)
    assert prediction.shape[0] == 1 and prediction.shape[2:] == x.shape[2:] and torch.isfinite(prediction).all()
    images = family.decode(x, vae, 1.0, 1)
    assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1
    if family.noise_schedule is not None:
        assert family.noise_schedule()["num_train_timesteps"] == 1000
    for member in family.members():
        assert family_of_name(member) is family
    for class_name in family.class_names:
        assert family_of_class(class_name) is family


def test_embedded_models_are_the_digits_family():
    assert embedded_models() == ["digits-s", "digits-b", "digits-xl", "digits-unet-s", "digits-unet"]


# -- PRESETS -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_row_is_valid(name):
    preset = PRESETS[name]
    check_preset(preset)
    assert preset.name == name and preset.family in FAMILIES
    assert preset.kind == FAMILIES[preset.family].kind
    for source in preset.models:
        if source.zoo:
            assert family_of_name(source.zoo) is FAMILIES[preset.family]


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if all(s.zoo for s in p.models)])
def test_every_offline_preset_loads_and_samples(name):
    loaded = load_preset(name)
    assert loaded.family == PRESETS[name].family and loaded.names == [s.zoo for s in PRESETS[name].models]
    x = torch.zeros(2, *loaded.latent_shape)
    with torch.no_grad():
        assert loaded.call(loaded.large, x, torch.tensor([10, 10]), torch.tensor([0, 1])).shape == x.shape
    assert loaded.decode(x, 2).shape == x.shape


def test_a_bad_preset_row_is_refused_with_every_problem():
    bad = Preset("bad", "", "nope", (ModelSource("x"),), (0.5, 0.7), scheduler="ddimm")
    with pytest.raises(ValueError) as error:
        check_preset(bad)
    message = str(error.value)
    assert all(part in message for part in ("family 'nope'", "1 model(s)", "fractions (0.5, 0.7)",
                                            "scheduler 'ddimm'", "no hub id"))


# -- the benchmark's SUITES ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", list(SUITES))
def test_every_benchmark_suite_names_known_cases(suite):
    assert SUITES[suite] and all(name in CASE_BUILDERS for name, _ in SUITES[suite])


# -- the loop's callback and per-model unconditional inputs -------------------------------------------------------


def test_the_callback_sees_every_step_in_order(dits):
    states = []
    latents = denoise(lambda step: dits[step % 2], make_scheduler("ddim", DIT_NOISE_SCHEDULE), noise(),
                      class_labels=LABELS, num_inference_steps=STEPS, guidance=Guidance(2.0), callback=states.append)
    assert [s["i"] for s in states] == list(range(STEPS))
    assert torch.equal(states[0]["x"], noise())  # DDIM's initial sigma is 1
    for before, after in zip(states, states[1:]):
        assert torch.equal(before["next"], after["x"])
    assert torch.equal(states[-1]["next"], latents)
    assert states[0]["denoised"].shape == noise().shape


def test_each_model_can_bring_its_own_unconditional_input(dits):
    seen = []

    def unconditional(model, labels):
        seen.append(model)
        return torch.full_like(labels, 1000 if model is dits[1] else 999)

    plan = [0, 0, 1, 1]
    guided = denoise(lambda step: dits[plan[step]], make_scheduler("ddim", DIT_NOISE_SCHEDULE), noise(),
                     class_labels=LABELS, num_inference_steps=STEPS,
                     guidance=Guidance(2.0, unconditional=unconditional))
    assert seen == [dits[i] for i in plan]
    default = denoise(lambda step: dits[plan[step]], make_scheduler("ddim", DIT_NOISE_SCHEDULE), noise(),
                      class_labels=LABELS, num_inference_steps=STEPS, guidance=Guidance(2.0))
    assert not torch.equal(guided, default)  # the small model's null label 999 changed its predictions
