# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch evaluate`` on the embedded digits family: the ADM files and report, resuming after a kill (even
in the middle of a write), two torchrun processes with gloo, and the same bytes however the run went."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import processes
import pytest
import torch

from tstitch.experiments.evaluate import (
    EvaluateConfig,
    build_schedules,
    run_evaluate,
    sample_labels,
    sample_noise,
    schedule_slug,
)
from tstitch.experiments.evaluation_files import CRASH_ENV, CRASH_EXIT_CODE
from tstitch.metrics import INCEPTION_WEIGHTS_ENV, InceptionV3Features

# Three schedules (fractions 0, 0.5, 1 of digits-s before digits-xl), 12 samples in shards of 5, 5 and 2.
ARGS = ["--preset", "digits", "--sweep", "--sweep-step", "0.5", "--samples", "12", "--steps", "3",
        "--batch-size", "5", "--device", "cpu", "--no-progress"]
SLUGS = ["digits-s-0_digits-xl-1", "digits-s-0.5_digits-xl-0.5", "digits-s-1_digits-xl-0"]


def config(out: Path, **overrides) -> EvaluateConfig:
    settings = dict(out_dir=out, preset="digits", sweep=True, sweep_step=0.5, num_samples=12, num_steps=3,
                    batch_size=5, device="cpu")
    return EvaluateConfig(**{**settings, **overrides})


def digests(out: Path) -> dict[str, str]:
    return {slug: hashlib.sha256((out / slug / "samples.npz").read_bytes()).hexdigest() for slug in SLUGS}


def run_cli(args: list[str], env: dict[str, str] | None = None, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] \
        if torchrun else [sys.executable]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return processes.run([*launcher, "-m", "tstitch.cli", "evaluate", *args], env=environment, timeout=300)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One uninterrupted single-process run, in this process."""
    out = tmp_path_factory.mktemp("baseline")
    run_evaluate(config(out, png=True), progress=False)
    return out


# -- the pieces -------------------------------------------------------------------------------------------------


def test_noise_and_labels_of_a_sample_do_not_depend_on_its_batch():
    everything = sample_noise(7, range(10), (1, 8, 8))
    assert torch.equal(sample_noise(7, [3, 4], (1, 8, 8)), everything[3:5])
    assert not torch.equal(sample_noise(8, [3], (1, 8, 8)), everything[3:4])
    assert sample_labels(range(8, 13), 10).tolist() == [8, 9, 0, 1, 2]


def test_schedules_of_a_sweep_and_of_given_fractions():
    sweep = build_schedules(["s", "l"], fractions=None, sweep=True)
    assert [s.small_fractions for s in sweep] == [(round(0.1 * i, 6),) for i in range(11)]
    allocations = build_schedules(["s", "b", "l"], fractions=None, sweep=True)
    assert len(allocations) == 66  # every (a, b) on the 0.1 grid with a + b <= 1
    assert {(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.3, 0.2)} <= {s.small_fractions for s in allocations}
    chosen = build_schedules(["s", "l"], fractions=None, sweep=False, default_fractions=(0.4,))
    assert chosen[0].small_fractions == (0.4,)
    assert schedule_slug(build_schedules(["s", "b", "l"], fractions=[0.3, 0.2], sweep=False)[0]) == "s-0.3_b-0.2_l-0.5"
    with pytest.raises(ValueError, match="take 1 fraction"):
        build_schedules(["s", "l"], fractions=[0.1, 0.2], sweep=False)
    with pytest.raises(ValueError, match="sum to at most 1"):
        build_schedules(["s", "b", "l"], fractions=[0.6, 0.6], sweep=False)
    with pytest.raises(ValueError, match="two or three"):
        build_schedules(["a", "b", "c", "d"], fractions=None, sweep=True)


def test_bad_settings_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        run_evaluate(EvaluateConfig(out_dir=tmp_path), progress=False)
    with pytest.raises(ValueError, match="not both"):
        run_evaluate(config(tmp_path, fractions=(0.4,)), progress=False)
    with pytest.raises(ValueError, match="num_samples"):
        run_evaluate(config(tmp_path, num_samples=1), progress=False)
    with pytest.raises(ValueError, match="--reference"):
        run_evaluate(config(tmp_path, metric="inception"), progress=False)
    with pytest.raises(ValueError, match="ddim only"):
        run_evaluate(config(tmp_path, mode="official", scheduler="ddpm"), progress=False)
    assert list(tmp_path.iterdir()) == []


# -- one process ------------------------------------------------------------------------------------------------


def test_a_run_writes_adm_samples_pngs_and_a_report(baseline):
    for slug in SLUGS:
        with np.load(baseline / slug / "samples.npz") as samples:
            assert samples.files == ["arr_0", "arr_1"]
            assert samples["arr_0"].shape == (12, 8, 8, 1) and samples["arr_0"].dtype == np.uint8
            assert samples["arr_1"].tolist() == [i % 10 for i in range(12)]
            assert len({row.tobytes() for row in samples["arr_0"]}) == 12  # 12 different samples
        assert not (baseline / slug / "shards").exists()
        assert len(list((baseline / slug / "png").glob("*.png"))) == 12
    results = json.loads((baseline / "results.json").read_text())
    rows = results["rows"]
    assert [r["fractions"] for r in rows] == [[0.0], [0.5], [1.0]]
    assert [r["model_per_step"] for r in rows] == [[1, 1, 1], [0, 1, 1], [0, 0, 0]]
    for row in rows:
        assert {"fid", "inception_score", "precision", "recall", "accuracy", "seconds_per_image"} <= set(row)
        assert row["fid"] > 0 and 0 <= row["precision"] <= 1 and row["seconds_per_image"] > 0
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert results["settings"]["num_samples"] == 12 and results["metric"]["metric"] == "digits"
    assert (baseline / "results.csv").read_text().count("\n") == 4
    assert (baseline / "pareto.png").stat().st_size > 1000
    assert not list(baseline.rglob(".*tmp*"))


def test_a_finished_run_resumes_to_the_same_files_and_other_settings_are_refused(baseline, tmp_path):
    before = digests(baseline)
    result = run_evaluate(config(baseline, png=True), progress=False)
    assert digests(baseline) == before
    assert [r["fid"] for r in result.rows] == [r["fid"] for r in json.loads(
        (baseline / "results.json").read_text())["rows"]]
    with pytest.raises(ValueError, match=r"other settings.*num_steps: 3 then, 4 now"):
        run_evaluate(config(baseline, num_steps=4), progress=False)
    with pytest.raises(ValueError, match=r"batch_size: 5 then, 6 now"):
        run_evaluate(config(baseline, batch_size=6), progress=False)


def test_stochastic_scheduler_noise_is_per_sample(tmp_path):
    """DDPM draws step noise per sample: the images do not depend on the batch they were sampled in."""
    one = run_evaluate(config(tmp_path / "a", sweep=False, num_samples=6, batch_size=6, scheduler="ddpm",
                              metric="none"), progress=False)
    two = run_evaluate(config(tmp_path / "b", sweep=False, num_samples=6, batch_size=4, scheduler="ddpm",
                              metric="none"), progress=False)
    first, second = (np.load(r.out_dir / r.rows[0]["samples"])["arr_0"].astype(int) for r in (one, two))
    assert np.abs(first - second).max() <= 1  # identical up to float rounding of another batch shape
    assert "fid" not in one.rows[0]


@pytest.mark.slow
def test_published_sampler_and_inception_metric_with_random_weights(tmp_path, monkeypatch):
    """The DiT sampler (mode official) and the Inception path end to end, random Inception weights."""
    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(InceptionV3Features().state_dict(), weights)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(weights))
    reference = tmp_path / "reference.npz"
    np.savez(reference, arr_0=np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8))
    result = run_evaluate(config(tmp_path / "out", sweep=False, fractions=(0.5,), num_samples=4, num_steps=2,
                                 mode="official", metric="inception", reference=str(reference), pr_k=2,
                                 is_splits=2), progress=False)
    row = result.rows[0]
    assert row["sampler"] == "official/ddim" and row["model_per_step"] == [0, 1]
    assert {"fid", "inception_score", "precision", "recall"} <= set(row) and "accuracy" not in row
    assert len(list((tmp_path / "out").glob("reference-inception-*.npz"))) == 1


def test_published_sampler_shards_draw_their_own_step_noise(tmp_path, monkeypatch):
    """The published samplers take one generator per batch (LDM's eta = 1 step noise and random contexts come
    from it): each shard gets its own stream, derived from the seed and its first sample, the same on a rerun."""
    import tstitch.models.families as families

    real = families.official_sampler
    seeds: list[int] = []

    def recording(family: str, mode: str):
        sampler = real(family, mode)

        def run(*args, generator, **kwargs):
            seeds.append(generator.initial_seed())
            return sampler(*args, generator=generator, **kwargs)

        return run

    import tstitch.experiments.evaluate as evaluate

    monkeypatch.setattr(families, "official_sampler", recording)
    # where evaluate looks the sampler up once it imports it at the top (the import-circle work, issue 20)
    monkeypatch.setattr(evaluate, "official_sampler", recording, raising=False)
    for name in ("a", "b"):
        run_evaluate(config(tmp_path / name, sweep=False, fractions=(0.5,), num_samples=6, batch_size=3,
                            num_steps=2, mode="official", metric="none"), progress=False)
    assert len(seeds) == 4 and len(set(seeds[:2])) == 2  # two shards, two streams
    assert seeds[:2] == seeds[2:]  # the same on a rerun


# -- processes --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_mid_write_then_resumed_gives_the_uninterrupted_bytes(baseline, tmp_path, caplog):
    out = ["--out", str(tmp_path)]
    killed = run_cli([*ARGS, *out], env={CRASH_ENV: "shard:3"})  # dies writing its third shard
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr
    assert len(list(tmp_path.rglob("shard-*.npz"))) == 2 and len(list(tmp_path.rglob(".shard-*tmp*"))) == 1
    killed = run_cli([*ARGS, *out], env={CRASH_ENV: "samples:2"})  # then while merging the second schedule
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr
    assert "7 shard(s) to sample, 2 already done" in killed.stderr
    assert len(list(tmp_path.glob("*/samples.npz"))) == 1 and len(list(tmp_path.glob("*/.samples.npz*tmp*"))) == 1
    # the resume that finishes needs no process of its own (the killed runs did)
    with caplog.at_level(logging.INFO, logger="tstitch.experiments.evaluate"):
        run_evaluate(config(tmp_path), progress=False)
    assert "0 shard(s) to sample" in caplog.text
    assert digests(tmp_path) == digests(baseline)
    assert not list(tmp_path.rglob(".*tmp*"))


@pytest.mark.slow
def test_two_torchrun_processes_with_gloo_give_the_one_process_bytes(baseline, tmp_path):
    result = run_cli([*ARGS, "--out", str(tmp_path)], torchrun=2)
    assert result.returncode == 0, result.stderr
    assert "process 0 of 2 (gloo, cpu)" in result.stderr
    assert digests(tmp_path) == digests(baseline)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert json.loads((tmp_path / "results.json").read_text())["processes"] == 2
    assert [r["fid"] for r in rows] == pytest.approx([r["fid"] for r in json.loads(
        (baseline / "results.json").read_text())["rows"]])
    assert "schedule" in result.stdout and result.stdout.count("digits-s:") == 3  # one table, from process 0
    refused = run_cli([*ARGS, "--out", str(tmp_path), "--steps", "4"], torchrun=2)  # both processes stop
    assert refused.returncode != 0 and refused.stderr.count("holds samples made with other settings") == 1


# -- refused inputs and the folder's table (issue 14) -------------------------------------------------------------


def test_one_more_fraction_into_a_finished_sweep_keeps_the_sweeps_rows(baseline, tmp_path, capsys):
    import shutil

    from tstitch import cli

    out = tmp_path / "sweep"
    shutil.copytree(baseline, out)
    pareto = (out / "pareto.png").read_bytes()
    code = cli.main(["evaluate", *[a for a in ARGS if a not in ("--sweep", "--sweep-step", "0.5")],
                     "--fractions", "0.25", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads((out / "results.json").read_text())
    assert [r["fractions"] for r in results["rows"]] == [[0.0], [0.25], [0.5], [1.0]]
    before = json.loads((baseline / "results.json").read_text())["rows"]
    assert sorted(results["earlier_schedules"]) == sorted(r["schedule"] for r in before)
    assert (out / "results.csv").read_text().count("\n") == 5
    assert (out / "pareto.png").read_bytes() != pareto  # redrawn with the new point
    assert "the results also list 3 schedule(s) sampled earlier" in printed
    by_fraction = {tuple(r["fractions"]): r for r in results["rows"]}
    for row in before:  # the sweep's rows are the same numbers
        assert by_fraction[tuple(row["fractions"])]["fid"] == row["fid"]


def test_a_folder_made_before_the_outputs_list_resumes_and_a_users_file_is_refused(baseline, tmp_path, capsys):
    import shutil

    from tstitch import cli

    out = tmp_path / "old"
    shutil.copytree(baseline, out)  # written by the library: no tstitch-outputs.json
    assert cli.main(["evaluate", *ARGS, "--png", "--out", str(out)]) == 0
    assert digests(out) == digests(baseline)
    capsys.readouterr()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("my table")
    assert cli.main(["evaluate", *ARGS, "--out", str(mine)]) == 2
    assert "holds results.csv, which tstitch did not write" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["results.csv"]


def test_threads_default_to_one_for_tiny_models_and_follow_the_flag(tmp_path, capsys):
    from tstitch import cli

    args = ["--preset", "digits", "--fractions", "0.5", "--samples", "4", "--steps", "2", "--batch-size", "4",
            "--device", "cpu", "--metric", "none", "--no-progress"]
    torch.set_num_threads(2)
    try:
        assert cli.main(["evaluate", *args, "--out", str(tmp_path / "a")]) == 0
        assert json.loads((tmp_path / "a" / "results.json").read_text())["torch_threads"] == 1
        assert cli.main(["evaluate", *args, "--threads", "2", "--out", str(tmp_path / "b")]) == 0
        assert json.loads((tmp_path / "b" / "results.json").read_text())["torch_threads"] == 2
    finally:
        torch.set_num_threads(1)
