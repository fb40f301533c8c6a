# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch evaluate``'s FID ratios to the large model alone carry a 95% paired interval: the features kept
per schedule, the paired jackknife (the same rows left out of both sets), the bootstrap for runs under 20 samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tstitch.experiments.evaluate import EvaluateConfig, run_evaluate
from tstitch.experiments.evaluation_report import add_fid_intervals, fid_ratio_interval, format_rows
from tstitch.metrics import Reference
from tstitch.tune.stats import gaussian_statistics, jackknife_fid_ratio

SLUGS = ["digits-s-0_digits-xl-1", "digits-s-0.5_digits-xl-0.5", "digits-s-1_digits-xl-0"]


def config(out: Path, **overrides) -> EvaluateConfig:
    settings = dict(out_dir=out, preset="digits", sweep=True, sweep_step=0.5, num_samples=24, num_steps=3,
                    batch_size=12, device="cpu", seed=3)
    return EvaluateConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("intervals")
    return run_evaluate(config(out), progress=False)


def digits_reference() -> Reference:
    from tstitch.metrics import DigitsFeatures, extract, images_to_uint8
    from tstitch.zoo import load_classifier
    from tstitch.zoo.data import load_digits_tensors

    digits, _ = load_digits_tensors()
    features, _ = extract(DigitsFeatures(load_classifier()), [images_to_uint8(digits)])
    return Reference(features, source="digits")


def test_rows_carry_the_paired_jackknife_interval_of_the_saved_features(run):
    rows = {Path(r["samples"]).parent.name: r for r in run.rows}
    features = {slug: torch.from_numpy(np.load(run.out_dir / slug / "features.npy")) for slug in SLUGS}
    assert all(f.shape == (24, 64) for f in features.values())
    real = gaussian_statistics(digits_reference().features)
    alone = rows["digits-s-0_digits-xl-1"]
    assert (alone["fid_vs_large_low"], alone["fid_vs_large"], alone["fid_vs_large_high"]) == (1.0, 1.0, 1.0)
    for slug in SLUGS[1:]:
        row = rows[slug]
        expected = jackknife_fid_ratio(features[slug].double(), features[SLUGS[0]].double(), real, groups=10)
        assert (row["fid_vs_large_low"], row["fid_vs_large_high"]) == (expected.low, expected.high)
        assert expected.ratio == pytest.approx(row["fid_vs_large"], rel=1e-6)  # torchmetrics' FID, the same ratio
        assert row["fid_vs_large_low"] < row["fid_vs_large_high"]
        assert row["fid_vs_large_interval"] == "95% jackknife, 10 groups"
    stored = json.loads((run.out_dir / "results.json").read_text())["rows"]
    assert [r["fid_vs_large_high"] for r in stored] == [r["fid_vs_large_high"] for r in run.rows]
    assert "fid_vs_large_low" in (run.out_dir / "results.csv").read_text().splitlines()[0]
    table = format_rows(run.rows).splitlines()
    assert "FID/large [95%]" in table[0]
    assert f"[{rows[SLUGS[1]]['fid_vs_large_low']:.3f}, {rows[SLUGS[1]]['fid_vs_large_high']:.3f}]" in table[2]


def test_a_resumed_run_without_features_scores_again_and_gives_the_same_intervals(run, tmp_path):
    (run.out_dir / SLUGS[1] / "features.npy").unlink()  # as a folder scored before the features were kept
    again = run_evaluate(config(run.out_dir), progress=False)
    assert (run.out_dir / SLUGS[1] / "features.npy").is_file()
    assert [(r["fid_vs_large_low"], r["fid_vs_large_high"]) for r in again.rows] == [
        (r["fid_vs_large_low"], r["fid_vs_large_high"]) for r in run.rows]


def test_the_pairing_matters_and_small_runs_take_the_bootstrap():
    generator = torch.Generator().manual_seed(0)
    alone = torch.randn(400, 4, generator=generator, dtype=torch.float64)
    close = alone + 0.1 * torch.randn(400, 4, generator=generator, dtype=torch.float64)
    real_features = torch.randn(500, 4, generator=generator, dtype=torch.float64) + 0.3
    by_features = fid_ratio_interval(close, alone, Reference(real_features.float()))
    mean, cov = gaussian_statistics(real_features.float())
    by_statistics = fid_ratio_interval(close, alone, Reference(mean=mean.numpy(), cov=cov.numpy()))
    assert (by_features.low, by_features.high) == pytest.approx((by_statistics.low, by_statistics.high), abs=1e-9)
    shuffled = close[torch.randperm(400, generator=generator)]  # the same set, the pairing lost
    unpaired = fid_ratio_interval(shuffled, alone, Reference(real_features.float()))
    assert unpaired.ratio == pytest.approx(by_features.ratio, rel=1e-9)
    assert unpaired.high - unpaired.low > 2 * (by_features.high - by_features.low)

    expected = jackknife_fid_ratio(close, alone, gaussian_statistics(real_features.float()), groups=10)
    assert by_features.method == "jackknife, 10 groups"
    assert (by_features.low, by_features.high) == pytest.approx((expected.low, expected.high), rel=1e-9)
    small = fid_ratio_interval(close[:19], alone[:19], Reference(real_features.float()))
    assert small.method == "paired bootstrap, bias-corrected FIDs"


def test_rows_without_the_large_model_alone_get_no_interval(run):
    rows = [dict(r) for r in run.rows if any(r["fractions"])]
    for row in rows:
        row.pop("fid_vs_large_low"), row.pop("fid_vs_large_high")
    add_fid_intervals(type("Run", (), {"out": run.out_dir, "config": config(run.out_dir)})(), rows,
                      digits_reference())
    assert not any("fid_vs_large_high" in r for r in rows)
