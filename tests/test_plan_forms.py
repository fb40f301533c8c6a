# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch evaluate`` and ``tstitch bench`` take the ``--plan`` forms of ``tstitch sample``: an adaptive plan's
text, a per-step text over the models' short names, a plan file; what they cannot run is refused by name."""

from __future__ import annotations

import json

from tstitch import cli

ADAPTIVE = "adaptive(large-first, x0-change<0.05, 0.1..1)"
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


def test_bench_times_a_per_step_text_and_refuses_an_adaptive_plan(tmp_path, capsys):
    args = ["bench", "--cases", "digits", "--reps", "1", "--images", "2", "--threads", "1", "--no-memory",
            "--fractions", "0.5"]
    assert cli.main([*args, "--plan", "S2 > L2", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["cases"][0]["plan"]["plan"] == "S2 > L2"
    assert cli.main([*args, "--plan", ADAPTIVE, "--out", str(tmp_path / "a")]) == 2
    assert "--plan adaptive(large-first" in capsys.readouterr().err
