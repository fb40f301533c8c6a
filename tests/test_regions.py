# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Region-level stitching (tstitch.regions): the hybrid step against the two models, its record, its cache and
its place in a stitched pipeline and in tstitch.sample."""

from __future__ import annotations

import pytest
import torch
from tiny_models import SCHEDULERS, dit_pipeline, one_thread, tiny_dit  # noqa: F401 (one_thread: autouse)

import tstitch
from tstitch.compat import check_compatible
from tstitch.plan import Plan
from tstitch.regions import HybridDenoiser, large_on_tokens

SIZE, PATCH, CHANNELS = 8, 2, 4
N = (SIZE // PATCH) ** 2  # 16 tokens
NAMES = ["S", "H", "XL"]
TOL = dict(rtol=1e-5, atol=1e-5)  # float32; the hybrid's arithmetic on a token is the large model's own


def pair():
    small = tiny_dit(1, sample_size=SIZE, num_layers=1, attention_head_dim=8)
    large = tiny_dit(2, sample_size=SIZE, num_layers=2, attention_head_dim=8)
    return small, large


def inputs(batch: int = 3, seed: int = 0, t: float = 500.0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CHANNELS, SIZE, SIZE, generator=generator)
    return x, torch.full((batch,), t), torch.arange(batch) * 7


def no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def per_patch(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, N, C * PATCH * PATCH)``, written apart from tstitch's patchify."""
    return torch.nn.functional.unfold(x, PATCH, stride=PATCH).transpose(1, 2)


def expected_tokens(small_out: torch.Tensor, large_out: torch.Tensor, k: int) -> list[list[int]]:
    """Top ``k`` patches by the L2 distance of the noise channels; ties to the lower index."""
    scores = per_patch(small_out[:, :CHANNELS] - large_out[:, :CHANNELS]).square().sum(-1)
    return [sorted(sorted(range(N), key=lambda i, row=row: (-row[i].item(), i))[:k]) for row in scores]


@torch.no_grad()
def test_mask_one_is_the_large_model():
    small, large = pair()
    x, t, y = inputs()
    with HybridDenoiser(small, large, mask_fraction=1.0) as hybrid:
        out = hybrid(x, t, y).sample
        assert hybrid.record.calls[0].mode == "full" and hybrid.mask_fraction == 1.0
    torch.testing.assert_close(out, large(x, t, y).sample, **TOL)
    assert no_hooks(large)


@torch.no_grad()
def test_mask_zero_is_the_small_model_exactly():
    small, large = pair()
    x, t, y = inputs()
    with HybridDenoiser(small, large, mask_fraction=0.0) as hybrid:
        assert torch.equal(hybrid(x, t, y, return_dict=False)[0], small(x, t, y).sample)
        assert hybrid.record.calls[0].mode == "small" and hybrid.record.mask_fraction_used == [0.0]


@torch.no_grad()
def test_selected_tokens_are_the_large_models_with_its_own_cache():
    small, large = pair()
    x, t, y = inputs()
    with HybridDenoiser(small, large, mask_fraction=0.3) as hybrid:
        full = large(x, t, y).sample  # fills the cache (same input and timestep)
        out = hybrid(x, t, y).sample
        call = hybrid.record.calls[0]
    k = 5  # ceil(0.3 * 16)
    assert call.mode == "region" and call.mask_fraction_used == k / N and call.num_tokens == N
    small_out = small(x, t, y).sample
    assert call.tokens == expected_tokens(small_out, full, k)
    got, want_large, want_small = per_patch(out), per_patch(full), per_patch(small_out)
    for row, tokens in enumerate(call.tokens):
        rest = [i for i in range(N) if i not in tokens]
        torch.testing.assert_close(got[row, tokens], want_large[row, tokens], **TOL)
        assert torch.equal(got[row, rest], want_small[row, rest])  # the small model's values, untouched


@torch.no_grad()
def test_record_fractions_and_tokens_per_call():
    small, large = pair()
    x, _, y = inputs(batch=2)
    with HybridDenoiser(small, large, mask_fraction=0.5) as hybrid:
        large(x, torch.full((2,), 900.0), y)
        for t in (800.0, 700.0):
            hybrid(x, torch.full((2,), t), y)
        calls = hybrid.record.calls
        assert [c.mode for c in calls] == ["region", "region"]
        assert hybrid.record.mask_fraction_used == [0.5, 0.5]
        assert [c.timestep for c in calls] == [[800.0, 800.0], [700.0, 700.0]]
        for call in calls:
            assert len(call.tokens) == 2  # one mask per row
            assert all(len(row) == 8 and row == sorted(set(row)) and 0 <= row[0] and row[-1] < N for row in call.tokens)
        assert hybrid.record.as_dict()["calls"][0]["mask_fraction_used"] == 0.5
        hybrid.record.reset()
        assert hybrid.record.calls == []


@torch.no_grad()
def test_fallback_without_a_valid_cache(caplog):
    small, large = pair()
    x, t, y = inputs()
    with HybridDenoiser(small, large, mask_fraction=0.25) as hybrid:
        with caplog.at_level("INFO", logger="tstitch.regions"):
            out = hybrid(x, t, y).sample  # nothing cached yet: the large model on every token
        assert ("hybrid step at timestep 500: no full large-model step cached for this batch; the large model ran "
                "on every token") in caplog.text  # one number for the batch's shared timestep, not a list of 3
        call = hybrid.record.calls[-1]
        assert call.mode == "fallback" and call.mask_fraction_used == 1.0 and call.tokens[0] == list(range(N))
        torch.testing.assert_close(out, large(x, t, y).sample, **TOL)
        cache = hybrid.cache
        large_on_tokens(large, x, t, y, torch.tensor([[0, 3]] * 3), cache)  # a subset call outside: not captured
        assert hybrid.cache is cache
        hybrid(x, t - 100, y)  # the fallback filled the cache
        assert hybrid.record.calls[-1].mode == "region"
        hybrid(x, t + 100, y)  # a higher timestep: a new run, the cache is stale
        assert hybrid.record.calls[-1].mode == "fallback"
        x2, t2, y2 = inputs(batch=2)
        hybrid(x2, t2 - 200, y2)  # another batch shape
        assert hybrid.record.calls[-1].mode == "fallback"
        hybrid.reset()
        hybrid(x2, t2 - 300, y2)
        assert [c.mode for c in hybrid.record.calls] == ["fallback"]


def test_refuses_bad_arguments():
    small, large = pair()
    with pytest.raises(ValueError, match="mask_fraction"):
        HybridDenoiser(small, large, mask_fraction=1.5)
    with pytest.raises(ValueError, match="rule 'nearest'"):
        HybridDenoiser(small, large, rule="nearest")
    with pytest.raises(ValueError, match="DiTTransformer2DModel"):
        HybridDenoiser(small, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="sample size"):
        HybridDenoiser(tiny_dit(1), large)
    assert no_hooks(large)


def run(pipe, steps: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.as_tensor(pipe([1, 7], num_inference_steps=steps, guidance_scale=4.0, generator=generator,
                                output_type="np").images)


def test_in_a_stitched_pipeline_and_unstitch_removes_the_hooks():
    small, large = pair()
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    reference = run(pipe)
    hybrid = HybridDenoiser(small, large, mask_fraction=0.5)
    check_compatible(large, hybrid)
    tstitch.stitch(pipe, [small, hybrid], Plan.parse("XL2 > H2 > S1", names=NAMES))
    hybrid.attach(pipe)
    for _ in range(2):  # the hybrid's record follows the pipeline's runs
        run(pipe)
        assert tstitch.get_record(pipe).model_per_step() == [2, 2, 1, 1, 0]
        calls = hybrid.record.calls
        assert [c.mode for c in calls] == ["region", "region"] and [c.stitch_call for c in calls] == [2, 3]
        assert all(len(c.tokens) == 4 and all(len(row) == N // 2 for row in c.tokens) for c in calls)  # CFG: 2 x 2
    tstitch.unstitch(pipe)
    assert no_hooks(large) and "forward" not in vars(large)
    assert torch.equal(run(pipe), reference)


def test_mask_one_stitched_is_the_large_model_and_mask_zero_the_small():
    small, large = pair()
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    reference = run(pipe)
    with HybridDenoiser(small, large, mask_fraction=1.0) as hybrid:
        tstitch.stitch(pipe, [small, hybrid], Plan.parse("XL1 > H4", names=NAMES))
        torch.testing.assert_close(run(pipe), reference, rtol=0, atol=1e-4)  # images in [0, 1]
        tstitch.unstitch(pipe)
    tstitch.stitch(pipe, small, 1.0)
    small_only = run(pipe)
    with HybridDenoiser(small, large, mask_fraction=0.0) as hybrid:
        tstitch.stitch(pipe, [small, hybrid], Plan.parse("S1 > H4", names=NAMES))
        assert torch.equal(run(pipe), small_only)
    tstitch.unstitch(pipe)
    assert no_hooks(large)


def test_in_tstitch_sample():
    small, large = pair()
    hybrid = HybridDenoiser(small, large, mask_fraction=0.3)
    denoiser = tstitch.StitchedDenoiser([small, hybrid, large], Plan.parse("XL1 > H3 > S2", names=NAMES))
    hybrid.attach(denoiser)
    noise = torch.randn(2, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    out = tstitch.sample(denoiser, None, SCHEDULERS["ddim"](), noise=noise, class_labels=[3, 4],
                         num_inference_steps=6, guidance_scale=2.0)
    assert out.record.model_per_step() == [2, 1, 1, 1, 0, 0]
    assert [c.stitch_call for c in hybrid.record.calls] == [1, 2, 3]
    assert hybrid.record.mask_fraction_used == [5 / N] * 3
    hybrid.remove()
    assert no_hooks(large) and not denoiser.before_call and not denoiser.extensions


def test_attached_run_starts_without_another_runs_cache():
    # a full call of the large model outside the run (here: the large model alone) fills the cache; an attached
    # stitch's next run starts without it, so its first hybrid step falls back to the large model on every token
    # (which fills it anew)
    small, large = pair()
    hybrid = HybridDenoiser(small, large, mask_fraction=0.3)
    denoiser = tstitch.StitchedDenoiser([small, hybrid, large], Plan.parse("H2 > XL1 > H1", names=NAMES))
    hybrid.attach(denoiser)
    x, t, y = inputs(batch=2)
    with torch.no_grad():
        large(x, timestep=t, class_labels=y)
    assert hybrid.cache is not None
    noise = torch.randn(2, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    tstitch.sample(denoiser, None, SCHEDULERS["ddim"](), noise=noise, class_labels=[3, 4], num_inference_steps=4)
    assert [c.mode for c in hybrid.record.calls] == ["fallback", "region", "region"]
    hybrid.detach(denoiser)
    assert not denoiser.before_call and not denoiser.extensions
    hybrid.remove()
    assert no_hooks(large)
