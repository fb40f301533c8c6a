# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""tstitch tune's region candidates: their plans around the fixed plan, verification beside the fixed plan, the
choice, tune end to end, and the plan it writes run by ``tstitch sample --region``."""

from __future__ import annotations

import json

import pytest
import torch
from test_tune import NUM_CLASSES, ddim
from test_tune_adaptive import COSTS, pair_workload, record_numbers, row
from tiny_models import one_thread, tiny_unet  # noqa: F401

from tstitch import Plan, cli, load_plan
from tstitch.tune import Workload, tune
from tstitch.tune.adaptive_plans import best
from tstitch.tune.region_plans import (
    RegionCandidate,
    pick_region,
    predicted_cost,
    region_candidates,
    skip_reason,
    verify_regions,
)
from tstitch.tune.verify import verify_plans


def test_candidates_put_hybrid_steps_after_the_fixed_plans_small_steps():
    found = region_candidates((0,) * 8 + (1,) * 12)
    assert [c.mask_fraction for c in found] == [0.1, 0.3, 0.5]
    assert {c.sequence for c in found} == {(0,) * 8 + (1,) * 4 + (2,) * 8}  # h = 20% of 20 steps
    assert {str(c.plan()) for c in found} == {"S8 > H4 > XL8"}
    assert found[0].as_dict() == {"plan": "S8 > H4 > XL8", "sequence": [0] * 8 + [1] * 4 + [2] * 8,
                                  "mask_fraction": 0.1, "small_steps": 8, "hybrid_steps": 4, "large_steps": 8}
    assert [c.sequence for c in region_candidates((0, 0, 0, 1, 1, 1))] == [(0, 0, 0, 1, 1, 2)] * 3  # h at least 2
    assert region_candidates((0,) * 4 + (1,) * 2) == []  # no large step would be left after two hybrid steps
    assert region_candidates((0, 0, 1, 1, 0, 0)) == []  # no large step after the hybrid ones
    # A tail after the large steps (the segment search's S > XL > S) is kept: S8 > XL11 > S1 -> S8 > H4 > XL7 > S1
    tailed = region_candidates((0,) * 8 + (1,) * 11 + (0,), mask_fractions=(0.3,))
    assert [str(c.plan()) for c in tailed] == ["S8 > H4 > XL7 > S1"] and tailed[0].large_steps == 7
    assert region_candidates((0, 0, 1, 0, 1, 1)) == []  # the step after the small ones must be large for h steps
    assert region_candidates((1,) * 6) == []  # no small step
    assert region_candidates((0,) * 4 + (1,) * 6, mask_fractions=(0.3, 0.3)) == [RegionCandidate(4, 2, 0.3, (1,) * 4)]


def test_predicted_cost_counts_the_first_hybrid_step_as_a_large_step():
    # S2 (0.1 each), the first H a full large step (1.0), the second S + 0.1 XL, then XL2, over XL6
    candidate = RegionCandidate(2, 2, 0.1, (1, 1))
    assert predicted_cost(COSTS, candidate, 6) == pytest.approx((0.2 + 1.0 + 0.2 + 2.0) / 6)
    assert predicted_cost(COSTS, RegionCandidate(2, 3, 0.5, (1,)), 6) == pytest.approx((0.2 + 1.0 + 2 * 0.6 + 1.0) / 6)
    # a tail's small step counts as one: S2 > H2 > XL2 > S1
    assert predicted_cost(COSTS, RegionCandidate(2, 2, 0.1, (1, 1, 0)), 7) == pytest.approx(
        (0.2 + 1.0 + 0.2 + 2.0 + 0.1) / 7)


def test_skip_reasons():
    pair = pair_workload()
    assert skip_reason(pair, (0, 0, 1, 1, 1, 1), 6) is None
    assert skip_reason(pair_workload(3), (0, 0, 2, 2), 6) == ("region plans take two models (a small and a large "
                                                              "DiT), the workload has 3")
    unets = Workload(models=[tiny_unet(1), tiny_unet(2)], names=["u-s", "u-xl"], scheduler=ddim(),
                     sample_shape=(4, 8, 8), num_classes=NUM_CLASSES)
    assert skip_reason(unets, (0, 0, 1, 1, 1, 1), 6).startswith("region plans need a DiT pair: HybridDenoiser needs")
    assert "give verify_samples" in skip_reason(pair, (0, 0, 1, 1, 1, 1), 0)
    assert "starts with small steps, then large ones; the chosen plan does not" in skip_reason(pair, (1, 1, 0), 6)
    too_short = ("no region candidate fits: the chosen plan has 3 small steps of 5, and a candidate needs 2 large "
                 "steps after them to make hybrid and a large step after those")
    assert skip_reason(pair, (0, 0, 0, 1, 1), 6) == too_short


def test_region_rows_are_verified_beside_the_fixed_plan_on_the_same_noise():
    work = pair_workload()
    large = work.models[-1]
    hooks = len(large.pos_embed._forward_hooks)
    candidates = region_candidates((0, 0, 1, 1, 1, 1), mask_fractions=(1.0, 0.5))
    out = verify_regions(work, (0, 0, 1, 1, 1, 1), candidates, seed=7, num_samples=6, reference_steps=6, batch_size=4,
                         guidance_scale=1.0, costs=COSTS, timing_repetitions=1, progress=False)
    reference, fixed, full, half = out["rows"]
    assert len(large.pos_embed._forward_hooks) == hooks  # the hybrid models' hooks are gone
    assert out["reference"] == reference["plan"] == "XL6" and reference["distance"] == 0.0
    assert fixed["plan"] == "S2 > XL4" and fixed["sequence"] == [0, 0, 1, 1, 1, 1]
    assert fixed["predicted_cost"] == pytest.approx(0.7)
    assert [r["plan"] for r in (full, half)] == ["S2 > H2 > XL2"] * 2 and [full["kind"], half["kind"]] == ["region"] * 2
    assert [full["mask_fraction"], half["mask_fraction"]] == [1.0, 0.5] and half["hybrid_steps"] == 2
    assert full["sequence"] == half["sequence"] == [0, 0, 1, 1, 2, 2]
    assert half["predicted_cost"] == pytest.approx((0.2 + 1.0 + 0.6 + 2.0) / 6)
    # mask 1: every hybrid step is the large model on every token, so the plan is S2 > XL4 to float rounding
    assert full["distance"] == pytest.approx(fixed["distance"], rel=1e-5)
    assert full["fid_ratio"]["ratio"] == pytest.approx(fixed["fid_ratio"]["ratio"], rel=1e-5)
    assert half["distance"] != pytest.approx(fixed["distance"], rel=1e-5)  # half the tokens from the small model
    assert all(r["num_samples"] == 6 and r["measured_cost"] > 0 for r in out["rows"])


def test_verify_plans_refuses_a_hybrid_plan_given_as_a_sequence():
    from tstitch.regions import HybridDenoiser

    work = pair_workload()
    with HybridDenoiser(work.models[0], work.models[1], 0.5) as hybrid:
        three = Workload(models=[work.models[0], hybrid, work.models[1]], names=["tiny-s", "hybrid", "tiny-xl"],
                         scheduler=ddim(), sample_shape=(4, 4, 4), num_classes=NUM_CLASSES)
        with pytest.raises(ValueError, match="runs a hybrid model"):
            verify_plans(three, [(0, 1, 2, 2)], seed=7, num_samples=4, reference_steps=4, progress=False)


def test_pick_region_is_the_adaptive_rule():
    fixed = row("S8 > XL12", 1.06, 0.6, 0.62)
    candidates = [row("a", 1.05, 0.55, 0.57), row("b", 1.04, 0.5, 0.65), row("c", 1.07, 0.4, 0.4)]
    assert pick_region(candidates, fixed, budget=None, tolerance=1.06)["plan"] == "a"
    assert [r["wins"] for r in candidates] == [True, False, False]  # b: measured dearer, c: worse interval
    assert pick_region(candidates, fixed, budget=0.5, tolerance=None) is None
    adaptive, region = row("adaptive", 1.05, 0.55, 0.5), row("region", 1.04, 0.58, 0.5)
    assert best([adaptive, region], tolerance=1.06) is adaptive  # the cheaper under a tolerance
    assert best([adaptive, region], tolerance=None) is region  # the better interval under a budget


def run_tune(tmp_path, monkeypatch, numbers=None, **kwargs):
    """tune on the tiny pair, searching S k > XL plans only (min_cost and the budget leave S2 > XL4), with held-out
    verification; ``numbers`` overwrites each region row's interval and costs with recorded numbers (the choice
    logic under test, not the tiny models' quality)."""
    record_numbers(monkeypatch, "verify_regions", lambda out: out["rows"][2:], numbers)  # after reference, fixed
    options = {"workload": pair_workload(), "num_steps": 6, "budget": 0.75, "search_samples": 6, "batch_size": 6,
               "min_cost": 0.6, "order": [(0, 6), (1, -1)], "verify_samples": 6, "verify_seed": 9,
               "timing_repetitions": 1, "costs": COSTS, "adaptive": False, "progress": False} | kwargs
    return tune(tmp_path / "run", **options)


def test_tune_reports_the_region_rows_and_keeps_the_fixed_plan_when_none_wins(tmp_path, monkeypatch):
    result = run_tune(tmp_path, monkeypatch, numbers=[(99.0, 0.1, 0.1)] * 3)  # far worse intervals
    frontier = json.loads((tmp_path / "run" / "frontier.json").read_text())
    report, chosen = frontier["regions"], frontier["chosen"]
    assert chosen["plan"] == "S2 > XL4" and chosen["kind"] == "per-step" and report["skipped"] is None
    assert [(r["plan"], r["mask_fraction"], r["wins"]) for r in report["candidates"]] == [
        ("S2 > H2 > XL2", 0.1, False), ("S2 > H2 > XL2", 0.3, False), ("S2 > H2 > XL2", 0.5, False)]
    assert report["chosen"] is None and report["fixed"]["plan"] == "S2 > XL4" and report["reference"]["plan"] == "XL6"
    assert report["seed"] == 9 and report["num_samples"] == 6 and "first hybrid step" in report["cost_model"]
    assert load_plan(tmp_path / "run" / "plan.json") == result["plan"] == Plan.parse("S2 > XL4", ["S", "XL"])
    assert [r["plan"] for r in chosen["verification"]["rows"]] == ["XL6", "S2 > XL4"]  # the fixed plans' call


def test_tune_chooses_a_winning_region_plan_and_sample_runs_it(tmp_path, monkeypatch, capsys):
    result = run_tune(tmp_path, monkeypatch, numbers=[(99.0, 0.1, 0.1), (0.6, 0.5, 0.5), (0.5, 0.55, 0.5)])
    frontier = json.loads((tmp_path / "run" / "frontier.json").read_text())
    report, chosen = frontier["regions"], frontier["chosen"]
    assert [r["wins"] for r in report["candidates"]] == [False, True, True]
    assert report["chosen"] == {"plan": "S2 > H2 > XL2", "mask_fraction": 0.5}  # budget: the best interval
    assert chosen["kind"] == "region" and chosen["mask_fraction"] == 0.5 and chosen["sequence"] == [0, 0, 1, 1, 2, 2]
    assert chosen["models"] == ["tiny-s", "hybrid", "tiny-xl"] and chosen["fixed_plan"] == "S2 > XL4"
    assert chosen["predicted_cost"] == 0.55 and chosen["plan"] == "S2 > H2 > XL2"
    assert chosen["run"] == f"tstitch sample --plan {tmp_path / 'run'} --region 0.5 --mode diffusers --steps 6"
    plan = load_plan(tmp_path / "run" / "plan.json")
    assert plan == result["plan"] == Plan.parse("S2 > H2 > XL2", ["S", "H", "XL"]) and plan.names == ("S", "H", "XL")
    # the written plan runs on another DiT pair with the hybrid model added (the digits preset: digits-s, digits-xl)
    out = tmp_path / "sample"
    assert cli.main(["sample", "--preset", "digits", "--plan", str(tmp_path / "run"), "--region", "0.5", "--mode",
                     "diffusers", "--steps", "6", "--num-images", "2", "--out", str(out), "--no-progress",
                     "--no-warmup"]) == 0
    stitched = json.loads((out / "summary.json").read_text())["stitched"]
    assert stitched["models"] == ["digits-s", "hybrid", "digits-xl"] and stitched["mask_fraction"] == 0.5
    assert stitched["model_per_step"] == [0, 0, 1, 1, 2, 2]
    assert [c["mode"] for c in stitched["hybrid_calls"]] == ["fallback", "region"]  # no large step before H
    assert "plan S2 > H2 > XL2" in capsys.readouterr().out


def test_tune_skips_region_plans_without_verification_and_when_turned_off(tmp_path, monkeypatch):
    result = run_tune(tmp_path, monkeypatch, verify_samples=0)
    assert "give verify_samples" in result["frontier"]["regions"]["skipped"]
    assert result["frontier"]["regions"]["candidates"] == []
    off = run_tune(tmp_path / "off", monkeypatch, regions=False)
    assert off["frontier"]["regions"] is None and off["chosen"]["kind"] == "per-step"
    assert torch.equal(torch.tensor(off["chosen"]["sequence"]), torch.tensor([0, 0, 1, 1, 1, 1]))
