# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""benchmarks/successors/study.py: its pure parts on hand-made numbers (T-Stitch's best fraction, the curve
interpolation, the targets' verdicts, plan segments, the chunk order) and a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "successors" / "study.py"


def load_study() -> ModuleType:
    spec = importlib.util.spec_from_file_location("successors_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


study = load_study()


def row(family: str, label: str, time: float, ratio: float, high: float, **params: Any) -> dict[str, Any]:
    return {"family": family, "label": label, "params": params, "time": {"ratio": time},
            "fid_ratio": {"ratio": ratio, "low": 2 * ratio - high, "high": high}}


TSTITCH = [
    row("large alone", "xl", 1.0, 1.0, 1.0, fraction=0.0),
    row("t-stitch", "r=0.3", 0.75, 0.99, 1.03, fraction=0.3),
    row("t-stitch", "r=0.5", 0.56, 1.00, 1.045, fraction=0.5),
    row("t-stitch", "r=0.6", 0.48, 1.10, 1.20, fraction=0.6),
    row("t-stitch", "r=0.7", 0.38, 1.04, 1.049, fraction=0.7),  # an odd point under the limit is still taken
]


def test_best_fraction_is_the_largest_whose_interval_ends_at_or_below_the_limit():
    assert study.best_fraction(TSTITCH)["params"]["fraction"] == 0.7
    assert study.best_fraction(TSTITCH[:4])["params"]["fraction"] == 0.5
    assert study.best_fraction(TSTITCH[:4], limit=1.04)["params"]["fraction"] == 0.3
    assert study.best_fraction(TSTITCH[:1])["params"]["fraction"] == 0.0
    successor = row("adaptive small-first", "a", 0.3, 1.0, 1.01, fraction=0.9)  # not T-Stitch: never chosen
    assert study.best_fraction([*TSTITCH[:4], successor])["params"]["fraction"] == 0.5
    with pytest.raises(ValueError, match="no T-Stitch point"):
        study.best_fraction([row("t-stitch", "r=1", 0.1, 5.0, 6.0, fraction=1.0)])


def test_interpolation_is_linear_in_time_between_the_neighbours_and_none_outside():
    times, values = [1.0, 0.5, 0.25], [0.0, 0.1, 0.3]  # any order: sorted by time inside
    assert study.bracket(times, 0.375) == (2, 1, 0.5)
    assert study.interpolate(times, values, 0.375) == pytest.approx(0.2)
    assert study.interpolate(times, values, 0.75) == pytest.approx(0.05)
    assert study.interpolate(times, values, 0.5) == pytest.approx(0.1)
    assert study.interpolate(times, values, 1.0) == pytest.approx(0.0)
    assert study.interpolate(times, values, 0.2) is None
    assert study.interpolate(times, values, 1.01) is None
    assert study.interpolate([0.5], [3.0], 0.5) == 3.0
    assert study.interpolate([0.5, 0.5], [3.0, 5.0], 0.5) == 3.0  # equal times: the first, no division by 0


def test_target_a_needs_both_the_time_budget_and_an_interval_no_higher():
    best = study.best_fraction(TSTITCH[:4])  # r = 0.5: time 0.56, interval up to 1.045; budget 0.476
    fast_good = row("region large-first", "good", 0.47, 1.0, 1.04)
    fast_bad = row("adaptive small-first", "bad", 0.40, 1.02, 1.08)
    slow_good = row("adaptive large-first", "slow", 0.50, 0.95, 1.00)
    verdict = study.target_a([*TSTITCH[:4], fast_bad, slow_good], best)
    assert verdict["time_budget"] == pytest.approx(0.85 * 0.56)
    assert not verdict["met"] and verdict["passing"] == []
    assert verdict["closest_within_budget"]["label"] == "bad"
    verdict = study.target_a([*TSTITCH[:4], fast_bad, slow_good, fast_good], best)
    assert verdict["met"] and verdict["passing"] == ["good"]
    # T-Stitch's own points never count
    assert not study.target_a([*TSTITCH, row("t-stitch", "x", 0.1, 1.0, 1.0, fraction=0.8)], best)["met"]


def test_verdict_limit_and_ratio_of_means():
    assert study.verdict_limit(0.44, 0.45)["met"] is True
    assert study.verdict_limit(0.46, 0.45)["met"] is False
    assert study.verdict_limit(None, 0.45)["met"] is None
    base = torch.linspace(1, 2, 40, dtype=torch.float64)
    estimate = study.ratio_of_means(0.5 * base, base, groups=10)
    assert estimate["ratio"] == pytest.approx(0.5) and estimate["low"] == pytest.approx(0.5)
    noisy = study.ratio_of_means(0.5 * base + 0.1 * torch.sin(base * 37), base, groups=10)
    assert noisy["low"] < noisy["ratio"] < noisy["high"]
    interval = study.mean_interval(torch.tensor([1.0, 2.0, 3.0]))
    assert interval["mean"] == pytest.approx(2.0) and interval["low"] < 2.0 < interval["high"]


def test_segments_follow_the_fraction_rounding_and_the_last_takes_the_rest():
    assert study.segments_sequence([(2, 0.2), (1, 0.4), (0, 0.4)], 20) == [2] * 4 + [1] * 8 + [0] * 8
    assert study.segments_sequence([(0, 0.3), (2, 0.3), (1, 0.4)], 10) == [0] * 3 + [2] * 3 + [1] * 4
    assert study.segments_sequence([(2, 0.29), (0, 0.71)], 100) == [2] * 29 + [0] * 71


def test_chunk_order_rotates_and_reverses():
    assert study.chunk_order(4, 0) == [0, 1, 2, 3]
    assert study.chunk_order(4, 1) == [0, 3, 2, 1]
    assert study.chunk_order(4, 2) == [2, 3, 0, 1]
    for k in range(6):
        assert sorted(study.chunk_order(4, k)) == [0, 1, 2, 3]


def test_methods_of_lists_the_reference_first_and_each_family_asked_for():
    args = study.parse_args(["--methods", "t-stitch", "large-first", "--fractions", "0.3", "1"])
    methods = study.methods_of(args)
    assert methods[0].family == "large alone"
    assert [m.label for m in methods[1:]] == ["r=0.3", "r=1", "XL 0.3 > S", "XL 0.5 > S", "XL 0.7 > S"]
    args = study.parse_args(["--methods", "regions", "--masks", "0.3"])
    labels = [m.label for m in study.methods_of(args)]
    assert labels == ["digits-xl alone", "XL 0.4 > H 0.4 > S 0.2 @mask 0.3", "S 0.4 > H 0.2 > XL 0.4 @mask 0.3"]


@pytest.mark.slow
def test_a_tiny_run_writes_results_and_the_figure(tmp_path: Path):
    out = tmp_path / "run"
    results = study.main(["--samples", "40", "--quick", "--out", str(out), "--results-dir", str(tmp_path / "none")])
    assert sorted(p.name for p in out.iterdir()) == ["frontier.png", "results.json"]
    written = json.loads((out / "results.json").read_text())
    assert written["num_samples"] == 40 and written["steps"] == 8
    rows = {r["label"]: r for r in written["rows"]}
    reference = rows["digits-xl alone"]
    assert reference["fid_ratio"]["ratio"] == 1.0 and reference["distance"]["mean"] == 0.0
    assert reference["time"]["ratio"] == 1.0
    assert rows["r=1"]["steps_per_model"] == {"digits-s": 8, "digits-xl": 0}
    assert rows["XL 0.5 > S"]["steps_per_model"] == {"digits-s": 4, "digits-xl": 4}
    assert rows["r=1"]["distance"]["mean"] > rows["r=0.5"]["distance"]["mean"] > 0
    assert rows["r=1"]["time"]["ratio"] < rows["r=0.5"]["time"]["ratio"] < 1.0
    adaptive = rows["x0-change>0.07"]
    assert sum(adaptive["switch_step_counts"].values()) == 40
    assert all(3 <= int(step) <= 6 for step in adaptive["switch_step_counts"])  # bounds 0.4..0.8 of 8 steps
    assert sum(adaptive["steps_per_model"].values()) == pytest.approx(8)
    region = rows["XL 0.4 > H 0.4 > S 0.2 @mask 0.3"]
    assert region["steps_per_model"] == {"digits-s": 2, "hybrid": 3, "digits-xl": 3}
    assert region["mask_fraction_per_hybrid_step"] == [5 / 16] * 3 and region["hybrid_modes"] == ["region"] * 3
    bridge = rows["S 0.4 > H 0.2 > XL 0.4 @mask 0.3"]  # no full digits-xl step before its hybrid step
    assert bridge["hybrid_modes"] == ["fallback"] and bridge["mask_fraction_per_hybrid_step"] == [1.0]
    assert results["targets"]["c"]["present"] is False and results["targets"]["c"]["met"] is None
    table = study.markdown_table(written)
    assert table.count("\n") == len(written["rows"]) + 1 and "| t-stitch | r=0.5 | 4 / - / 4 |" in table
    assert "| region large-first | XL 0.4 > H 0.4 > S 0.2 @mask 0.3 | 2 / 3 / 3 |" in table
    assert written["machine"]["threads"] == 1 and len(written["machine"]["load_average_end"]) == 3
    assert results["targets"]["a"]["best_fraction"] in (0.0, 0.5, 1.0)


def test_models_option_picks_the_pair_its_methods_and_its_file_names():
    args = study.parse_args(["--models", "digits-unet-s", "digits-unet", "--fractions", "0.5"])
    assert args.methods == ["t-stitch", "large-first", "adaptive"]  # region plans are DiT-only
    methods = study.methods_of(args)
    assert methods[0].label == "digits-unet alone" and "regions" not in {m.family for m in methods}
    assert study.output_names(args.models) == ("results_unet.json", "frontier_unet.png")
    assert study.output_names(study.parse_args([]).models) == ("results.json", "frontier.png")
    assert study.output_names(["digits-s", "digits-b"]) == ("results_digits-s-digits-b.json",
                                                            "frontier_digits-s-digits-b.png")
    assert study.denoiser_kind(args.models) == "U-Net" and study.denoiser_kind(["digits-s", "digits-xl"]) == "DiT"
    with pytest.raises(SystemExit):
        study.parse_args(["--models", "digits-unet-s", "digits-unet", "--methods", "t-stitch", "regions"])
    info = [{"switch_steps": [8, 8, 16], "switch_models": [0, 1]}]
    summary = study.summarize_info(study.Method("adaptive small-first", "a"), info, 20, args.models)
    assert summary["steps_per_model"] == {"digits-unet-s": pytest.approx(32 / 3), "digits-unet": pytest.approx(28 / 3)}
