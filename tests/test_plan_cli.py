# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``--plan FILE``: a saved :class:`tstitch.plan.Plan` (``tstitch tune``'s plan.json) in ``tstitch sample``,
``tstitch evaluate`` and ``tstitch bench``, in-process, with the embedded digits family."""

from __future__ import annotations

import json

import pytest

from tstitch import Plan, cli, save_plan
from tstitch.planfile import plan_from_dict, plan_to_dict


def test_sample_plan_prefix_equals_fraction_and_any_order_runs(tmp_path, capsys):
    # a prefix plan gives the same images as the fraction that means it
    plan_path = save_plan(Plan.from_segments([(0, 1), (1, 3)], names=["S", "XL"]), tmp_path / "prefix.json")
    common = ["--preset", "digits", "--num-images", "3", "--no-progress", "--no-warmup"]
    assert cli.main(["sample", *common, "--plan", str(plan_path), "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["sample", *common, "--fraction", "0.25", "--steps", "4", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    for name in ("sample-000.png", "sample-001.png", "sample-002.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert a["stitched"]["model_per_step"] == [0, 1, 1, 1] and a["stitched"]["plan"] == "S1 > XL3"
    assert a["settings"]["plan"] == plan_to_dict(Plan.from_segments([(0, 1), (1, 3)], names=["S", "XL"]))

    # a per-step plan of three models in any order, from a tune folder: run step by step, printed
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    save_plan(Plan.parse("S2 > XL1 > B1 > S1", ["S", "B", "XL"]), tuned / "plan.json")
    assert cli.main(["sample", "--preset", "digits-s-b-xl", "--plan", str(tuned), "--num-images", "2",
                     "--no-progress", "--compare", "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert "preset 'digits-s-b-xl': plan S2 > XL1 > B1 > S1 (digits-s 0.6, digits-b 0.2, digits-xl 0.2 of the steps)" \
        in printed
    assert "ddim 5 steps" in printed and "stitched:  digits-s 3 steps + digits-b 1 steps + digits-xl 1 steps" in printed
    c = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert c["stitched"]["model_per_step"] == [0, 0, 2, 1, 0] and c["baseline"]["plan"] is None


@pytest.mark.parametrize(("extra", "message"), [
    (["--steps", "6"], "the plan S2 > XL3 gives the model of 5 steps, but the run has 6 steps (--steps)"),
    (["--fraction", "0.3"], "argument --fraction: not allowed with argument --plan"),
    (["--mode", "official"], "a per-step plan (S2 > XL3) runs in the bare loop"),
])
def test_sample_plan_refusals(tmp_path, capsys, extra, message):
    plan_path = save_plan(Plan.parse("S2 > XL3", ["S", "XL"]), tmp_path / "plan.json")
    assert cli.main(["sample", "--preset", "digits", "--plan", str(plan_path), *extra,
                     "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*"))  # refused before sampling


def test_sample_plan_file_refusals(tmp_path, capsys):
    three = save_plan(Plan.parse("S2 > B1 > XL3", ["S", "B", "XL"]), tmp_path / "three.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "num_models": 2, "sequence": [0, 3]}')
    cases = [
        (three, "the plan S2 > B1 > XL3 is for 3 models, but there are 2 (digits-s, digits-xl)"),
        (bad, "argument --plan: not a tstitch plan: " + str(bad) + ": sequence[1] is 3, not a model index"),
        (tmp_path, f"argument --plan: {tmp_path} is a folder without plan.json"),
        (tmp_path / "none.json", f"argument --plan: {tmp_path / 'none.json'} does not exist"),
    ]
    for path, message in cases:
        assert cli.main(["sample", "--preset", "digits", "--plan", str(path), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err


def test_evaluate_plan_one_schedule_and_refusals(tmp_path, capsys):
    plan_path = save_plan(Plan.parse("S2 > XL2 > S1", ["S", "XL"]), tmp_path / "plan.json")
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--preset", "digits", "--plan", str(plan_path), "--samples", "8",
                     "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "diffusers/ddim 5 steps" in printed and "S2 > XL2 > S1" in printed
    samples = json.loads((out / "plan-S2_XL2_S1" / "samples.json").read_text())
    assert samples["model_per_step"] == [0, 0, 1, 1, 0] and samples["fractions"] == [0.6]
    assert plan_from_dict(samples["plan"]) == Plan.parse("S2 > XL2 > S1", ["S", "XL"])
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [row["schedule"] for row in rows] == ["S2 > XL2 > S1"]
    for extra, message in [(["--sweep"], "argument --sweep: not allowed with argument --plan"),
                           (["--steps", "4"], "the plan S2 > XL2 > S1 gives the model of 5 steps, but the run has 4")]:
        assert cli.main(["evaluate", "--preset", "digits", "--plan", str(plan_path), *extra,
                         "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err


def test_bench_plan_overhead_beside_the_prefix_plans(tmp_path, capsys):
    plan_path = save_plan(Plan.parse("S1 > XL2 > S1", ["S", "XL"]), tmp_path / "plan.json")
    out = tmp_path / "bench"
    assert cli.main(["bench", "--cases", "digits", "--plan", str(plan_path), "--reps", "1", "--images", "2",
                     "--threads", "1", "--fractions", "0.25", "--no-memory", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    case = json.loads((out / "bench.json").read_text())["cases"][0]
    plan = case["plan"]
    assert case["num_steps"] == 4 and plan["sequence"] == [0, 1, 1, 0] and plan["small_steps"] == 2
    assert plan["prefix_fraction"] == 0.5 and [row["fraction"] for row in case["rows"]] == [0, 0.25, 0.5, 1]
    assert plan["max_abs_diff_vs_plain"] == 0.0 and plan["overhead"]["median"] > 0
    assert set(case["runs"]) >= {"plain@plan", "stitched@plan", "plain@0.5", "stitched@0.5"}
    assert "plan S1 > XL2 > S1: " in printed and "the prefix plan with as many small steps, r=0.5: " in printed
    three = save_plan(Plan.parse("S1 > B1 > XL2", ["S", "B", "XL"]), tmp_path / "three.json")
    assert cli.main(["bench", "--cases", "digits", "--plan", str(three), "--out", str(tmp_path / "x")]) == 2
    assert "the plan S1 > B1 > XL2 is for 3 models, but there are 2" in capsys.readouterr().err


def test_serve_plan_is_one_more_gallery_run(tmp_path):
    pytest.importorskip("gradio", reason="the web extra is not installed (pip install 'tstitch[web]')")
    from tstitch.models.loading import load_preset
    from tstitch.serve import views
    from tstitch.serve.request import parse_request
    from tstitch.serve.runs import run_request

    plan = Plan.parse("S2 > XL2 > S1", ["S", "XL"])  # the page takes a Plan (an upload or a tune folder's)
    values = dict(model="digits", fractions=["0.4"], steps=5, scheduler="", guidance=1.0, seed=0, num_images=2,
                  labels="0 1", prompt="")
    page = parse_request(*values.values(), num_models=2, class_conditional=True, plan=plan)
    assert page.plan == plan and page.num_runs == 3
    runs = run_request(load_preset("digits", device="cpu"), page, repetitions=1).runs
    assert [run.label for run in runs] == ["r 0 (digits-xl alone)", "r 0.4", "plan S2 > XL2 > S1"]
    assert runs[2].step_models() == ["digits-s", "digits-s", "digits-xl", "digits-xl", "digits-s"]
    assert views.caption(runs[2]).startswith("plan S2 > XL2 > S1: ") and runs[2].speedup.median > 0
    # only a plan, no fraction: the plan carries the large model alone
    only = parse_request(*{**values, "fractions": []}.values(), num_models=2, class_conditional=True, plan=plan)
    assert [run.label for run in run_request(load_preset("digits", device="cpu"), only, repetitions=1).runs] == [
        "r 0 (digits-xl alone)", "plan S2 > XL2 > S1"]
    with pytest.raises(ValueError, match="gives the model of 5 steps, but the run has 6 steps"):
        parse_request(*{**values, "steps": 6}.values(), num_models=2, class_conditional=True, plan=plan)
    with pytest.raises(ValueError, match=r"the plan S2 > XL2 > S1 is for 2 models, but there are 3"):
        parse_request(*{**values, "fractions": ["0.4,0.2"]}.values(), num_models=3, class_conditional=True,
                           plan=plan)
