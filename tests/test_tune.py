# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""tstitch tune: plans, the prefix-sharing sampler, statistics, the cost model, the search, the API and CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from tiny_models import CallLog, one_thread, tiny_dit  # noqa: F401

from tstitch import Plan, load_plan
from tstitch.cli import main
from tstitch.metrics import FeatureFID
from tstitch.sampling import sample
from tstitch.stitcher import StitchedDenoiser
from tstitch.tune import (
    CostModel,
    PairedSignal,
    Workload,
    greedy_search,
    interval_from_sets,
    measure_step_costs,
    paired_fid_ratio,
    spearman,
    tune,
)
from tstitch.tune.engine import PrefixSampler
from tstitch.tune.plans import as_plan, label, runs, short_names, single_fraction
from tstitch.tune.search import default_order, moves, pareto, segment_plans, segment_search
from tstitch.tune.stats import frechet_distance, gaussian_statistics, jackknife_fid_ratio
from tstitch.tune.verify import meets, verify_plans

NUM_CLASSES = 10


def tiny_models() -> list[torch.nn.Module]:
    """Three tiny class-conditional DiTs (epsilon only), growing in width."""
    return [tiny_dit(seed, num_embeds_ada_norm=NUM_CLASSES, out_channels=4, attention_head_dim=dim)
            for seed, dim in ((1, 2), (2, 4), (3, 8))]


def ddim() -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=False)


def start(count: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn(count, 4, 4, 4, generator=torch.Generator().manual_seed(seed))
    return noise, torch.arange(count) % NUM_CLASSES


def tiny_workload(with_fid: bool = True) -> Workload:
    real = torch.randn(40, 64, generator=torch.Generator().manual_seed(5))
    return Workload(models=tiny_models(), names=["tiny-s", "tiny-b", "tiny-xl"], scheduler=ddim(),
                    sample_shape=(4, 4, 4), num_classes=NUM_CLASSES,
                    real_statistics=gaussian_statistics(real) if with_fid else None)


# -- plans ---------------------------------------------------------------------------------------------------


def test_tune_plans_are_core_plans_and_labels_read_back():
    names = short_names(["digits-s", "digits-b", "digits-xl"])
    assert names == ["S", "B", "XL"]
    assert short_names(["a/model", "b/model"]) == ["M0", "M1"]
    sequence = (0,) * 8 + (1,) * 2 + (2,) * 8 + (1,) * 2
    plan = as_plan(sequence, names)
    assert isinstance(plan, Plan) and plan.sequence == sequence and plan.num_models == 3
    assert plan.steps_per_model(20) == [8, 4, 8]
    with pytest.raises(ValueError, match="this plan gives the model of 20 steps, but the run has num_steps=5"):
        plan.assignment(5)
    assert label(sequence, names) == str(plan) == "S8 > B2 > XL8 > B2"
    assert Plan.parse(str(plan), names) == plan
    assert Plan.parse("s3>xl2", names).sequence == (0, 0, 0, 2, 2)
    assert Plan.parse("0x2 > 1x1").sequence == (0, 0, 1)
    with pytest.raises(ValueError, match="cannot read segment 'Q2'"):
        Plan.parse("S3 > Q2", names)
    with pytest.raises(ValueError, match="sequence\\[1\\] is 2, not a model index"):
        as_plan([0, 2], ["S", "XL"])
    assert runs([0, 0, 1, 2, 2, 1]) == [(0, 0, 2), (1, 2, 3), (2, 3, 5), (1, 5, 6)]
    assert single_fraction(2, 5, 0, 2, 3) == (0, 0, 2, 2, 2)


# -- the prefix-sharing sampler ------------------------------------------------------------------------------


def test_prefix_sampler_matches_the_whole_loop_and_reuses_prefixes():
    models = tiny_models()
    noise, labels = start()
    sampler = PrefixSampler(models, ddim(), noise, labels, batch_size=6)  # one batch, as the whole loop
    plan = (0, 0, 1, 2, 2, 1)
    latents = sampler.run(plan)
    whole = sample(StitchedDenoiser(models, Plan.from_sequence(plan, 3)), None, ddim(), noise=noise,
                   class_labels=labels, num_inference_steps=6).latents
    assert torch.equal(latents, whole)
    assert sampler.model_steps == [2 * 6, 2 * 6, 2 * 6]
    # a plan sharing the first five steps runs only its last step, with the large model
    with CallLog(s=models[0], b=models[1], xl=models[2]) as log:
        other = sampler.run((0, 0, 1, 2, 2, 2))
    assert log.names == ["xl"]
    assert sampler.model_steps == [12, 12, 18]
    with CallLog(s=models[0], b=models[1], xl=models[2]) as log:
        assert torch.equal(sampler.run((0, 0, 1, 2, 2, 2)), other)
        sampler.run((0, 1, 1))  # another step count shares nothing
    assert log.names == ["s", "b", "b"]
    whole = sample(StitchedDenoiser(models, Plan.from_sequence((0, 0, 1, 2, 2, 2), 3)), None, ddim(),
                   noise=noise, class_labels=labels, num_inference_steps=6).latents
    assert torch.equal(other, whole)


def test_prefix_sampler_refuses_stateful_schedulers():
    noise, labels = start()
    with pytest.raises(ValueError, match="must be a DDIMScheduler.*EulerDiscreteScheduler"):
        PrefixSampler(tiny_models(), EulerDiscreteScheduler(), noise, labels)


# -- statistics ----------------------------------------------------------------------------------------------


def test_frechet_distance_matches_torchmetrics_fid():
    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(50, 8, generator=generator), torch.randn(30, 8, generator=generator) * 1.3 + 0.2
    expected = FeatureFID(features=real).score_features(fake)
    assert frechet_distance(*gaussian_statistics(fake), *gaussian_statistics(real)) == pytest.approx(expected, rel=1e-6)


def test_paired_bootstrap_ratio():
    generator = torch.Generator().manual_seed(0)
    real = gaussian_statistics(torch.randn(200, 4, generator=generator))
    reference = torch.randn(120, 4, generator=generator) + 0.3
    same = paired_fid_ratio(reference, reference, real, resamples=50)
    assert (same.ratio, same.low, same.high) == (1.0, 1.0, 1.0)
    worse = reference + 0.5 * torch.randn(120, 4, generator=generator)
    estimate = paired_fid_ratio(worse, reference, real, resamples=200, seed=3)
    assert estimate.low < estimate.ratio < estimate.high
    assert estimate.ratio > 1 and estimate.num_samples == 120 and estimate.resamples == 200
    assert paired_fid_ratio(worse, reference, real, resamples=200, seed=3) == estimate
    with pytest.raises(ValueError, match="paired features must have one shape"):
        paired_fid_ratio(worse[:10], reference, real)
    same = jackknife_fid_ratio(reference, reference, real)
    assert (same.ratio, same.low, same.high) == (1.0, 1.0, 1.0)
    jack = jackknife_fid_ratio(worse, reference, real, groups=6)
    assert jack.ratio == estimate.ratio and jack.low < jack.ratio < jack.high and jack.method == "jackknife, 6 groups"
    with pytest.raises(ValueError, match=r"groups must be in \[2, 60\], got 1"):
        jackknife_fid_ratio(worse, reference, real, groups=1)
    assert meets({"fid_ratio": {"high": 1.019}}, 1.02) and not meets({"fid_ratio": {"high": 1.021}}, 1.02)


def test_interval_from_seed_sets_and_spearman():
    estimate = interval_from_sets([1.065, 1.088, 1.076])
    # mean 1.07633, sd 0.0115036, t(0.975, 2) = 4.302653
    assert estimate.ratio == pytest.approx(1.0763333, abs=1e-6)
    assert estimate.high - estimate.ratio == pytest.approx(4.302653 * 0.0115036 / math.sqrt(3), rel=1e-4)
    with pytest.raises(ValueError, match="at least 2 sets"):
        interval_from_sets([1.0])
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)


# -- cost model ----------------------------------------------------------------------------------------------


def test_cost_model_arithmetic_and_interleaved_timing():
    costs = CostModel((0.1, 0.2, 1.0), batch_size=8, guidance_scale=1.0, dtype="float32", device="cpu",
                      repetitions=3)
    assert costs.relative((0,) * 8 + (2,) * 12, 20) == pytest.approx((0.8 + 12) / 20)
    assert costs.step_ratios() == [0.1, 0.2, 1.0]
    models = tiny_models()
    with CallLog(s=models[0], b=models[1], xl=models[2]) as log:
        measured = measure_step_costs(models, (4, 4, 4), batch_size=3, num_classes=NUM_CLASSES, repetitions=2,
                                      guidance_scale=2.0)
    assert log.names == ["s", "b", "xl"] * 3  # a warm-up round, then two interleaved repetitions
    assert {entry["batch"] for entry in log.entries} == {6}  # guidance doubles the batch
    assert len(measured.seconds_per_step) == 3 and min(measured.seconds_per_step) > 0
    with pytest.raises(ValueError, match="repetitions must be >= 1, got 0"):
        measure_step_costs(models, (4, 4, 4), batch_size=3, repetitions=0)


# -- the search ----------------------------------------------------------------------------------------------


def test_moves_hand_boundary_steps_to_cheaper_models():
    found = moves((0, 2, 2, 2), (0.1, 0.3, 1.0), max_segments=3)
    assert found == [(0, 0, 2, 2), (0, 1, 2, 2), (0, 2, 2, 0), (0, 2, 2, 1)]
    assert moves((0, 2, 2, 2), (0.1, 0.3, 1.0), max_segments=2) == [(0, 0, 2, 2)]
    rows = [{"predicted_cost": c, "distance": d} for c, d in ((1, 0), (0.5, 0.2), (0.6, 0.3), (0.4, 0.5))]
    assert pareto(rows) == [3, 1, 0]


def test_greedy_search_descends_from_the_large_model():
    models = tiny_models()
    noise, labels = start(4)
    signal = PairedSignal(PrefixSampler(models, ddim(), noise, labels), reference_steps=5)
    costs = CostModel((0.1, 0.3, 1.0), batch_size=4, guidance_scale=1.0, dtype="float32", device="cpu",
                      repetitions=1)
    result = greedy_search(signal, costs, ["S", "B", "XL"], num_steps=5, reference_steps=5, max_segments=3,
                           min_cost=0.5, progress=False)
    path_costs = [costs.relative(p, 5) for p in result.path]
    assert result.path[0] == (2,) * 5 and path_costs[-1] <= 0.5 < path_costs[-2]
    assert all(b < a for a, b in zip(path_costs, path_costs[1:], strict=False))
    assert all(len(Plan.from_sequence(p).segments()) <= 3 for p in result.path)
    assert result.baseline == [single_fraction(k, 5, 0, 2, 3) for k in range(6)]
    assert result.row((2,) * 5)["distance"] == 0.0
    assert len({tuple(r["sequence"]) for r in result.scored}) == len(result.scored)
    front = result.frontier()
    assert all(a["predicted_cost"] < b["predicted_cost"] and a["distance"] > b["distance"]
               for a, b in zip(front, front[1:], strict=False))
    with pytest.raises(ValueError, match="rank_by='small_fid_ratio' needs a signal with real statistics"):
        greedy_search(signal, costs, ["S", "B", "XL"], num_steps=5, rank_by="small_fid_ratio")
    best = result.best_within(0.7)
    assert best["predicted_cost"] <= 0.7
    assert best["distance"] == min(r["distance"] for r in result.scored if r["predicted_cost"] <= 0.7)


def test_segment_plans_enumerate_one_order_within_the_cost_window():
    assert default_order(3, 20) == [(0, 20), (1, 4), (2, -1), (1, 2), (0, 1)]
    assert default_order(2, 5) == [(0, 5), (1, -1), (0, 1)]
    costs = CostModel((0.1, 0.3, 1.0), batch_size=4, guidance_scale=1.0, dtype="float32", device="cpu",
                      repetitions=1)

    def cost(sequence):
        return costs.relative(sequence, 4)

    everything = segment_plans([(0, 4), (1, 1), (2, -1), (1, 1)], 4, cost)
    # S a > B b > XL c > B d with b, d in {0, 1}, c >= 1: 4 + 3 + 3 + 2 plans with no repeats
    assert len(everything) == len(set(everything)) == 12 and everything == sorted(everything)
    assert (2, 2, 2, 2) in everything and (0, 0, 0, 2) in everything and (0, 1, 2, 1) in everything
    assert (2, 0, 2, 2) not in everything and (1, 0, 2, 2) not in everything  # the order: S, B, XL, B
    window = segment_plans([(0, 4), (1, 1), (2, -1), (1, 1)], 4, cost, min_cost=0.5, max_cost=0.8)
    assert window == [p for p in everything if 0.5 <= cost(p) <= 0.8] and window
    with pytest.raises(ValueError, match="exactly one run of -1"):
        segment_plans([(0, 2), (1, 2)], 4, cost)


def test_segment_search_scores_the_order_and_the_single_fractions():
    models = tiny_models()
    noise, labels = start(6)
    real = gaussian_statistics(torch.randn(40, 64, generator=torch.Generator().manual_seed(5)))
    signal = PairedSignal(PrefixSampler(models, ddim(), noise, labels), real_statistics=real, reference_steps=5)
    costs = CostModel((0.1, 0.3, 1.0), batch_size=4, guidance_scale=1.0, dtype="float32", device="cpu",
                      repetitions=1)
    result = segment_search(signal, costs, ["S", "B", "XL"], num_steps=5, reference_steps=5, min_cost=0.4,
                            max_cost=0.9, progress=False)
    expected = segment_plans(default_order(3, 5), 5, lambda p: costs.relative(p, 5), min_cost=0.4, max_cost=0.9)
    singles = [single_fraction(k, 5, 0, 2, 3) for k in range(6)]
    order = [tuple(r["sequence"]) for r in result.scored]
    assert order == list(dict.fromkeys([(2,) * 5, *expected, *singles]))
    assert result.baseline == singles and result.rank_by == "small_fid_ratio"
    assert result.row((2,) * 5)["small_fid_ratio"] == 1.0
    front = result.frontier()
    assert all(a["predicted_cost"] < b["predicted_cost"] and a["small_fid_ratio"] > b["small_fid_ratio"]
               for a, b in zip(front, front[1:], strict=False))
    # every beginning is sampled once: the large model's run (2 steps after S2 > B1) serves S2 > B1 > XL2 too
    assert sum(signal.sampler.model_steps) < 6 * sum(len(p) for p in order) / 2
    with pytest.raises(ValueError, match="rank_by='small_fid_ratio' needs a signal with real statistics"):
        segment_search(PairedSignal(signal.sampler, reference_steps=5), costs, ["S", "B", "XL"], num_steps=5)
    with pytest.raises(ValueError, match="need 0 <= min_cost < max_cost, got 0.9 and 0.5"):
        segment_search(signal, costs, ["S", "B", "XL"], num_steps=5, min_cost=0.9, max_cost=0.5)


# -- verification, API, CLI ----------------------------------------------------------------------------------


def test_verify_plans_rows():
    work = tiny_workload()
    out = verify_plans(work, [(0, 0, 2, 2)], seed=7, num_samples=6, reference_steps=4, batch_size=4,
                       timing_repetitions=1, resamples=20, progress=False)
    reference, plan = out["rows"]
    assert reference["plan"] == "XL4" and plan["plan"] == "S2 > XL2"
    assert reference["measured_cost"] == 1.0 and reference["distance"] == 0.0
    assert reference["fid_ratio"]["ratio"] == 1.0 and plan["num_samples"] == 6
    assert plan["measured_cost"] > 0 and plan["distance"] > 0


def test_tune_writes_outputs_and_never_overwrites(tmp_path):
    work = tiny_workload()
    # the tiny models' step times are all about 1 ms, below a shared machine's noise: give the cost model
    costs = CostModel((0.1, 0.3, 1.0), batch_size=4, guidance_scale=1.0, dtype="float32", device="cpu",
                      repetitions=1)
    result = tune(tmp_path / "run", workload=work, num_steps=4, budget=0.95, search_samples=4, batch_size=4,
                  min_cost=0.5, verify_samples=4, verify_seed=9, timing_repetitions=1, costs=costs, progress=False)
    plan = load_plan(tmp_path / "run" / "plan.json", num_steps=4)  # the core's plan format
    frontier = json.loads((tmp_path / "run" / "frontier.json").read_text())
    assert (tmp_path / "run" / "frontier.png").stat().st_size > 0
    chosen = frontier["chosen"]
    assert plan == result["plan"] and plan.names == ("S", "B", "XL") and plan.sequence == tuple(chosen["sequence"])
    assert str(plan) == chosen["plan"] and Plan.parse(chosen["plan"], plan.names) == plan
    assert chosen["predicted_cost"] <= 0.95 and chosen == json.loads(json.dumps(result["chosen"]))
    assert [r["plan"] for r in chosen["verification"]["rows"]][0] == "XL4"
    assert len(frontier["single_fraction"]) == 5 and frontier["search"]["plans_scored"] == len(frontier["scored"])
    with pytest.raises(FileExistsError, match="already holds plan.json, frontier.json, frontier.png"):
        tune(tmp_path / "run", workload=work, num_steps=4, search_samples=4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budget": 0.5, "tolerance": 1.05}, "give budget or tolerance, not both"),
    ({"budget": 1.5}, r"budget must be in \[0.01, 1\], got 1.5"),
    ({"tolerance": 0.9}, r"tolerance must be in \[1, 100\], got 0.9"),
    ({"search_samples": 1}, "search_samples must be >= 2, got 1"),
    ({"verify_samples": 4, "verify_seed": 0}, "verify_seed must differ from search_seed"),
])
def test_tune_argument_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tune(tmp_path / "x", workload=None, **kwargs)
    assert not (tmp_path / "x").exists()


def test_tune_tolerance_needs_an_fid(tmp_path):
    with pytest.raises(ValueError, match="tolerance needs a workload with real statistics"):
        tune(tmp_path, workload=tiny_workload(with_fid=False), tolerance=1.05)


def test_cli_tune_digits_and_refusal(tmp_path, capsys):
    out = tmp_path / "tuned"
    code = main(["tune", "--out", str(out), "--models", "digits-s", "digits-xl", "--steps", "3",
                 "--search-samples", "6", "--batch-size", "6", "--min-cost", "0.6", "--budget", "0.8",
                 "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "chosen: " in printed and f"wrote {out}/plan.json, frontier.json, frontier.png" in printed
    plan = load_plan(out / "plan.json")
    assert plan.names == ("S", "XL") and plan.num_steps == 3
    chosen = json.loads((out / "frontier.json").read_text())["chosen"]
    assert chosen["models"] == ["digits-s", "digits-xl"] and chosen["plan"] == str(plan)
    assert main(["tune", "--out", str(out)]) == 2
    assert "already holds plan.json, frontier.json, frontier.png" in capsys.readouterr().err


def test_cli_tune_refuses_bad_numbers_by_flag_before_loading_a_model(tmp_path, capsys, monkeypatch):
    from tstitch.tune import workload

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(workload, "digits_workload", no_loading)
    monkeypatch.setattr(workload, "preset_workload", no_loading)
    cases = {
        ("--budget", "1.5"): "--budget must be in [0.01, 1], got 1.5",
        ("--min-cost", "0.9", "--max-cost", "0.3"): "need 0 <= --min-cost < --max-cost, got 0.9 and 0.3",
        ("--guidance", "nan"): "--guidance must be a finite number >= 0 (guidance is on above 1), got nan",
        ("--search", "greedy", "--max-segments", "0"): "--max-segments must be >= 1, got 0",
        ("--search", "greedy", "--min-cost", "1.2"): "--min-cost must be in (0, 1), got 1.2",
        ("--steps", "0"): "--steps must be >= 1, got 0",
        ("--search-samples", "1"): "--search-samples must be >= 2, got 1",
        ("--batch-size", "0"): "--batch-size must be >= 1, got 0",
        ("--verify-samples", "1"): "--verify-samples must be 0 or >= 2, got 1",
        ("--verify-samples", "4", "--seed", "3", "--verify-seed", "3"):
            "--verify-seed must differ from --seed (held-out), both are 3",
        ("--tolerance", "0.9"): "--tolerance must be in [1, 100], got 0.9",
    }
    for flags, message in cases.items():
        assert main(["tune", "--out", str(tmp_path / "tuned"), *flags]) == 2, flags
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"tstitch tune: error: {message}"
    assert not (tmp_path / "tuned").exists()
