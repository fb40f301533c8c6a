# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""tstitch tune's adaptive candidates: calibration, verification beside the fixed plan, and the choice."""

from __future__ import annotations

import json

import pytest
import torch
from test_tune import NUM_CLASSES, ddim, tiny_models
from tiny_models import one_thread  # noqa: F401

import tstitch.tune.api as tune_api
from tstitch import Plan, load_plan
from tstitch.adaptive import AdaptiveRule
from tstitch.tune import CostModel, Workload, tune
from tstitch.tune.adaptive_plans import adaptive_candidates, pick_adaptive, small_model_signal
from tstitch.tune.stats import gaussian_statistics
from tstitch.tune.verify import verify_plans

COSTS = CostModel((0.1, 1.0), batch_size=4, guidance_scale=1.0, dtype="float32", device="cpu", repetitions=1)


def pair_workload(models: int = 2) -> Workload:
    """The tiny family's smallest and largest DiTs (or all three), with an FID against random features."""
    real = torch.randn(40, 64, generator=torch.Generator().manual_seed(5))
    chosen = tiny_models() if models == 3 else [tiny_models()[0], tiny_models()[2]]
    names = ["tiny-s", "tiny-b", "tiny-xl"] if models == 3 else ["tiny-s", "tiny-xl"]
    return Workload(models=chosen, names=names, scheduler=ddim(), sample_shape=(4, 4, 4), num_classes=NUM_CLASSES,
                    real_statistics=gaussian_statistics(real))


def test_candidates_bracket_the_fixed_switch_with_signal_quantiles():
    work = pair_workload()
    noise, labels = work.start(0, 6)
    signal = small_model_signal(work, noise, labels, num_steps=10, batch_size=4)
    assert signal.shape == (6, 10) and torch.isnan(signal[:, 0]).all() and (signal[:, 1:] > 0).all()
    rules = adaptive_candidates((0,) * 4 + (1,) * 6, signal)
    # bounds 2..6 around the fixed switch at 4: step 1's signal decides whether a sample switches at step 2
    expected = sorted({round(float(torch.quantile(signal[:, 1], q)), 6) for q in (0.25, 0.5, 0.75)})
    assert [r.threshold for r in rules] == expected and len(rules) == 3
    assert all(r.direction == "small-first" and (r.min_switch, r.max_switch) == (0.2, 0.6) for r in rules)
    assert adaptive_candidates((1, 1), signal[:, :2]) == []  # too short to bracket


def test_a_candidate_switches_at_its_lower_bound_exactly_the_samples_whose_signal_is_above_its_threshold():
    work = pair_workload()
    noise, labels = work.start(7, 8)  # the noise verify_plans draws for seed 7
    signal = small_model_signal(work, noise, labels, num_steps=10, batch_size=4)
    rules = adaptive_candidates((0,) * 4 + (1,) * 6, signal)  # bounds 2..6, calibrated at step 1
    median = rules[1]
    assert median.threshold == round(float(torch.quantile(signal[:, 1], 0.5)), 6)
    out = verify_plans(work, [Plan(adaptive=median, names=("S", "XL"))], seed=7, num_samples=8, reference_steps=10,
                       batch_size=4, costs=COSTS, timing_repetitions=1, resamples=20, progress=False)
    switch = out["rows"][1]["switch_steps"]
    above = (signal[:, 1] > median.threshold).tolist()
    assert 2 <= sum(above) <= 6  # the median: about half
    # The verification's own signal may differ in the last bits from this one: skip a sample within 1e-4.
    clear = (signal[:, 1] - median.threshold).abs() > 1e-4
    assert clear.sum() >= 6
    assert all((step == 2) == early for step, early, far in zip(switch, above, clear.tolist(), strict=True) if far)
    assert all(2 < step <= 6 for step, early in zip(switch, above, strict=True) if not early)


def test_adaptive_rows_are_verified_on_the_same_noise():
    work = pair_workload()
    plan = Plan(adaptive=AdaptiveRule("small-first", 0.0, 0.25, 0.5), names=("S", "XL"))
    out = verify_plans(work, [(0, 0, 1, 1), plan], seed=7, num_samples=6, reference_steps=4, batch_size=4,
                       costs=COSTS, timing_repetitions=1, resamples=20, progress=False)
    reference, fixed, adaptive = out["rows"]
    assert reference["plan"] == "XL4" and fixed["plan"] == "S2 > XL2" and adaptive["plan"] == str(plan)
    # threshold 0: every sample switches as soon as the signal exists (step 2), the same as the fixed S2 > XL2
    assert adaptive["sequence"] is None and adaptive["switch_steps"] == [2] * 6 and adaptive["mean_switch_step"] == 2
    assert adaptive["predicted_cost"] == pytest.approx((0.2 + 2.0) / 4) == pytest.approx(fixed["predicted_cost"])
    assert adaptive["distance"] == pytest.approx(fixed["distance"], abs=1e-6)
    assert adaptive["fid_ratio"]["ratio"] == pytest.approx(fixed["fid_ratio"]["ratio"], rel=1e-5)
    assert adaptive["measured_cost"] > 0 and adaptive["adaptive"]["threshold"] == 0.0


def row(plan, high, predicted, measured):
    return {"plan": plan, "fid_ratio": {"ratio": high - 0.01, "low": 0.9, "high": high}, "distance": 0.1,
            "predicted_cost": predicted, "measured_cost": measured}


def test_pick_adaptive_needs_the_target_and_a_win_on_quality_and_both_costs():
    fixed = row("S8 > XL12", 1.06, 0.6, 0.62)
    candidates = [row("a", 1.05, 0.55, 0.57), row("b", 1.04, 0.5, 0.65), row("c", 1.07, 0.4, 0.4),
                  row("d", 1.06, 0.52, 0.5)]
    assert pick_adaptive(candidates, fixed, budget=None, tolerance=1.06)["plan"] == "d"  # the cheapest winner
    assert [r["wins"] for r in candidates] == [True, False, False, True]  # b: measured dearer, c: worse interval
    assert pick_adaptive(candidates, fixed, budget=0.6, tolerance=None)["plan"] == "a"  # the best quality
    assert pick_adaptive(candidates, fixed, budget=None, tolerance=1.055)["plan"] == "a"  # d misses the tolerance
    assert pick_adaptive(candidates, fixed, budget=0.5, tolerance=None) is None  # none within the budget


def record_numbers(monkeypatch, name, candidates, numbers):
    """Wrap ``tune_api.<name>`` (a verification) so that the rows ``candidates(out)`` picks get the recorded
    ``numbers`` (interval's upper end, predicted and measured cost) in place of the tiny models' figures."""
    real_verify = getattr(tune_api, name)

    def verify(*args, **options):
        out = real_verify(*args, **options)
        for index, candidate in enumerate(candidates(out)):
            if numbers is not None:
                high, predicted, measured = numbers[index]
                candidate.update(row(candidate["plan"], high, predicted, measured))
        return out

    monkeypatch.setattr(tune_api, name, verify)


def run_tune(tmp_path, monkeypatch, numbers=None, **kwargs):
    """tune on the tiny pair with held-out verification; ``numbers`` overwrites each adaptive row's verified
    interval and costs with recorded numbers (the choice logic under test, not the tiny models' quality)."""
    record_numbers(monkeypatch, "verify_plans", lambda out: [r for r in out["rows"] if r["sequence"] is None],
                   numbers)
    options = {"workload": pair_workload(), "num_steps": 6, "budget": 0.8, "search_samples": 6, "batch_size": 6,
               "min_cost": 0.3, "verify_samples": 6, "verify_seed": 9, "timing_repetitions": 1, "costs": COSTS,
               "progress": False} | kwargs
    return tune(tmp_path / "run", **options)


def test_tune_reports_the_verified_candidates_and_keeps_the_fixed_plan_when_none_wins(tmp_path, monkeypatch):
    result = run_tune(tmp_path, monkeypatch, numbers=[(99.0, 0.1, 0.1)] * 3)  # far worse intervals
    frontier = json.loads((tmp_path / "run" / "frontier.json").read_text())
    report = frontier["adaptive"]
    assert len(report["candidates"]) == 3 and report["chosen"] is None and report["skipped"] is None
    assert all(r["wins"] is False and r["plan"].startswith("adaptive(small-first") for r in report["candidates"])
    plan = load_plan(tmp_path / "run" / "plan.json")
    assert plan.adaptive is None and plan == result["plan"] and frontier["chosen"]["kind"] == "per-step"
    labels = [r["plan"] for r in frontier["chosen"]["verification"]["rows"]]
    assert labels[:2] == ["XL6", frontier["chosen"]["plan"]] and labels[2:] == [r["plan"] for r in report["candidates"]]


def test_tune_chooses_a_winning_candidate_and_writes_it(tmp_path, monkeypatch):
    result = run_tune(tmp_path, monkeypatch, numbers=[(99.0, 0.1, 0.1), (0.5, 0.05, 0.05), (0.6, 0.01, 0.01)])
    frontier = json.loads((tmp_path / "run" / "frontier.json").read_text())
    report, chosen = frontier["adaptive"], frontier["chosen"]
    assert [r["wins"] for r in report["candidates"]] == [False, True, True]
    assert report["chosen"] == report["candidates"][1]["plan"] == chosen["plan"]  # budget: the best interval
    plan = load_plan(tmp_path / "run" / "plan.json")
    assert plan.adaptive is not None and str(plan) == chosen["plan"] and plan == result["plan"]
    assert chosen["kind"] == "adaptive" and chosen["sequence"] is None and chosen["predicted_cost"] == 0.05
    assert chosen["fixed_plan"].startswith("S")


def test_tune_skips_adaptive_plans_without_verification_or_with_three_models(tmp_path, monkeypatch):
    result = run_tune(tmp_path, monkeypatch, verify_samples=0)
    assert "give verify_samples" in result["frontier"]["adaptive"]["skipped"]
    three = tune(tmp_path / "three", workload=pair_workload(3), num_steps=4, budget=0.95, search_samples=4,
                 batch_size=4, min_cost=0.5, verify_samples=4, verify_seed=9, timing_repetitions=1,
                 costs=CostModel((0.1, 0.3, 1.0), 4, 1.0, "float32", "cpu", 1), progress=False)
    assert three["frontier"]["adaptive"]["skipped"] == "adaptive plans take two models, the workload has 3"
    off = run_tune(tmp_path / "off", monkeypatch, adaptive=False)
    assert off["frontier"]["adaptive"] is None and len(off["chosen"]["verification"]["rows"]) == 2
