# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch sample`` with an adaptive plan (each sample switching at its own step) and with region-level
stitching (``--region``: the hybrid model H in a per-step plan), end to end on the digits preset, and the
refusals, made before any model is loaded."""

from __future__ import annotations

import json

import pytest

from tstitch import cli

ADAPTIVE = "adaptive(large-first, x0-change<0.05, 0.1..1)"


def test_adaptive_plan_records_each_samples_switch(tmp_path, capsys):
    out = tmp_path / "adaptive"
    assert cli.main(["sample", "--preset", "digits", "--plan", ADAPTIVE, "--num-images", "6", "--batch-size", "4",
                     "--steps", "10", "--out", str(out), "--no-progress", "--no-warmup"]) == 0
    printed = capsys.readouterr().out
    assert f"preset 'digits': plan {ADAPTIVE} (digits-s " in printed
    stitched = json.loads((out / "summary.json").read_text())["stitched"]
    switches, rows = stitched["switch_steps"], stitched["model_per_step_per_sample"]
    assert stitched["plan"] == ADAPTIVE and stitched["switch_models"] == [1, 0]
    assert len(switches) == 6 and all(1 <= s <= 10 for s in switches) and len(set(switches)) > 1
    assert f"switch steps per sample: {' '.join(map(str, switches))}" in printed
    assert rows == [[1] * s + [0] * (10 - s) for s in switches]
    assert stitched["steps_per_model"] == [round((60 - sum(switches)) / 6, 3), round(sum(switches) / 6, 3)]
    assert stitched["fractions"] == pytest.approx([(60 - sum(switches)) / 60, sum(switches) / 60])


def test_region_plan_records_the_hybrid_calls(tmp_path, capsys):
    out = tmp_path / "regions"
    assert cli.main(["sample", "--preset", "digits", "--region", "0.3", "--plan", "XL3 > H4 > S3", "--num-images",
                     "3", "--batch-size", "2", "--out", str(out), "--no-progress", "--compare"]) == 0
    printed = capsys.readouterr().out
    assert "plan XL3 > H4 > S3 (digits-s 0.3, hybrid 0.4, digits-xl 0.3 of the steps)" in printed
    summary = json.loads((out / "summary.json").read_text())
    stitched = summary["stitched"]
    assert stitched["models"] == ["digits-s", "hybrid", "digits-xl"] and stitched["mask_fraction"] == 0.3
    assert stitched["model_per_step"] == [2, 2, 2, 1, 1, 1, 1, 0, 0, 0]
    calls = stitched["hybrid_calls"]
    assert [(c["batch"], c["step"]) for c in calls] == [(b, s) for b in (0, 1) for s in (3, 4, 5, 6)]
    assert {c["mode"] for c in calls} == {"region"}  # each batch's run starts from its own large steps
    for call in calls:
        tokens = call["tokens"]
        assert len(tokens) == (2 if call["batch"] == 0 else 1)
        assert all(len(row) == round(call["mask_fraction_used"] * 16) for row in tokens)
    assert summary["baseline"]["models"] == ["digits-xl"] and "hybrid_calls" not in summary["baseline"]


@pytest.mark.parametrize("extra, message", [
    (["--plan", ADAPTIVE, "--mode", "official"], "an adaptive plan runs in the bare loop"),
    (["--plan", ADAPTIVE, "--cache", "first-block:0.05"], "drop --cache"),
    (["--plan", "adaptive(small-first, x0-change>0.1, 0.2..1)"], "argument --plan: not an adaptive plan"),
    (["--region", "0.3"], "--region adds the hybrid model H: give a per-step --plan"),
    (["--region", "0.3", "--plan", ADAPTIVE], "--region adds the hybrid model H"),
    (["--region", "0.3", "--plan", "XL3 > H4 > S3", "--mode", "official"], "--region: a per-step plan runs in"),
    (["--region", "1.5", "--plan", "XL3 > H4 > S3"], "argument --region"),
])
def test_refused_before_loading(tmp_path, capsys, monkeypatch, extra, message):
    import tstitch.models.loading

    def fail(*args, **kwargs):
        raise AssertionError("models were loaded before the flags were checked")

    monkeypatch.setattr(tstitch.models.loading, "load_preset", fail)
    assert cli.main(["sample", "--preset", "digits", *extra, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_region_refused_for_pipelines_and_unknown_plan_names(tmp_path, capsys):
    assert cli.main(["sample", "--preset", "sd15-bksdm-tiny", "--region", "0.3", "--plan", "XL3 > H4 > S3",
                     "--out", str(tmp_path / "o")]) == 2
    assert "--region (region-level stitching) needs class-conditional DiTs; preset 'sd15-bksdm-tiny' is a " \
           "pipeline" in capsys.readouterr().err
    assert cli.main(["sample", "--preset", "digits", "--plan", "XL3 > H4 > S3", "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 2
    assert "--plan 'XL3 > H4 > S3': plan 'XL3 > H4 > S3': cannot read segment 'H4' (models: S, XL)" in \
        capsys.readouterr().err
