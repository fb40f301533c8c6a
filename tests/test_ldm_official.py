# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The published LDM-S -> LDM sampler: schedule, timesteps, coefficients, the strict switch, per-model
conditioning (exact call records), random-number order, and whole runs against the independent float64
reference (``ldm_reference.py``: CompVis U-Net forward + DDIM written from the description). CPU, tiny models.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from ldm_reference import (
    UNetSpec,
    VQSpec,
    random_unet_state_dict,
    random_vq_state_dict,
    reference_ldm_sample,
    unet_forward,
)

from tstitch.models.ldm_checkpoints import (
    convert_ldm_unet_state_dict,
    infer_ldm_unet_config,
    load_vq_first_stage,
)
from tstitch.plan import Plan
from tstitch.sampling import ClassConditionedUNet, ClassEmbedder
from tstitch.sampling.ldm_official import (
    LDMDDIMSchedule,
    compvis_alphas_cumprod,
    ddim_scheduler_config,
    ddim_timesteps,
    decode_ldm_latents,
    make_ddim_scheduler,
    sample_ldm_official,
)

# -- the pair: two CompVis U-Nets with their own context widths (8 and 16), converted -----------------------

SPECS = (UNetSpec(context_dim=8, num_res_blocks=1), UNetSpec(context_dim=16, channel_mult=(1, 1)))


@pytest.fixture(scope="module")
def pair():
    unets, embedders, sds = [], [], []
    for i, spec in enumerate(SPECS):
        sd = random_unet_state_dict(spec, seed=20 + i)
        config = infer_ldm_unet_config(sd)
        unet = UNet2DConditionModel(**config).eval()
        unet.load_state_dict(convert_ldm_unet_state_dict(sd, config))
        embedder = ClassEmbedder(10, spec.context_dim).eval()
        with torch.no_grad():
            table = torch.randn(10, spec.context_dim, generator=torch.Generator().manual_seed(i))
            embedder.embedding.weight.copy_(table)
        unets.append(unet)
        embedders.append(embedder)
        sds.append(sd)
    return SimpleNamespace(unets=unets, embedders=embedders, sds=sds)


class Recorder(torch.nn.Module):
    """A deterministic stand-in U-Net that records (x, t, context) of every call."""

    def __init__(self, context_dim: int, seed: int):
        super().__init__()
        self.config = SimpleNamespace(cross_attention_dim=context_dim)
        gen = torch.Generator().manual_seed(seed)
        self.mix = torch.nn.Parameter(torch.randn(4, 4, generator=gen) / 3, requires_grad=False)
        self.read = torch.nn.Parameter(torch.randn(context_dim, generator=gen), requires_grad=False)
        self.calls = []

    def forward(self, x, t, encoder_hidden_states):
        self.calls.append((x.clone(), t.clone(), encoder_hidden_states.clone()))
        h = torch.einsum("oc,bchw->bohw", self.mix, x) + torch.sin(t.float() / 100)[:, None, None, None]
        return SimpleNamespace(sample=h + (encoder_hidden_states[:, 0] @ self.read)[:, None, None, None] / 10)


# -- schedule and timesteps ------------------------------------------------------------------------------------


def test_compvis_linear_schedule_by_hand():
    abar = compvis_alphas_cumprod()
    assert abar.dtype == np.float64 and abar.shape == (1000,)
    assert abar[0] == pytest.approx(1 - 0.0015, abs=1e-15)
    step = (math.sqrt(0.0195) - math.sqrt(0.0015)) / 999
    assert abar[1] == pytest.approx((1 - 0.0015) * (1 - (math.sqrt(0.0015) + step) ** 2), rel=1e-14)
    assert 1 - abar[999] / abar[998] == pytest.approx(0.0195, rel=1e-12)


def test_uniform_ddim_timesteps():
    assert ddim_timesteps(100) == list(range(1, 1000, 10))
    assert ddim_timesteps(100)[:3] == [1, 11, 21] and ddim_timesteps(100)[-1] == 991
    assert ddim_timesteps(50) == list(range(1, 1000, 20))
    assert ddim_timesteps(1) == [1]
    assert len(ddim_timesteps(30)) == 31  # 1000 // 30 = 33: range(0, 1000, 33) has 31 entries, as published
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(0)
    with pytest.raises(ValueError, match="num_steps=3 selects timestep 1000"):  # range(0, 1000, 333) + 1
        ddim_timesteps(3)


def test_ddim_coefficients_by_hand():
    schedule = LDMDDIMSchedule.create(100, eta=1.0)
    abar = compvis_alphas_cumprod().astype(np.float32).astype(np.float64)
    assert schedule.timesteps[-1] == 991
    assert schedule.alphas[-1] == abar[991] and schedule.alphas_prev[-1] == abar[981]
    assert schedule.alphas[0] == abar[1] and schedule.alphas_prev[0] == abar[0]  # last step: abar[0]
    a_t, a_prev = abar[1], abar[0]
    assert schedule.sigmas[0] == pytest.approx(math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)), rel=1e-12)
    assert np.all(LDMDDIMSchedule.create(100, eta=0.0).sigmas == 0)
    x, eps, z = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), 2.0)
    a_t, a_prev, sigma = (float(v[-1]) for v in (schedule.alphas, schedule.alphas_prev, schedule.sigmas))
    x0 = (1 - math.sqrt(1 - a_t) * 0.5) / math.sqrt(a_t)
    want = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * 0.5 + sigma * 2.0
    assert schedule.step(x, 99, eps, z).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="eta"):
        LDMDDIMSchedule.create(10, eta=-1)


# -- the switch --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r, small_steps", [(0.0, 0), (0.1, 10), (0.4, 40), (0.399, 39), (0.5, 50), (1.0, 100)])
def test_strict_switch_on_the_selected_timestep(r, small_steps):
    used = [Plan((r, 1 - r)).model_at_timestep(t, 1000, strict=True) for t in reversed(ddim_timesteps(100))]
    assert used == [0] * small_steps + [1] * (100 - small_steps)


def test_strict_switch_differs_from_the_dit_rule_on_a_tie():
    # 1 - 0.399 == 601 / 1000 in floating point: the published LDM rule is strict, the DiT rule is not
    assert 601 / 1000 == 1 - 0.399
    assert Plan((0.399, 0.601)).model_at_timestep(601, 1000, strict=True) == 1
    assert Plan((0.399, 0.601)).model_at_timestep(601, 1000) == 0


def test_three_models():
    used = [Plan((0.2, 0.3, 0.5)).model_at_timestep(t, 1000, strict=True) for t in reversed(ddim_timesteps(10))]
    assert used == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]  # 901, 801 | 701, 601, 501 | 401 ... 1


# -- per-model conditioning ------------------------------------------------------------------------------------


def test_each_model_gets_its_own_context_at_its_own_steps():
    models = [Recorder(8, 0), Recorder(16, 1)]
    embedders = [ClassEmbedder(10, 8), ClassEmbedder(10, 16)]
    labels = torch.tensor([4, 1])
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(3)
    out = sample_ldm_official(models, embedders, labels, 0.3, num_steps=10, noise=noise, generator=gen)
    assert out.record.timesteps == [901 - 100 * k for k in range(10)]  # 1, 101, ..., 901
    assert out.record.model_per_step() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1] and out.record.steps_per_model() == [3, 7]
    assert [int(t[0]) for _, t, _ in models[0].calls] == [901, 801, 701]  # 0.701 > 1 - 0.3
    assert [int(t[0]) for _, t, _ in models[1].calls] == [601 - 100 * k for k in range(7)]
    for i, model in enumerate(models):
        context = embedders[i](labels)
        uncond = out.unconditional[i]
        assert uncond.shape == (2, 1, [8, 16][i]) and 0 <= uncond.min() and uncond.max() < 1
        for x, t, c in model.calls:
            assert x.shape == (4, 4, 4, 4) and torch.equal(x[:2], x[2:])  # [x; x]
            assert torch.equal(t, torch.full((4,), int(t[0])))
            torch.testing.assert_close(c, torch.cat([uncond, context]), atol=0, rtol=0)  # [uncond; cond]
    # random draws: noise given; then each model's unconditional context, in model order
    again = torch.Generator().manual_seed(3)
    torch.testing.assert_close(out.unconditional[0], torch.rand(2, 1, 8, generator=again), atol=0, rtol=0)
    torch.testing.assert_close(out.unconditional[1], torch.rand(2, 1, 16, generator=again), atol=0, rtol=0)


def test_zero_context_option_and_no_guidance():
    models = [Recorder(8, 0), Recorder(16, 1)]
    embedders = [ClassEmbedder(10, 8), ClassEmbedder(10, 16)]
    noise = torch.randn(1, 4, 4, 4)
    sample_ldm_official(models, embedders, [7], 0.5, num_steps=4, noise=noise, unconditional="zeros")
    for model in models:
        assert all(torch.equal(c[:1], torch.zeros_like(c[:1])) for _, _, c in model.calls)
    models = [Recorder(8, 0), Recorder(16, 1)]
    sample_ldm_official(models, embedders, [7], 0.5, num_steps=4, noise=noise, guidance_scale=1.0)
    assert all(x.shape[0] == 1 and c.shape == (1, 1, 8) for x, _, c in models[0].calls)


def test_random_stream_order_and_the_global_generator():
    models = [Recorder(8, 0), Recorder(16, 1)]
    embedders = [ClassEmbedder(10, 8), ClassEmbedder(10, 16)]
    labels = torch.tensor([2, 5])
    drawn = sample_ldm_official(models, embedders, labels, 0.4, num_steps=5,
                                generator=torch.Generator().manual_seed(9), latent_shape=(4, 4, 4))
    gen = torch.Generator().manual_seed(9)
    noise = torch.randn(2, 4, 4, 4, generator=gen)
    uncond = [torch.rand(2, 1, 8, generator=gen), torch.rand(2, 1, 16, generator=gen)]
    zs = [torch.randn(2, 4, 4, 4, generator=gen) for _ in range(5)]
    given = sample_ldm_official(models, embedders, labels, 0.4, num_steps=5, noise=noise, unconditional=uncond,
                                step_noise=zs)
    torch.testing.assert_close(drawn.latents, given.latents, atol=0, rtol=0)
    torch.manual_seed(4)  # generator=None: torch's global generator, as the published sampler
    first = sample_ldm_official(models, embedders, labels, 0.4, num_steps=5, latent_shape=(4, 4, 4)).latents
    torch.manual_seed(4)
    assert torch.equal(first, sample_ldm_official(models, embedders, labels, 0.4, num_steps=5,
                                                  latent_shape=(4, 4, 4)).latents)


def test_errors():
    models = [Recorder(8, 0), Recorder(16, 1)]
    embedders = [ClassEmbedder(10, 8), ClassEmbedder(10, 16)]
    noise = torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match="one embedder per model"):
        sample_ldm_official(models, embedders[:1], [1, 2], 0.4, noise=noise)
    with pytest.raises(ValueError, match=r"embedders\[1\] gives 8-wide contexts; models\[1\] expects 16"):
        sample_ldm_official(models, [embedders[0], embedders[0]], [1, 2], 0.4, noise=noise)
    with pytest.raises(ValueError, match="noise must be"):
        sample_ldm_official(models, embedders, [1, 2, 3], 0.4, noise=noise)
    with pytest.raises(ValueError, match="step_noise has 3"):
        sample_ldm_official(models, embedders, [1, 2], 0.4, noise=noise, num_steps=5, step_noise=[noise] * 3)
    with pytest.raises(ValueError, match=r"unconditional\[1\] has shape"):
        sample_ldm_official(models, embedders, [1, 2], 0.4, noise=noise, unconditional=[torch.zeros(2, 1, 8)] * 2)
    with pytest.raises(ValueError, match="unconditional must be"):
        sample_ldm_official(models, embedders, [1, 2], 0.4, noise=noise, unconditional="null")
    with pytest.raises(ValueError, match="2 models but 3 fractions"):
        sample_ldm_official(models, embedders, [1, 2], (0.2, 0.3, 0.1), noise=noise)
    with pytest.raises(ValueError, match="sum to 1"):
        sample_ldm_official(models, embedders, [1, 2], (0.2, 0.3), noise=noise)
    with pytest.raises(ValueError, match="fractions"):
        sample_ldm_official(models, embedders, [1, 2], 1.5, noise=noise)


# -- whole runs against the independent float64 reference -----------------------------------------------------


@pytest.mark.parametrize("r, eta, steps", [(0.0, 0.0, 20), (0.0, 1.0, 20), (0.4, 0.0, 50), (0.4, 1.0, 100),
                                           (1.0, 0.0, 20), (1.0, 1.0, 20)])
def test_matches_the_reference_sampler(pair, r, eta, steps):
    gen = torch.Generator().manual_seed(11)
    labels = torch.tensor([3, 8])
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    contexts = [e(labels) for e in pair.embedders]
    uncond = [torch.rand(c.shape, generator=gen) for c in contexts]
    zs = [torch.randn(2, 4, 8, 8, generator=gen) for _ in range(steps)]
    out = sample_ldm_official(pair.unets, pair.embedders, labels, r, num_steps=steps, eta=eta, noise=noise,
                              unconditional=uncond, step_noise=zs)
    references = [lambda x, t, c, s=s, sd=sd: unet_forward(sd, s, x, t, c) for s, sd in zip(SPECS, pair.sds)]
    want, used = reference_ldm_sample(references, contexts, uncond, noise, zs, r, steps, eta, 3.0)
    assert out.record.model_per_step() == used
    assert out.record.steps_per_model() == [round(r * steps), steps - round(r * steps)]
    err = (out.latents.double() - want).abs().max().item()
    assert err < 1e-4 * want.abs().max().item(), f"max error {err} (latent scale {want.abs().max().item()})"


def test_diffusers_ddim_with_the_wrapper_reproduces_the_published_sampler(pair):
    """ClassConditionedUNet + DDIMScheduler(ddim_scheduler_config()) + the same switch = the published run."""
    scheduler = make_ddim_scheduler()
    scheduler.set_timesteps(100)
    assert scheduler.timesteps.tolist() == list(range(991, 0, -10))
    diffusers_abar = scheduler.alphas_cumprod.double().numpy()  # computed in float32 by diffusers
    np.testing.assert_allclose(diffusers_abar, compvis_alphas_cumprod(), rtol=3e-6)
    assert float(scheduler.final_alpha_cumprod) == pytest.approx(compvis_alphas_cumprod()[0], rel=1e-7)
    assert ddim_scheduler_config()["beta_schedule"] == "scaled_linear"

    gen = torch.Generator().manual_seed(12)
    labels = torch.tensor([3, 8])
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    uncond = [torch.rand(2, 1, e.embedding.embedding_dim, generator=gen) for e in pair.embedders]
    wrapped = [ClassConditionedUNet(u, e) for u, e in zip(pair.unets, pair.embedders)]
    for w, u in zip(wrapped, uncond):
        w.set_unconditional(u)
    for eta in (0.0, 1.0):
        steps = 20
        zs = [torch.randn(2, 4, 8, 8, generator=gen) for _ in range(steps)]
        want = sample_ldm_official(pair.unets, pair.embedders, labels, 0.4, num_steps=steps, eta=eta, noise=noise,
                                   unconditional=uncond, step_noise=zs).latents
        scheduler.set_timesteps(steps)
        x = noise.clone()
        y = torch.cat([torch.full_like(labels, 10), labels])  # null class (= 10 classes) first, as published
        for k, t in enumerate(scheduler.timesteps):
            model = wrapped[Plan((0.4, 0.6)).model_at_timestep(int(t), 1000, strict=True)]
            with torch.no_grad():
                e_u, e_c = model(torch.cat([x, x]), t, class_labels=y).sample.chunk(2)
            x = scheduler.step(e_u + 3.0 * (e_c - e_u), t, x, eta=eta, variance_noise=zs[k]).prev_sample
        assert (x - want).abs().max().item() < 1e-4 * want.abs().max().item()


def test_wrapper_contexts_and_errors(pair):
    wrapper = ClassConditionedUNet(pair.unets[1], pair.embedders[1])
    assert dict(wrapper.config) == {**pair.unets[1].config, "num_class_embeds": 10} and wrapper.null_class == 10
    labels = torch.tensor([10, 4, 10])
    zeros = wrapper.contexts(labels)
    assert torch.equal(zeros[0], torch.zeros(1, 16)) and torch.equal(zeros[1], pair.embedders[1](labels[1:2])[0])
    rows = torch.rand(2, 1, 16)
    wrapper.set_unconditional(rows)
    got = wrapper.contexts(labels)
    assert torch.equal(got[0], rows[0]) and torch.equal(got[2], rows[1])
    with pytest.raises(ValueError, match="1 null labels but 2"):
        wrapper.contexts(torch.tensor([10, 3]))
    wrapper.set_unconditional("zeros")
    assert torch.equal(wrapper.contexts(torch.tensor([10]))[0], torch.zeros(1, 16))
    with pytest.raises(ValueError, match="class_labels"):
        wrapper(torch.zeros(1, 4, 8, 8), 1)


def test_vq_decoding_to_uint8(pair):
    vq = load_vq_first_stage(random_vq_state_dict(VQSpec(), seed=1))
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    models = [Recorder(8, 0), Recorder(16, 1)]
    out = sample_ldm_official(models, pair.embedders, [1, 2], 0.4, num_steps=4, noise=noise, vq=vq,
                              generator=torch.Generator().manual_seed(0))
    assert out.images.dtype == torch.uint8 and out.images.shape == (2, 3, 8, 8)
    with torch.no_grad():
        decoded = vq.decode(out.latents).sample
    want = (torch.clamp((decoded + 1) / 2, 0, 1) * 255).to(torch.uint8)  # truncation, as astype(np.uint8)
    assert torch.equal(out.images, want) and torch.equal(decode_ldm_latents(vq, out.latents), want)
