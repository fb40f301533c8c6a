# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The published DiT / T-Stitch sampler: respacing, respaced betas, stitch rule, 3-channel guidance, and
DDIM / DDPM against an independent small reimplementation (written here from the description in
``shared/reference/official-dit-sampler.md``) with toy models. No network, CPU only, tiny tensors.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tstitch.plan import Plan
from tstitch.sampling.official import (
    RespacedDiffusion,
    guide_three_channels,
    linear_betas,
    respaced_timesteps,
    sample_official,
)

T = 1000


# -- toy models ------------------------------------------------------------------------------------------


class ToyDiT(nn.Module):
    """Deterministic stand-in for a DiT: 4 latent channels in, 8 out (eps + learned-variance values in
    [-1, 1]), depending on the input, the timestep and the label; records every call."""

    def __init__(self, seed: int, out_channels: int = 8, num_classes: int = 1000):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.mix = nn.Parameter(torch.randn(out_channels, 4, generator=gen) / 2, requires_grad=False)
        self.phase = nn.Parameter(torch.rand(out_channels, generator=gen) * 6, requires_grad=False)
        self.config = {"num_embeds_ada_norm": num_classes}
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.eval()

    def forward(self, x, timestep, class_labels=None):
        self.calls.append((x.clone(), timestep.clone(), class_labels.clone()))
        h = torch.einsum("oc,bchw->bohw", self.mix, x)
        t = timestep.float()[:, None, None, None]
        h = h + 0.5 * torch.sin(t / 150.0 + self.phase[None, :, None, None])
        h = h + 0.05 * (class_labels.float() % 7)[:, None, None, None]
        return SimpleNamespace(sample=torch.tanh(h))


def noise_and_labels(n: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 4, 4, generator=gen), torch.tensor([3, 999][:n])


# -- an independent reimplementation ------------------------------------------------------------------------


def reference_schedule(num_steps: int):
    """Kept timesteps (closed formula, half-to-even) and the respaced process, torch float64."""
    kept = [round(i * (T - 1) / (num_steps - 1)) for i in range(num_steps)]
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[kept]
    b = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    ab = torch.cumprod(1 - b, 0)
    abp = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    post_var = b * (1 - abp) / (1 - ab)
    return kept, b, ab, abp, post_var


def reference_sample(models, small_fraction, noise, labels, num_steps, sampler, scale, generator=None):
    """Two-model stitched sampling written from the description, each half of the batch stepped on its own."""
    kept, b, ab, abp, post_var = reference_schedule(num_steps)
    min_log = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    fixed_large = torch.log(torch.cat([post_var[1:2], b[1:]]))
    n = noise.shape[0]
    cfg = scale > 1
    halves = [noise.clone(), noise.clone()] if cfg else [noise.clone()]
    y = torch.cat([labels, torch.full_like(labels, 1000)]) if cfg else labels
    used = []
    for k in reversed(range(num_steps)):
        t = kept[k]
        model = models[0] if t / T >= 1 - small_fraction else models[1]
        used.append(0 if model is models[0] else 1)
        inp = torch.cat([halves[0], halves[0]]) if cfg else halves[0]
        out = model(inp, timestep=torch.full((inp.shape[0],), t), class_labels=y).sample
        if cfg:
            cond, unc = out[:n], out[n:]
            mixed = unc[:, :3] + scale * (cond[:, :3] - unc[:, :3])
            outs = [torch.cat([mixed, cond[:, 3:]], 1), torch.cat([mixed, unc[:, 3:]], 1)]
        else:
            outs = [out]
        z = torch.randn((len(halves) * n, 4, 4, 4), generator=generator)
        zs = z.chunk(len(halves))
        c = {name: float(v[k]) for name, v in dict(b=b, ab=ab, abp=abp, ml=min_log, fl=fixed_large).items()}
        for i, (x, o) in enumerate(zip(halves, outs)):
            eps = o[:, :4]
            x0 = (x - math.sqrt(1 - c["ab"]) * eps) / math.sqrt(c["ab"])
            if sampler == "ddim":
                halves[i] = math.sqrt(c["abp"]) * x0 + math.sqrt(1 - c["abp"]) * eps
            else:
                mean = (math.sqrt(c["abp"]) * c["b"] / (1 - c["ab"])) * x0 + (
                    math.sqrt(1 - c["b"]) * (1 - c["abp"]) / (1 - c["ab"])
                ) * x
                if o.shape[1] == 8:
                    w = (o[:, 4:] + 1) / 2
                    log_var = w * math.log(c["b"]) + (1 - w) * c["ml"]
                else:
                    log_var = torch.full_like(x, c["fl"])
                halves[i] = mean + (1.0 if k > 0 else 0.0) * torch.exp(0.5 * log_var) * zs[i]
    return halves[0], used


# -- schedule ---------------------------------------------------------------------------------------------


def test_linear_betas():
    betas = linear_betas()
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    scaled = linear_betas(500)
    assert scaled[0] == pytest.approx(2e-4) and scaled[-1] == pytest.approx(0.04)


def test_respaced_timesteps():
    assert respaced_timesteps(10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    hundred = respaced_timesteps(100)
    assert hundred[:8] == [0, 10, 20, 30, 40, 50, 61, 71] and hundred[-1] == 999
    for n in (2, 10, 20, 50, 100, 250):
        assert respaced_timesteps(n) == [round(i * 999 / (n - 1)) for i in range(n)]
    # half-to-even: 4 * 999 / 24 = 166.5 -> 166, not 167
    assert respaced_timesteps(25)[4] == 166 and respaced_timesteps(25)[20] == 832
    # the running float sum (the reference's way) lands just below 499.5 where the formula hits it exactly
    assert respaced_timesteps(21)[10] == 499 and round(10 * 999 / 20) == 500
    assert respaced_timesteps(1) == [0]
    assert respaced_timesteps(1000) == list(range(1000))
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            respaced_timesteps(bad)


@pytest.mark.parametrize("num_steps", [10, 50])
def test_respaced_betas_and_coefficients(num_steps):
    diffusion = RespacedDiffusion.create(num_steps)
    kept, b, ab, abp, post_var = reference_schedule(num_steps)
    assert diffusion.timesteps.tolist() == kept
    np.testing.assert_allclose(diffusion.betas, b.numpy(), rtol=1e-10)
    assert diffusion.betas[0] == pytest.approx(1e-4)
    np.testing.assert_allclose(diffusion.alphas_cumprod, ab.numpy(), rtol=1e-10)
    np.testing.assert_allclose(diffusion.posterior_variance, post_var.numpy(), rtol=1e-9, atol=1e-300)
    clipped = diffusion.posterior_log_variance_clipped
    assert clipped[0] == clipped[1] == pytest.approx(math.log(post_var[1].item()))
    # The respaced process reaches the same noise level at each kept timestep as the original one.
    np.testing.assert_allclose(diffusion.alphas_cumprod, np.cumprod(1 - linear_betas())[kept], rtol=1e-10)


def test_full_respacing_is_the_original_schedule():
    np.testing.assert_allclose(RespacedDiffusion.create(1000).betas, linear_betas(), rtol=1e-9)


def test_coefficients_are_float32_per_sample():
    diffusion = RespacedDiffusion.create(10)
    x = torch.zeros(3, 4, 2, 2)
    coef = diffusion.coefficient("alphas_cumprod", 9, x)
    assert coef.dtype == torch.float32 and coef.shape == (3, 1, 1, 1)
    assert coef[0].item() == np.float32(diffusion.alphas_cumprod[9])


# -- guidance ---------------------------------------------------------------------------------------------


def test_three_channel_guidance_leaves_the_other_channels_of_each_half():
    out = torch.randn(4, 8, 3, 3)
    guided = guide_three_channels(out, 1.5)
    cond, unc = out[:2], out[2:]
    mixed = unc[:, :3] + 1.5 * (cond[:, :3] - unc[:, :3])
    torch.testing.assert_close(guided[:2, :3], mixed)
    torch.testing.assert_close(guided[2:, :3], mixed)
    torch.testing.assert_close(guided[:2, 3:], cond[:, 3:], rtol=0, atol=0)  # 4th channel + variance
    torch.testing.assert_close(guided[2:, 3:], unc[:, 3:], rtol=0, atol=0)
    all_channels = guide_three_channels(out, 1.5, guided_channels=4)
    torch.testing.assert_close(all_channels[2:, 4:], unc[:, 4:], rtol=0, atol=0)
    with pytest.raises(ValueError):
        guide_three_channels(out[:3], 1.5)


def test_model_is_fed_the_first_half_twice_and_the_null_label():
    model = ToyDiT(0)
    noise, labels = noise_and_labels()
    sample_official(
        model,
        None,
        noise=noise,
        class_labels=labels,
        num_steps=5,
        sampler="ddpm",
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(model.calls) == 5
    for x, t, y in model.calls:
        torch.testing.assert_close(x[:2], x[2:], rtol=0, atol=0)
        assert y.tolist() == [3, 999, 1000, 1000]
        assert t.dtype == torch.long and len(set(t.tolist())) == 1
    assert [c[1][0].item() for c in model.calls] == [999, 749, 500, 250, 0]  # original timesteps


# -- stitching rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction, num_steps", [(0.4, 10), (0.5, 10), (0.3, 100), (0.0, 10), (1.0, 10)])
def test_two_model_stitch_rule(fraction, num_steps):
    small, large = ToyDiT(0), ToyDiT(1)
    noise, labels = noise_and_labels()
    out = sample_official([small, large], fraction, noise=noise, class_labels=labels, num_steps=num_steps)
    timesteps = respaced_timesteps(num_steps)[::-1]
    assert out.record.timesteps == timesteps
    expected = [0 if t / T >= 1 - fraction else 1 for t in timesteps]
    assert out.record.model_per_step() == expected
    assert out.record.model_per_step() == [Plan((fraction, 1 - fraction)).model_at_timestep(t, T) for t in timesteps]
    assert len(small.calls) == expected.count(0) and len(large.calls) == expected.count(1)
    assert [c[1][0].item() for c in small.calls + large.calls] == timesteps
    if (fraction, num_steps) == (0.4, 10):
        assert out.record.model_per_step() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]


def test_three_models_and_fraction_forms():
    models = [ToyDiT(0), ToyDiT(1), ToyDiT(2)]
    noise, labels = noise_and_labels()
    kwargs = dict(noise=noise, class_labels=labels, num_steps=10)
    out = sample_official(models, [0.3, 0.3], **kwargs)
    timesteps = respaced_timesteps(10)[::-1]
    assert out.record.model_per_step() == [Plan((0.3, 0.3, 0.4)).model_at_timestep(t, T) for t in timesteps]
    assert out.record.steps_per_model() == [3, 3, 4]
    for fractions in ([0.3, 0.3, 0.4], Plan((0.3, 0.3, 0.4))):
        again = sample_official(models, fractions, **kwargs)
        assert again.record.model_per_step() == out.record.model_per_step()
        torch.testing.assert_close(again.latents, out.latents, rtol=0, atol=0)
    with pytest.raises(ValueError):
        sample_official(models, [0.3, 0.3, 0.2, 0.2], **kwargs)


# -- DDIM / DDPM against the independent reimplementation --------------------------------------------------


@pytest.mark.parametrize("scale", [1.5, 4.0, 1.0])
def test_ddim_matches_reference(scale):
    models = [ToyDiT(0), ToyDiT(1)]
    noise, labels = noise_and_labels()
    out = sample_official(
        models, 0.4, noise=noise, class_labels=labels, num_steps=10, sampler="ddim", guidance_scale=scale
    )
    want, used = reference_sample(models, 0.4, noise, labels, 10, "ddim", scale)
    assert out.record.model_per_step() == used
    assert out.latents.shape == noise.shape
    torch.testing.assert_close(out.latents, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale, out_channels", [(1.5, 8), (4.0, 8), (1.0, 8), (1.5, 4)])
def test_ddpm_matches_reference(scale, out_channels):
    models = [ToyDiT(0, out_channels), ToyDiT(1, out_channels)]
    noise, labels = noise_and_labels()
    out = sample_official(
        models,
        0.4,
        noise=noise,
        class_labels=labels,
        num_steps=10,
        sampler="ddpm",
        guidance_scale=scale,
        generator=torch.Generator().manual_seed(5),
    )
    want, _ = reference_sample(
        models, 0.4, noise, labels, 10, "ddpm", scale, torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(out.latents, want, rtol=1e-5, atol=1e-5)


def test_ddpm_with_the_global_generator_is_the_same_stream():
    models = [ToyDiT(0), ToyDiT(1)]
    noise, labels = noise_and_labels()
    kwargs = dict(noise=noise, class_labels=labels, num_steps=8, sampler="ddpm")
    torch.manual_seed(11)
    global_rng = sample_official(models, 0.5, **kwargs).latents
    seeded = sample_official(models, 0.5, generator=torch.Generator().manual_seed(11), **kwargs).latents
    torch.testing.assert_close(global_rng, seeded, rtol=0, atol=0)
    other = sample_official(models, 0.5, generator=torch.Generator().manual_seed(12), **kwargs).latents
    assert not torch.equal(other, seeded)


def test_ddim_ignores_variance_channels_but_draws_like_the_reference():
    noise, labels = noise_and_labels()
    base, changed = ToyDiT(0), ToyDiT(0)
    with torch.no_grad():
        changed.phase[4:] += 1.0  # only the variance channels differ
    gen = torch.Generator().manual_seed(3)
    a = sample_official(base, None, noise=noise, class_labels=labels, num_steps=6, generator=gen).latents
    b = sample_official(changed, None, noise=noise, class_labels=labels, num_steps=6).latents
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # one standard-normal draw of the doubled batch's shape per step, as the reference makes
    twin = torch.Generator().manual_seed(3)
    for _ in range(6):
        torch.randn((4, 4, 4, 4), generator=twin)
    assert torch.equal(gen.get_state(), twin.get_state())
    ddpm = sample_official(
        changed, None, noise=noise, class_labels=labels, num_steps=6, sampler="ddpm"
    ).latents
    assert not torch.allclose(ddpm, b)


def test_without_guidance_the_batch_is_not_doubled():
    model = ToyDiT(0)
    noise, labels = noise_and_labels()
    gen = torch.Generator().manual_seed(0)
    out = sample_official(
        model,
        None,
        noise=noise,
        class_labels=labels,
        num_steps=4,
        sampler="ddpm",
        guidance_scale=1.0,
        generator=gen,
    )
    assert out.latents.shape == noise.shape
    assert all(c[0].shape[0] == 2 and c[2].tolist() == [3, 999] for c in model.calls)


def test_training_mode_warns():
    model = ToyDiT(0).train()
    noise, labels = noise_and_labels()
    with pytest.warns(UserWarning, match="training mode"):
        sample_official(model, None, noise=noise, class_labels=labels, num_steps=2)


def test_errors():
    model = ToyDiT(0)
    noise, labels = noise_and_labels()
    with pytest.raises(ValueError, match="sampler"):
        sample_official(model, None, noise=noise, class_labels=labels, num_steps=4, sampler="euler")
    with pytest.raises(ValueError, match="2 steps"):
        sample_official(model, None, noise=noise, class_labels=labels, num_steps=1, sampler="ddpm")
    with pytest.raises(ValueError, match="labels"):
        sample_official(model, None, noise=noise, class_labels=[1, 2, 3], num_steps=4)
    with pytest.raises(ValueError, match="class_labels"):
        sample_official(model, None, noise=noise, class_labels=None, num_steps=4)
    with pytest.raises(ValueError, match="noise"):
        sample_official(model, None, noise=noise[0], class_labels=labels, num_steps=4)
    one = sample_official(model, None, noise=noise, class_labels=labels, num_steps=1)  # DDIM: timestep 0 only
    assert one.record.timesteps == [0]


def test_with_a_diffusers_dit_loaded_from_official_weights(tmp_path):
    from test_checkpoints import random_official_state_dict

    from tstitch.models.checkpoints import load_dit

    paths = []
    for seed, hidden in ((0, 64), (1, 128)):
        sd = random_official_state_dict(hidden, 1, latent=4, seed=seed)
        paths.append(tmp_path / f"m{seed}.pt")
        torch.save(sd, paths[-1])
    small, large = (load_dit(p) for p in paths)
    noise, labels = noise_and_labels()
    out = sample_official(
        [small, large],
        0.5,
        noise=noise,
        class_labels=labels,
        num_steps=4,
        sampler="ddpm",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.latents.shape == noise.shape and torch.isfinite(out.latents).all()
    assert out.record.model_per_step() == [0, 0, 1, 1]
