# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Caching composed with stitching: per model, reset per run, told the real step; specs, refusals, records."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import HookRegistry
from tiny_models import (  # one_thread: an autouse fixture
    SCHEDULERS,
    dit_pipeline,
    one_thread,  # noqa: F401
    tiny_dit,
    tiny_unet,
)

import tstitch
from tstitch.caching import (
    CACHE_METHODS,
    REFUSED,
    DeepCache,
    FirstBlockCache,
    TaylorSeerCache,
    cached,
    disable_cache,
    enable_cache,
    get_cache_record,
    parse_cache_option,
    parse_cache_spec,
    spec_of,
)
from tstitch.experiments.batches import sample_batches
from tstitch.plan import Plan

STEPS = 10
LABELS = [1, 7, 42]


def hooks_left(model: torch.nn.Module) -> list[str]:
    return [name for _, module in model.named_modules()
            for name in getattr(getattr(module, "_diffusers_hook", None), "hooks", {})]


# -- the bare denoisers: a DiT through tstitch.sample, a U-Net through a loop of its own -------------------------

def dit_pair():
    return [tiny_dit(1, num_layers=3), tiny_dit(2, num_layers=3)]


def unet_pair():
    return [tiny_unet(1), tiny_unet(2)]


def run_dit(denoiser, scheduler: str = "ddim") -> torch.Tensor:
    noise = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    return tstitch.sample(denoiser, None, SCHEDULERS[scheduler](), noise=noise, class_labels=LABELS,
                          num_inference_steps=STEPS, guidance_scale=2.0).latents


def run_unet(denoiser, scheduler: str = "ddim") -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 3, 8, generator=generator)
    sched = SCHEDULERS[scheduler]()
    denoiser.bind(sched)
    try:
        sched.set_timesteps(STEPS)
        latents = latents * sched.init_noise_sigma
        with torch.no_grad():
            for t in sched.timesteps:
                out = denoiser(sched.scale_model_input(latents, t), t, encoder_hidden_states=text).sample
                latents = sched.step(out, t, latents).prev_sample
    finally:
        denoiser.unbind()
    return latents


# a spec per method that acts on the tiny random models (their residuals change a lot between steps)
ROWS = {"first-block": (dit_pair, run_dit, "first-block:0.8"), "taylorseer": (dit_pair, run_dit, "taylorseer:2:1"),
        "deepcache": (unet_pair, run_unet, "deepcache:2")}


def test_every_method_has_a_row_in_the_tests():
    assert set(ROWS) == set(CACHE_METHODS)


@pytest.mark.parametrize("name", sorted(CACHE_METHODS))
def test_each_method_per_model_reset_per_run_and_off_is_bit_identical(name):
    row = CACHE_METHODS[name]
    build, run, spec = ROWS[name]
    models = build()
    denoiser = tstitch.StitchedDenoiser(models, 0.3)
    plain = run(denoiser)
    assert parse_cache_spec(row.example).spec() == spec_of(parse_cache_spec(row.example))
    for target in ({1: spec}, {0: spec}, {0: spec, 1: spec}):
        with cached(denoiser, target):
            first = run(denoiser)
            record = get_cache_record(denoiser)
            assert torch.equal(run(denoiser), first)  # the state is reset at every run
        assert not torch.equal(first, plain)  # the cache acted
        assert [hooks_left(m) for m in models] == [[], []]
        assert torch.equal(run(denoiser), plain)  # off: bit-identical to stitching alone
        # the record: one entry per call, the uncached model always computes, the cached one reuses some steps
        assert [(c.step, c.model_index) for c in record.calls] == [(s, 0 if s < 3 else 1) for s in range(STEPS)]
        for index, (first_step, last_step) in enumerate([(0, 3), (3, STEPS)]):
            mine = [c for c in record.calls if c.model_index == index]
            if index not in target:
                assert all(c.computed is None for c in mine)
                assert record.steps(index, computed=True) == list(range(first_step, last_step))
            else:
                assert mine[0].computed is True  # a model's first step computes: no state from the other model
                assert record.steps(index, computed=True)[0] == first_step
        cached_models = sorted(target)
        assert any(record.steps(i, computed=False) for i in cached_models)


def test_deepcache_schedule_counts_the_models_own_steps_and_restarts_after_a_gap():
    denoiser = tstitch.StitchedDenoiser(unet_pair(), Plan.from_sequence([0, 0, 1, 1, 1, 0, 0, 0, 1, 1]))
    with cached(denoiser, {0: "deepcache:2", 1: "deepcache:2"}):
        run_unet(denoiser)
        record = get_cache_record(denoiser)
    # each segment starts in full, then every 2nd of the model's steps
    assert [c.computed for c in record.calls] == [True, False, True, False, True, True, False, True, True, False]


def test_deepcache_interval_one_equals_no_cache_and_heun_steps_decide_once():
    denoiser = tstitch.StitchedDenoiser(unet_pair(), 0.2)
    plain = run_unet(denoiser, "heun")
    with cached(denoiser, {1: "deepcache:1"}):
        assert torch.equal(run_unet(denoiser, "heun"), plain)
    with cached(denoiser, {1: "deepcache:3"}):
        run_unet(denoiser, "heun")
        record = get_cache_record(denoiser)
    large = [(c.step, c.computed) for c in record.calls if c.model_index == 1]
    assert large[:2] == [(2, True), (2, True)] and large[2:4] == [(3, False), (3, False)]
    assert record.steps(1, computed=True) == [2, 5, 8]


def test_taylorseer_is_told_the_real_position():
    denoiser = tstitch.StitchedDenoiser(dit_pair(), 0.5)
    with cached(denoiser, {1: "taylorseer:2:2:1"}) as stitched:
        seen = []
        hook = next(m._diffusers_hook.get_hook("tstitch_taylorseer") for m in stitched.large.modules()
                    if hasattr(m, "_diffusers_hook") and m._diffusers_hook.get_hook("tstitch_taylorseer"))
        original = hook._measure_should_compute
        hook._measure_should_compute = lambda: (lambda r: (seen.append((r[1].current_step, r[0])), r)[1])(original())
        run_dit(denoiser)
    # the large model runs steps 5..9: 2 warm-up evaluations, then one in 2 (diffusers' rule), at the real steps
    assert seen == [(5, True), (6, True), (7, False), (8, True), (9, False)]


def test_a_dit_pipeline_with_first_block_cache_on_the_large_model():
    small, large = tiny_dit(1, num_layers=3), tiny_dit(2, num_layers=3)
    pipe = tstitch.stitch(dit_pipeline(large, SCHEDULERS["ddim"]()), small, 0.4)

    def run(steps=STEPS):
        generator = torch.Generator().manual_seed(0)
        return torch.as_tensor(pipe(LABELS, num_inference_steps=steps, guidance_scale=4.0, generator=generator,
                                    output_type="np").images)

    plain = run()
    enable_cache(pipe, "first-block:0.5")
    first = run()
    assert torch.equal(run(), first) and not torch.equal(first, plain)
    assert run(6) is not None and len(get_cache_record(pipe).calls) == 6  # a run of another length: fresh state
    assert torch.equal(run(), first)
    assert get_cache_record(pipe).summary()[0].startswith("DiTTransformer2DModel[0]")
    disable_cache(pipe)
    assert torch.equal(run(), plain) and hooks_left(large) == []
    enable_cache(pipe, {0: "first-block:0.5", 1: "taylorseer:2"})
    tstitch.unstitch(pipe)  # takes the caches off with the stitch
    assert hooks_left(large) == [] and hooks_left(small) == []


def test_sample_batches_passes_the_cache_through():
    models = dit_pair()
    noise = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 2, 3, 4])
    kwargs = dict(num_steps=STEPS, guidance_scale=1.0, batch_size=2)
    plain, _, _ = sample_batches(models, [0.3], SCHEDULERS["ddim"], noise, labels, **kwargs)
    none, _, _ = sample_batches(models, [0.3], SCHEDULERS["ddim"], noise, labels, cache={}, **kwargs)
    fbc, _, _ = sample_batches(models, [0.3], SCHEDULERS["ddim"], noise, labels, cache={1: "first-block:0.5"}, **kwargs)
    assert torch.equal(none, plain) and not torch.equal(fbc, plain)
    assert [hooks_left(m) for m in models] == [[], []]


# -- U-Nets inside a family's wrapper (a U-Net + its own class embedder): the digits U-Nets, the LDMs -------------

@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory):
    from write_ldm_checkpoints import write_ldm_checkpoints

    folder = tmp_path_factory.mktemp("ldm")
    write_ldm_checkpoints(folder, tiny=True)  # the published layouts at tiny widths, random weights
    return folder


def wrapped_pair(kind: str, ldm_dir):
    from tstitch.models.loading import load_models, load_preset

    if kind == "digits":
        return load_models(["digits-unet-s", "digits-unet"], local_files_only=True)
    return load_preset("ldm-s-ldm", checkpoint_dir=ldm_dir)


@pytest.mark.parametrize("kind", ["digits", "ldm"])
def test_deepcache_finds_the_unet_inside_a_familys_wrapper(kind, ldm_dir):
    from tstitch.caching.base import inner_denoiser
    from tstitch.models.families import FAMILIES

    loaded = wrapped_pair(kind, ldm_dir)
    row = FAMILIES[loaded.family]
    assert loaded.family == kind and type(loaded.large).__name__ != "UNet2DConditionModel"
    for model in loaded.models:  # the family row and the caches name the same module: the U-Net inside
        assert row.inner_denoiser(model) is inner_denoiser(model) is model.unet

    def run(cache):
        denoiser = tstitch.StitchedDenoiser(loaded.models, 0.3)
        noise = torch.randn(2, *loaded.latent_shape, generator=torch.Generator().manual_seed(0))
        scheduler = SCHEDULERS["ddim"]()
        with cached(denoiser, {1: cache} if cache else {}):
            hooked = hooks_left(loaded.large.unet)
            latents = tstitch.sample(denoiser, None, scheduler, noise=noise, class_labels=[3, 7],
                                     num_inference_steps=STEPS, guidance_scale=1.0).latents
            record = get_cache_record(denoiser) if cache else None
        return latents, record, hooked

    first, record, hooked = run("deepcache:2")
    again, _, _ = run("deepcache:2")
    plain, _, _ = run(None)
    assert hooked and set(hooked) == {"tstitch_deepcache"}
    # the large model runs steps 3..9: its first step and every 2nd of its steps after it in full
    assert record.steps(1, computed=True) == [3, 5, 7, 9] and record.steps(1, computed=False) == [4, 6, 8]
    assert torch.equal(first, again)  # two runs: identical
    assert not torch.equal(first, plain)  # the reuse acted
    assert [hooks_left(m) for m in loaded.models] == [[], []]


def test_cli_sample_deepcache_on_the_digits_unet_pair(tmp_path, capsys):
    from tstitch import cli

    images = []
    for name in ("a", "b"):
        out = tmp_path / name
        code = cli.main(["sample", "--model", "digits-unet-s", "--model", "digits-unet", "--fraction", "0.3",
                         "--cache", "deepcache:2", "--steps", "6", "--num-images", "2", "--out", str(out),
                         "--no-progress", "--no-warmup"])
        printed = capsys.readouterr().out
        assert code == 0, printed
        assert "cache:     digits-unet deepcache:2" in printed
        images.append([(out / f"sample-00{i}.png").read_bytes() for i in range(2)])
    assert images[0] == images[1]


def test_cli_sample_deepcache_on_the_ldm_preset(ldm_dir, tmp_path, capsys):
    from tstitch import cli

    code = cli.main(["sample", "--preset", "ldm-s-ldm", "--checkpoint-dir", str(ldm_dir), "--mode", "diffusers",
                     "--fraction", "0.4", "--steps", "6", "--num-images", "1", "--cache", "deepcache:2",
                     "--out", str(tmp_path / "out"), "--no-progress", "--no-warmup"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "cache:     LDM deepcache:2" in printed and (tmp_path / "out" / "sample-000.png").is_file()


# -- specs, options and refusals -----------------------------------------------------------------------------

def test_specs_parse_into_configs():
    assert parse_cache_spec("first-block:0.05") == FirstBlockCache(0.05)
    assert parse_cache_spec(" TaylorSeer:4 ") == TaylorSeerCache(4, 3, 1)
    assert parse_cache_spec("taylorseer:4:2:2") == TaylorSeerCache(4, 2, 2)
    assert parse_cache_spec("deepcache:3") == DeepCache(3)
    assert parse_cache_spec("none") is None
    for config in (FirstBlockCache(0.05), TaylorSeerCache(4, 2, 2), DeepCache(3)):
        assert parse_cache_spec(spec_of(config)) == config


@pytest.mark.parametrize(("spec", "message"), [
    ("first-block", "'first-block' is not one of: first-block:THRESHOLD"),
    ("first-block:abc", "cache spec 'first-block:abc': the threshold must be a number, got 'abc'"),
    ("first-block:-1", "cache spec 'first-block:-1': first-block threshold must be a finite number > 0, got -1.0"),
    ("taylorseer:0", "cache spec 'taylorseer:0': taylorseer interval must be a whole number >= 1, got 0"),
    ("taylorseer:2:0", "taylorseer warmup must be a whole number >= 1, got 0"),
    ("deepcache:1.5", "cache spec 'deepcache:1.5': the interval must be a whole number, got '1.5'"),
    ("teacache:0.1", "cache spec 'teacache:0.1' is not one of"),
    ("", "cache spec must be a non-empty string"),
    ("magcache", "cache method 'magcache' is refused with stitching: MagCache calibrates one magnitude ratio per step"),
    ("fastercache:1", "'fastercache' is refused with stitching: FasterCache assumes an [unconditional, conditional]"),
])
def test_bad_specs_are_refused_with_the_value_named(spec, message):
    with pytest.raises(ValueError) as error:
        parse_cache_spec(spec)
    assert message in str(error.value)


def test_refused_methods_are_all_explained():
    assert set(REFUSED) == {"magcache", "fastercache", "pab"}
    assert not set(REFUSED) & set(CACHE_METHODS)


def test_cli_option_by_name_index_and_default():
    names = ["digits-s", "digits-b", "digits-xl"]
    assert parse_cache_option(["first-block:0.1"], names) == {2: FirstBlockCache(0.1)}
    assert parse_cache_option(["digits-s=taylorseer:2", "1=deepcache:2", "-1=none"], names) == {
        0: TaylorSeerCache(2), 1: DeepCache(2)}
    assert parse_cache_option(["none"], names) == {} and parse_cache_option(None, names) == {}
    for values, message in ((["digits-m=deepcache:2"], "no model 'digits-m' among digits-s, digits-b, digits-xl"),
                            (["5=deepcache:2"], "model index 5 is out of range for 3 models"),
                            (["deepcache:2", "2=deepcache:3"], "model digits-xl was given a cache twice")):
        with pytest.raises(ValueError, match=message):
            parse_cache_option(values, names)


def test_a_method_the_model_does_not_fit_is_refused_before_any_hook():
    dits = [tiny_dit(1), tiny_dit(2, num_layers=3)]
    denoiser = tstitch.StitchedDenoiser(dits, 0.3)
    with pytest.raises(ValueError, match=r"cache 'deepcache:2' for model DiTTransformer2DModel\[1\] "
                                         r"\(DiTTransformer2DModel\) needs a U-Net"):
        enable_cache(denoiser, "deepcache:2")
    with pytest.raises(ValueError, match=r"'first-block:0.1' for model DiTTransformer2DModel\[0\].*two or more blocks"):
        enable_cache(denoiser, {1: "taylorseer:2", 0: "first-block:0.1"})
    assert [hooks_left(m) for m in dits] == [[], []] and denoiser.before_call == []
    with pytest.raises(ValueError, match="cache: no model 'large' among"):
        enable_cache(denoiser, {"large": "first-block:0.1"})
    assert not any(isinstance(getattr(m, "_diffusers_hook", None), HookRegistry) and m._diffusers_hook.hooks
                   for model in dits for m in model.modules())


# -- the CLI ---------------------------------------------------------------------------------------------------

def test_cli_sample_with_caches_per_model(tmp_path, capsys):
    from tstitch import cli

    out = tmp_path / "out"
    code = cli.main(["sample", "--preset", "digits", "--fraction", "0.4", "--cache", "first-block:0.05", "--cache",
                     "digits-s=taylorseer:3", "--num-images", "2", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "cache:     digits-s taylorseer:3:3:1, digits-xl first-block:0.05" in printed
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["cache"] == {"digits-s": "taylorseer:3:3:1", "digits-xl": "first-block:0.05"}


@pytest.mark.parametrize(("command", "argv", "message"), [
    ("sample", ("--cache", "bogus:1"), "argument --cache: 'bogus:1' is not one of: first-block:THRESHOLD"),
    ("sample", ("--cache", "magcache"), "cache method 'magcache' is refused with stitching"),
    ("sample", ("--cache", "digits-m=deepcache:2"), "--cache 'digits-m=deepcache:2': no model 'digits-m' among "
                                                    "digits-s, digits-xl"),
    ("sample", ("--cache", "deepcache:2"), "cache 'deepcache:2' for model digits-xl .* needs a U-Net"),
    ("sample", ("--cache", "first-block:0.1", "--mode", "official"), "--mode official\\) runs without caches"),
    ("bench", ("--cache", "small=first-block:x"), "argument --cache: 'first-block:x': the threshold must be a number"),
    ("bench", ("--cache", "medium=first-block:0.1"), "no model 'medium' among small, large"),
    ("evaluate", ("--models", "digits-s", "digits-xl", "--cache", "deepcache:0"),
     "argument --cache: 'deepcache:0': deepcache interval must be a whole number >= 1, got 0"),
])
def test_cli_refuses_bad_caches(tmp_path, capsys, command, argv, message):
    import re

    from tstitch import cli

    preset = ("--preset", "digits", "--num-images", "1") if command == "sample" else ()
    code = cli.main([command, *preset, *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
