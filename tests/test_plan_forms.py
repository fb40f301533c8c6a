# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch evaluate`` and ``tstitch bench`` take the ``--plan`` forms of ``tstitch sample``: an adaptive plan's
text, a per-step text over the models' short names, a plan file; what they cannot run is refused by name."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from tstitch import cli

ADAPTIVE = "adaptive(large-first, x0-change<0.05, 0.1..1)"
SPLIT = "adaptive(small-first, x0-change>0.5, 0.2..0.8)"
EVAL = ["evaluate", "--preset", "digits", "--samples", "4", "--steps", "6", "--batch-size", "2", "--threads", "1",
        "--metric", "none", "--no-progress"]


def test_evaluate_runs_an_adaptive_plan_and_records_each_samples_switch(tmp_path, capsys):
    out = tmp_path / "adaptive"
    assert cli.main([*EVAL, "--plan", ADAPTIVE, "--out", str(out)]) == 0
    assert ADAPTIVE in capsys.readouterr().out
    (folder,) = [p for p in out.iterdir() if p.name.startswith("plan-adaptive")]
    record = json.loads((folder / "samples.json").read_text())
    assert record["schedule"] == ADAPTIVE and record["plan"]["adaptive"]["direction"] == "large-first"
    assert len(record["switch_steps"]) == 4 and all(1 <= s <= 6 for s in record["switch_steps"])
    other = "adaptive(large-first, x0-change<0.2, 0.1..1)"  # another rule: another folder, never mixed
    assert cli.main([*EVAL, "--plan", other, "--out", str(out)]) == 0
    assert len([p for p in out.iterdir() if p.name.startswith("plan-adaptive")]) == 2


def test_evaluate_reads_a_per_step_text_and_refuses_an_adaptive_plan_with_caches(tmp_path, capsys):
    out = tmp_path / "named"
    assert cli.main([*EVAL, "--plan", "S2 > XL4", "--out", str(out)]) == 0
    assert json.loads((out / "plan-S2_XL4" / "samples.json").read_text())["model_per_step"] == [0, 0, 1, 1, 1, 1]
    assert cli.main([*EVAL, "--plan", ADAPTIVE, "--cache", "deepcache:2", "--out", str(tmp_path / "c")]) == 2
    assert "--plan adaptive(" in capsys.readouterr().err


def test_bench_times_a_per_step_text_and_an_adaptive_plan_against_one_switch_step(tmp_path, capsys):
    args = ["bench", "--cases", "digits", "--images", "4", "--threads", "1", "--no-memory", "--fractions", "0.5"]
    assert cli.main([*args, "--reps", "1", "--plan", "S2 > L2", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["cases"][0]["plan"]["plan"] == "S2 > L2"
    capsys.readouterr()
    # digits, 10 steps: the first 4 samples switch at step 2 or 8 under this rule, so the batch splits
    assert cli.main([*args, "--reps", "2", "--steps", "10", "--plan", SPLIT, "--out", str(tmp_path / "a")]) == 0
    case = json.loads((tmp_path / "a" / "bench.json").read_text())["cases"][0]
    row, switches = case["adaptive"], case["adaptive"]["switch_steps"]
    assert "plan" not in case and row["plan"] == SPLIT and row["direction"] == "small-first"
    assert len(switches) == 4 and len(set(switches)) > 1 and all(2 <= s <= 8 for s in switches)
    k = math.floor(sum(switches) / len(switches) + 0.5)  # the rounded mean of the recorded switch steps
    assert row["k"] == k and row["together"] == f"together@{k}" and row["together_plan"] == f"S{k} > L{10 - k}"
    # the harness checked every run (together@k: the models of its plan; adaptive: each sample's switch step)
    assert len(case["runs"]["adaptive"]["seconds"]) == len(case["runs"][f"together@{k}"]["seconds"]) == 2
    assert row["timed_runs_with_other_switch_steps"] == 0
    for key in ("ratio_vs_together", "speedup"):
        assert 0 < row[key]["min"] <= row[key]["median"] <= row[key]["max"]
    assert row["target"] == 1.03 and row["met"] == (row["ratio_vs_together"]["median"] <= 1.03)
    assert row["work_ratio"] > 0  # what the single-model runs predict for the two runs' model work
    assert f"plan {SPLIT}:" in capsys.readouterr().out


def test_bench_checks_each_samples_switch_and_refuses_a_scheduler_without_a_noise_schedule():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from tstitch.bench import BenchCase
    from tstitch.bench.harness import _check_adaptive
    from tstitch.bench.runners import ConfigRun
    from tstitch.plan import Plan
    from tstitch.stepcount import StitchRecord

    case = BenchCase(name="flow", small=None, large=None, make_scheduler=FlowMatchEulerDiscreteScheduler,
                     num_steps=4, num_images=2, plan=Plan.parse(SPLIT))
    with pytest.raises(ValueError, match="case flow: the adaptive plan .* alphas_cumprod"):
        case.validate()
    record = StitchRecord(["S", "L"], num_steps=4, switch_steps=[1, 3], switch_models=(0, 1))
    record.calls = [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (3, 1)]  # step 1 and 2: the batch split
    runner = SimpleNamespace(case=SimpleNamespace(name="flow", num_images=2, plan=case.plan))
    _check_adaptive(runner, ConfigRun(1.0, record=record), 4)
    record.calls = [(0, 0), (1, 0), (2, 0), (2, 1), (3, 1)]  # sample 0 switched at step 1 but step 1 ran S alone
    with pytest.raises(RuntimeError, match="flow adaptive: switch steps"):
        _check_adaptive(runner, ConfigRun(1.0, record=record), 4)
