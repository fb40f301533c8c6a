# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Smoke tests of the timing harness on tiny models (seconds; the timings themselves are not checked)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import (  # one_thread: an autouse fixture
    DIT_SAMPLE_SIZE,
    LATENT_CHANNELS,
    SCHEDULERS,
    one_thread,  # noqa: F401
    tiny_dit,
    tiny_unet,
)

import tstitch
from tstitch.bench import (
    BenchCase,
    BenchSettings,
    format_report,
    plain_sample,
    run_bench,
    run_case,
)
from tstitch.bench.harness import interleaved
from tstitch.bench.runners import Planned
from tstitch.cli import main


def class_case(**options) -> BenchCase:
    settings = dict(num_steps=3, num_images=2, guidance_scale=1.5, fractions=(0.0, 0.5, 1.0), repetitions=2,
                    make_scheduler=SCHEDULERS["ddim"])
    settings.update(options)
    return BenchCase(name="tiny-dit", small=tiny_dit(0), large=tiny_dit(1, num_layers=2), **settings)


def text_case(**options) -> BenchCase:
    settings = dict(num_steps=3, num_images=1, guidance_scale=5.0, fractions=(0.0, 0.5, 1.0), repetitions=2)
    settings.update(options)
    return BenchCase(name="tiny-unet", small=tiny_unet(0), large=tiny_unet(1, layers_per_block=2),
                     make_scheduler=SCHEDULERS["ddim"], conditioning="text", **settings)


@pytest.mark.slow
def test_harness_writes_json_and_plot_with_every_figure(tmp_path):
    results = run_bench([class_case(), text_case()], tmp_path, BenchSettings(dispatch_calls=50))

    written = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert written["summary"] == json.loads(json.dumps(results["summary"])) and written["complete"]
    assert written["machine"]["torch"] == torch.__version__ and written["machine"]["label"]
    for case in results["cases"]:
        assert [row["fraction"] for row in case["rows"]] == [0.0, 0.5, 1.0]
        for config, run in case["runs"].items():
            assert len(run["seconds"]) == 2, config  # every configuration in every repetition
        for row in case["rows"]:
            for figure in ("overhead", "linearity", "speedup"):
                assert row[figure]["min"] <= row[figure]["median"] <= row[figure]["max"]
                assert row[figure]["fastest"] > 0
            # the stitched run computes exactly what the plain loop computes
            assert row["max_abs_diff_vs_plain"] == 0.0
        assert case["rows"][0]["ideal_speedup"] == 1.0
        assert case["rows"][1]["small_steps"] == 1 and case["rows"][1]["effective_fraction"] == pytest.approx(1 / 3)
        assert case["no_tax"]["ratio"]["median"] > 0
        memory = case["memory"]
        assert memory["small_weight_bytes"] == case["small"]["weight_bytes"] >= 4 * case["small"]["parameters"]
        extra = memory["stitched_minus_large_bytes"]
        assert extra == memory["small_weight_bytes"] + memory["beyond_small_weights_bytes"]
    assert results["cases"][0]["no_tax"]["stitched"] == "pipeline-stitched@0"
    assert results["cases"][1]["no_tax"]["stitched"] == "stitched@0"
    assert set(results["summary"]) == {"overhead_max", "linearity_min", "linearity_max", "no_tax_max"}
    assert results["dispatch"]["overhead_us_per_step"] < 1000

    report = format_report(results)
    assert "tiny-dit" in report and "tiny-unet" in report and "no tax" in report and "overhead max" in report


def test_the_stitched_runs_follow_the_plan_and_the_harness_says_so_when_not(monkeypatch):
    from tstitch.bench.runners import Runner

    monkeypatch.setattr(Runner, "plan", lambda self, fraction, steps: [0] * steps)  # a wrong plan
    with pytest.raises(RuntimeError, match="models per step"):
        run_bench([class_case(repetitions=1)], None, BenchSettings(memory=False, dispatch_calls=10))


def test_results_so_far_are_handed_over_after_each_repetition():
    partial = []
    result = run_case(class_case(repetitions=3), BenchSettings(memory=False), checkpoint=partial.append)
    assert [p["repetitions"] for p in partial] == [1, 2]  # the last one is the result itself
    assert result["repetitions"] == result["repetitions_planned"] == 3
    assert all(len(run["seconds"]) == 1 for run in partial[0]["runs"].values())


def test_interleaving_keeps_groups_together_and_varies_the_order():
    groups = [["a1", "a2"], ["b1", "b2"], ["c"]]
    runs = list(interleaved(groups, 3))
    assert [config for rep, config in runs if rep == 0] == ["a1", "a2", "b1", "b2", "c"]
    assert [config for rep, config in runs if rep == 1] == ["b2", "b1", "c", "a2", "a1"]
    assert [config for rep, config in runs if rep == 2] == ["c", "a1", "a2", "b1", "b2"]


def test_plain_loop_computes_what_tstitch_sample_computes():
    small, large = tiny_dit(0), tiny_dit(1, num_layers=2)
    shape = (3, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2, 3])
    plan = tstitch.Plan.from_small_fractions(0.4).assignment(5)
    kwargs = dict(noise=noise, class_labels=labels, num_inference_steps=5, guidance_scale=3.0)
    plain = plain_sample([small, large], plan, SCHEDULERS["ddim"](), **kwargs)
    stitched = tstitch.sample([small, large], 0.4, SCHEDULERS["ddim"](), **kwargs)
    assert stitched.record.model_per_step() == plan == [0, 0, 1, 1, 1]
    assert torch.equal(plain, stitched.latents)


def test_planned_stand_in_calls_the_models_of_the_plan_and_looks_like_the_large_one():
    small, large = tiny_dit(0), tiny_dit(1, num_layers=2)
    planned = Planned([small, large], [1, 0])
    x = torch.randn(1, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE)
    t, y = torch.tensor([10]), torch.tensor([1])
    assert torch.equal(planned(x, timestep=t, class_labels=y).sample, large(x, timestep=t, class_labels=y).sample)
    assert torch.equal(planned(x, timestep=t, class_labels=y).sample, small(x, timestep=t, class_labels=y).sample)
    assert planned.config is large.config and planned.dtype == large.dtype


def test_case_validation_names_the_problem():
    with pytest.raises(ValueError, match="first-order"):
        class_case(make_scheduler=SCHEDULERS["heun"]).validate()
    with pytest.raises(ValueError, match="null class 1000"):
        BenchCase(name="x", small=tiny_dit(0, num_embeds_ada_norm=10), large=tiny_dit(1, num_embeds_ada_norm=10),
                  make_scheduler=SCHEDULERS["ddim"], num_steps=2, num_images=1, guidance_scale=2.0).validate()
    with pytest.raises(ValueError, match="fractions"):
        class_case(fractions=(0.5, 1.5)).validate()


def test_cli_runs_a_named_case_and_prints_the_ratios(tmp_path, capsys):
    code = main(["bench", "--cases", "digits", "--steps", "2", "--reps", "1", "--images", "2", "--threads", "1",
                 "--no-memory", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "digits-s" in printed and "overhead" in printed and "targets" in printed
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["cases"][0]["num_steps"] == 2 and "memory" not in results["cases"][0]


def test_cli_refuses_bad_input_before_any_work(tmp_path, capsys):
    assert main(["bench", "--cases", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown case" in capsys.readouterr().err
    assert main(["bench", "--reps", "0", "--out", str(tmp_path)]) == 2


# -- the fast paths against fp32 eager ------------------------------------------------------------------------------


@pytest.mark.slow
def test_fast_path_comparison_times_every_variant_and_writes_its_files(tmp_path):
    from fastpaths_suite.compare import Variant, run_variants
    from fastpaths_suite.report import format_markdown, save_results

    from tstitch.models.fastpaths import FastPaths

    case = class_case(repetitions=2, fractions=(0.0, 0.4, 1.0), num_steps=5)
    variants = [Variant("fp32-eager", FastPaths()), Variant("bf16", FastPaths(dtype="bf16")),
                Variant("compile", FastPaths(compile=True, compile_backend="eager"))]
    saved = []
    result = run_variants(case, variants, checkpoint=lambda r: saved.append(r["repetitions"]))
    assert saved == [1, 2]  # after every repetition
    assert [row["fraction"] for row in result["rows"]] == [0.0, 0.4, 1.0]
    for row in result["rows"]:
        assert set(row["variants"]) == {"fp32-eager", "bf16", "compile"}
        for data in row["variants"].values():
            assert len(data["seconds"]) == 2 and data["tflops"] > 0 and data["fraction_of_bf16_peak"] is None
        assert row["variants"]["fp32-eager"]["speedup_vs_baseline"]["median"] == 1.0
    # FLOP: the plan's steps of each model, at the doubled batch (guidance 1.5)
    row = result["rows"][1]
    assert row["small_steps"] == 2
    assert row["flop"] == 2 * result["small"]["flop_per_step"] + 3 * result["large"]["flop_per_step"]
    assert result["quality"]["bf16"]["max_abs"] > 0
    compiled = result["quality"]["compile"]  # dynamo's graphs: fp32, other kernels at most in the last bits
    assert compiled["mean_abs"] <= 1e-4 * compiled["reference_mean_abs"]
    assert result["compile"]["compile"]["graphs_compiled"] >= 2 and result["graphs_compiled_during_timing"] == 0
    results = {"machine": {"label": "test machine"}, "cases": [result]}
    text = format_markdown(results)
    assert "| r | fp32-eager s/run | bf16 s/run | compile s/run | bf16 vs fp32-eager |" in text
    assert "latents at r=0.4, `bf16` vs `fp32-eager`" in text
    names = sorted(p.name for p in save_results(results, tmp_path))
    assert names == ["fastpaths.json", "fastpaths.md", "fastpaths.png"]
    assert json.loads((tmp_path / "fastpaths.json").read_text())["cases"][0]["repetitions"] == 2


def test_fast_path_comparison_keeps_to_its_budget_and_refuses_bad_variants():
    from fastpaths_suite.compare import Variant, run_variants

    from tstitch.models.fastpaths import FastPaths

    variants = [Variant("fp32-eager", FastPaths()), Variant("bf16", FastPaths(dtype="bf16"))]
    result = run_variants(class_case(repetitions=5, num_steps=2), variants, budget_seconds=0.0, memory=False)
    assert result["repetitions"] == 1 and result["repetitions_planned"] == 5
    with pytest.raises(ValueError, match="at least two variants with distinct names"):
        run_variants(class_case(), [variants[0], variants[0]])
    with pytest.raises(ValueError, match="quality_fraction must be in"):
        run_variants(class_case(), variants, quality_fraction=1.5)


def test_flop_count_of_dit_xl_is_the_papers():
    from fastpaths_suite.compare import bf16_peak_tflops, forward_flops

    from tstitch.bench.cases import dit_model

    # DiT-XL/2 at 256x256: 118.6 G multiply-adds per forward (the DiT paper's "Gflops"), 2 FLOP each
    flops = forward_flops(dit_model("DiT-XL/2", "meta"), 1)
    assert abs(flops / 2e9 - 118.6) < 0.2
    assert bf16_peak_tflops("cpu") is None


def test_digits_quality_guard_scores_each_variant_and_the_seed_spread():
    from fastpaths_suite.compare import Variant
    from fastpaths_suite.quality import digits_quality
    from fastpaths_suite.report import format_quality

    from tstitch.models.fastpaths import FastPaths

    variants = [Variant("fp32-eager", FastPaths()), Variant("bf16", FastPaths(dtype="bf16"))]
    quality = digits_quality(variants, num_samples=40, num_steps=4, batch_size=20)
    assert [(r["variant"], r["seed"]) for r in quality["rows"]] == [("fp32-eager", 0), ("fp32-eager", 1), ("bf16", 0)]
    assert quality["rows"][0]["fid_vs_baseline"] == 1.0
    assert "latents_vs_baseline" not in quality["rows"][1] and quality["rows"][2]["latents_vs_baseline"]["max_abs"] > 0
    assert "| bf16 (bfloat16 (float32 latents)) | 0 |" in format_quality(quality)
    with pytest.raises(ValueError, match=r"num_samples must be in \[2, 1797\]"):
        digits_quality(variants, num_samples=1)


def test_the_plot_puts_a_cases_plan_and_adaptive_plan_at_their_share_of_small_steps():
    from tstitch.bench.report import _plot_plans
    from tstitch.utils import pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    case = {"num_steps": 10,
            "plan": {"plan": "S2 L3 S1 L4", "small_steps": 3, "seconds_per_image": 0.004},
            "adaptive": {"direction": "large-first", "mean_switch_step": 6.5, "k": 6, "together": "together@6",
                         "seconds_per_image": 0.006, "together_seconds_per_image": 0.005}}
    _plot_plans(ax, case)
    points = [collection.get_offsets().tolist() for collection in ax.collections]
    # Large-first: the small model runs after the switch, 10 - 6.5 steps on average, 10 - 6 for together@6.
    assert points == [[[0.3, 4.0]], [[0.35, 6.0]], [[0.4, 5.0]]]
    assert [c.get_label() for c in ax.collections] == [
        "plan S2 L3 S1 L4", "adaptive (large-first, mean of each sample's steps)",
        "together@6: every sample at step 6"]
    plt.close(fig)
