# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What the ``tstitch`` command refuses, and how: every case in-process through ``cli.main`` (exit code 2, a
message naming the flag, nothing loaded or written), the output-folder convention, file modes, strict JSON,
and Ctrl-C (one subprocess). The table of these classes is ``docs/refused-inputs.md``."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import processes
import pytest
import torch

from tstitch import cli
from tstitch.outputs import OUTPUTS_MANIFEST, OutputFolder
from tstitch.utils import atomic_write, write_json

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command starts loading, training or sampling."""
    import tstitch.bench
    import tstitch.experiments.demo
    import tstitch.experiments.evaluate
    import tstitch.experiments.generate
    import tstitch.models.loading
    import tstitch.zoo.train

    def fail(*args, **kwargs):
        raise AssertionError("work started before the input was refused")

    for module, name in ((tstitch.models.loading, "load_preset"), (tstitch.models.loading, "load_models"),
                         (tstitch.experiments.generate, "generate"), (tstitch.experiments.demo, "run_demo"),
                         (tstitch.experiments.evaluate, "run_evaluate"), (tstitch.zoo.train, "train_zoo"),
                         (tstitch.bench, "run_bench")):
        monkeypatch.setattr(module, name, fail)


def refused(capsys, *argv: str) -> str:
    """Run ``tstitch argv``; assert exit code 2 and no traceback; return stderr."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["sample", "demo", "evaluate", "train-zoo", "bench"])
def test_every_command_documents_overwrite(capsys, command):
    assert cli.main([command, "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out


# -- case 3: every float flag of every command is finite and in range ---------------------------------------------

FLOAT_FLAGS = [
    ("sample", "--guidance", ("--preset", "digits")),
    ("sample", "--fraction", ("--preset", "digits")),
    ("sample", "--fractions", ("--preset", "digits-s-b-xl")),
    ("demo", "--guidance", ()),
    ("evaluate", "--guidance", ("--preset", "digits")),
    ("evaluate", "--fractions", ("--preset", "digits")),
    ("evaluate", "--sweep-step", ("--preset", "digits", "--sweep")),
    ("bench", "--fractions", ()),
]


@pytest.mark.parametrize("command, flag, base", FLOAT_FLAGS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-0.5", "101", "x"])
def test_every_float_flag_is_finite_and_in_range(capsys, no_work, tmp_path, command, flag, base, value):
    err = refused(capsys, command, *base, f"{flag}={value}", "--out", str(tmp_path / "out"))
    assert f"argument {flag}: must be" in err
    assert not (tmp_path / "out").exists()


def test_guidance_ranges_name_the_allowed_interval(capsys, no_work, tmp_path):
    assert "must be a finite number in [0, 100], got nan" in refused(
        capsys, "sample", "--preset", "digits", "--guidance", "nan", "--out", str(tmp_path))
    assert "must be in [1, 100], got 0.5" in refused(capsys, "demo", "--guidance", "0.5", "--out", str(tmp_path))
    assert "must be in (0, 0.5], got 0" in refused(
        capsys, "evaluate", "--preset", "digits", "--sweep", "--sweep-step", "0", "--out", str(tmp_path))


def test_json_is_strict_non_finite_values_become_null(tmp_path):
    path = write_json(tmp_path / "x.json", {"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}})

    def no_constants(name):
        raise AssertionError(f"{name} in JSON")

    assert json.loads(path.read_text(), parse_constant=no_constants) == {"a": None, "b": [None, 1.5],
                                                                          "c": {"d": None}}


# -- counts, seeds, devices, names, paths, combinations ----------------------------------------------------------

BAD = [
    # counts: 0, negative, huge, not a number
    (("sample", "--preset", "digits", "--steps", "0"), "argument --steps: must be an integer in [1, 1000], got 0"),
    (("sample", "--preset", "digits", "--steps", "100000"), "argument --steps: must be an integer in [1, 1000]"),
    (("sample", "--preset", "digits", "--num-images", "-3"), "argument --num-images: must be an integer in"),
    (("sample", "--preset", "digits", "--num-images", "1000000"), "argument --num-images: must be an integer in"),
    (("sample", "--preset", "digits", "--batch-size", "0"), "argument --batch-size: must be an integer >= 1"),
    (("sample", "--preset", "digits", "--threads", "0"), "argument --threads: must be an integer in [1, 1024]"),
    (("sample", "--preset", "digits", "--class-labels", "-1"), "argument --class-labels: must be an integer >= 0"),
    (("sample", "--preset", "digits", "--size", "100"), "--size must be a multiple of 8"),
    (("sample", "--preset", "digits", "--steps", "ten"),
     "argument --steps: must be an integer in [1, 1000], got 'ten'"),
    (("demo", "--samples", "1"), "argument --samples: must be an integer in [2, 1797], got 1"),
    (("demo", "--samples", "5000"), "argument --samples: must be an integer in [2, 1797], got 5000"),
    (("demo", "--steps", "0"), "argument --steps: must be an integer in [1, 1000], got 0"),
    (("train-zoo", "--steps", "0"), "argument --steps: must be an integer in [1, 100000], got 0"),
    (("train-zoo", "--steps", "-5"), "argument --steps: must be an integer in [1, 100000], got -5"),
    (("evaluate", "--preset", "digits", "--samples", "1"), "argument --samples: must be an integer in [2,"),
    (("evaluate", "--preset", "digits", "--batch-size", "0"), "argument --batch-size: must be an integer in"),
    (("evaluate", "--preset", "digits", "--threads", "0"), "argument --threads: must be an integer in [1, 1024]"),
    (("evaluate", "--preset", "digits", "--pr-k", "0"), "argument --pr-k: must be an integer in [1, 1000]"),
    (("evaluate", "--preset", "digits", "--is-splits", "0"), "argument --is-splits: must be an integer in [1, 1000]"),
    (("bench", "--reps", "0"), "argument --reps: must be an integer in [1, 1000], got 0"),
    (("bench", "--images", "0"), "argument --images: must be an integer in [1, 10000], got 0"),
    (("bench", "--steps", "-1"), "argument --steps: must be an integer in [1, 1000], got -1"),
    # seeds: 64 bits and beyond, negative
    (("sample", "--preset", "digits", "--seed", str(2**64)), "argument --seed: must be an integer in [0, 2**63 - 1]"),
    (("demo", "--seed", "-1"), "argument --seed: must be an integer in [0, 2**63 - 1], got -1"),
    (("evaluate", "--preset", "digits", "--seed", str(2**63)), "argument --seed: must be an integer in [0, 2**63"),
    (("train-zoo", "--seed", str(2**70)), "argument --seed: must be an integer in [0, 2**63 - 1]"),
    (("bench", "--seed", str(2**64)), "argument --seed: must be an integer in [0, 2**63 - 1]"),
    # devices that are not devices
    (("sample", "--preset", "digits", "--device", "gpu0"), "argument --device: 'gpu0' is not a torch device"),
    (("demo", "--device", "tpu"), "argument --device: 'tpu' is not a torch device"),
    # unknown names, with a hint
    (("sample", "--preset", "digitz"), "argument --preset: unknown preset 'digitz' \\(did you mean 'digits'\\?\\)"),
    (("sample", "--preset", "digits", "--scheduler", "eulr"), "unknown scheduler 'eulr' \\(did you mean 'euler'\\?\\)"),
    (("evaluate", "--preset", "sd15-bksdm-tiny"), "unknown class-conditional preset 'sd15-bksdm-tiny'"),
    (("evaluate", "--preset", "digits", "--scheduler", "fastest"), "unknown scheduler 'fastest'; known: ddim"),
    (("train-zoo", "--models", "digits-m"), "unknown embedded model 'digits-m' \\(did you mean 'digits-s'\\?\\)"),
    (("bench", "--cases", "digit"), "unknown case 'digit' \\(did you mean 'digits'\\?\\)"),
    # lists: empty, repeated
    (("train-zoo", "--models"), "argument --models: expected at least one argument"),
    (("train-zoo", "--models", "digits-s", "digits-s"), "argument --models: digits-s is given more than once"),
    (("bench", "--fractions", "0.2", "0.2"), "argument --fractions: 0.2 is given more than once"),
    (("demo", "--guidance", "1.5", "1.5"), "argument --guidance: 1.5 is given more than once"),
    (("sample", "--preset", "digits-s-b-xl", "--fractions", "0.7", "0.6"), "--fractions sum to 1.3, more than 1"),
    (("sample", "--preset", "sd15-bksdm-tiny", "--prompt", " "), "argument --prompt: is empty"),
    # combinations that mean nothing, or exclude each other
    (("sample", "--preset", "digits", "--negative-prompt", "blur"), "--negative-prompt applies with --prompt"),
    (("sample", "--preset", "digits", "--fraction", "0.2", "--fractions", "0.2"), "not allowed with argument"),
    (("sample", "--preset", "digits", "--class-labels", "1", "--prompt", "a"), "--class-labels .* or --prompt"),
    (("sample", "--preset", "digits", "--timestep-embedding", "official"), "--timestep-embedding applies to --model"),
    (("evaluate", "--preset", "digits", "--sweep", "--fractions", "0.2"), "not allowed with argument"),
    (("evaluate", "--preset", "digits", "--sweep-step", "0.25"), "--sweep-step applies to --sweep"),
    (("evaluate", "--preset", "digits", "--many-schedules"), "--many-schedules applies to --sweep"),
    (("evaluate", "--preset", "digits", "--sweep", "--sweep-step", "0.3"), "sweep_step must divide 1"),
    (("evaluate", "--preset", "digits", "--metric", "digits", "--inception-weights", __file__),
     "--inception-weights applies to the inception metric"),
    (("bench", "--quick", "--gpu-paper"), "not allowed with argument"),
    (("bench", "--compile-mode", "max-autotune"), "--compile-mode applies with --compile"),
    (("bench", "--offload"), "--offload moves the idle model to the CPU: it needs a CUDA --device"),
    # paths: missing, a file for a folder, a folder for a file
    (("sample", "--preset", "digits", "--checkpoint-dir", "/nowhere/at/all"),
     "argument --checkpoint-dir: .* not exist"),
    (("sample", "--preset", "digits", "--checkpoint-dir", __file__), "argument --checkpoint-dir: .* is a file"),
    (("demo", "--weights", __file__), "argument --weights: .* is a file; give the folder"),
    (("evaluate", "--preset", "digits", "--reference", "/nowhere.npz"), "argument --reference: /nowhere.npz does not"),
    (("evaluate", "--preset", "digits", "--inception-weights", str(Path(__file__).parent)),
     "argument --inception-weights: .* is a folder; give a file"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_is_refused_before_any_work(capsys, no_work, tmp_path, argv, message):
    import re

    out = tmp_path / "out"
    err = refused(capsys, *argv, "--out", str(out))
    assert message in err or re.search(message, err), err
    assert not out.exists()


@NO_CUDA
@pytest.mark.parametrize("command", [("sample", "--preset", "digits"), ("demo",), ("train-zoo",),
                                     ("evaluate", "--preset", "digits"), ("bench",)])
def test_cuda_on_a_machine_without_cuda_is_a_message(capsys, no_work, tmp_path, command):
    err = refused(capsys, *command, "--device", "cuda", "--out", str(tmp_path / "out"))
    assert "argument --device: cuda: CUDA is not available on this machine; use --device cpu" in err


@NO_CUDA
def test_bench_gpu_paper_without_cuda_is_a_message(capsys, no_work, tmp_path):
    assert "--gpu-paper runs on CUDA" in refused(capsys, "bench", "--gpu-paper", "--out", str(tmp_path))


def test_stable_diffusion_without_transformers_names_the_extra(capsys, no_work, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real_find_spec(name, *a))
    err = refused(capsys, "sample", "--preset", "sd15-bksdm-tiny", "--out", str(tmp_path / "out"))
    assert "needs the transformers package" in err and "pip install 'tstitch[sd]'" in err


def test_the_sd_extra_is_declared():
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("transformers") for dep in project["optional-dependencies"]["sd"])
    assert not any(dep.startswith("transformers") for dep in project["dependencies"])


def test_a_sweep_of_too_many_schedules_is_refused_unless_allowed(capsys, no_work, tmp_path):
    from tstitch.experiments.evaluate import EvaluateConfig

    err = refused(capsys, "evaluate", "--preset", "digits", "--sweep", "--sweep-step", "0.0001",
                  "--out", str(tmp_path / "out"))
    assert "10,001 schedules" in err and "--many-schedules" in err
    err = refused(capsys, "evaluate", "--preset", "digits-s-b-xl", "--sweep", "--sweep-step", "0.05",
                  "--out", str(tmp_path / "out"))
    assert "231 schedules" in err
    EvaluateConfig(out_dir=tmp_path, preset="digits", sweep=True, sweep_step=0.0001, max_schedules=None).validate()
    assert not (tmp_path / "out").exists()


# -- case 7: output folders ---------------------------------------------------------------------------------------


def sample(tmp_path: Path, out: Path, *extra: str) -> int:
    return cli.main(["sample", "--preset", "digits", "--steps", "2", "--no-warmup", "--no-progress",
                     "--out", str(out), *extra])


def test_a_users_file_in_out_is_refused_before_work_and_replaced_only_with_overwrite(capsys, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.png").write_text("my own grid")
    (out / "notes.txt").write_text("mine")
    import tstitch.models.loading

    real_load = tstitch.models.loading.load_preset
    monkeypatch.setattr(tstitch.models.loading, "load_preset", lambda *a, **k: pytest.fail("loaded"))
    err = refused(capsys, "sample", "--preset", "digits", "--out", str(out))
    assert f"{out} holds grid.png, which tstitch did not write" in err and "--overwrite" in err
    assert (out / "grid.png").read_text() == "my own grid"
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "notes.txt"]

    monkeypatch.setattr(tstitch.models.loading, "load_preset", real_load)
    assert sample(tmp_path, out, "--num-images", "2", "--overwrite") == 0
    assert (out / "grid.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "notes.txt").read_text() == "mine"  # never touched: not a name sample writes
    listed = json.loads((out / OUTPUTS_MANIFEST).read_text())["files"]
    assert listed == {name: "sample" for name in ("grid.png", "sample-000.png", "sample-001.png", "summary.json")}


def test_rerunning_with_fewer_images_removes_its_own_stale_files(capsys, tmp_path):
    out = tmp_path / "out"
    assert sample(tmp_path, out, "--num-images", "4", "--compare") == 0
    assert len(list(out.glob("large-*.png"))) == 4
    assert sample(tmp_path, out, "--num-images", "2") == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "sample-000.png", "sample-001.png",
                                                     "summary.json", OUTPUTS_MANIFEST]
    assert json.loads((out / "summary.json").read_text())["settings"]["num_images"] == 2
    assert "not from this run" not in printed


def test_files_not_from_this_run_are_named(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample-007.png").write_text("an old image of mine")
    assert sample(tmp_path, out, "--num-images", "2", "--overwrite") == 0
    assert f"note: {out} also holds sample-007.png, not from this run" in capsys.readouterr().out
    assert (out / "sample-007.png").read_text() == "an old image of mine"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_umasks_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == mode


def test_sample_outputs_are_not_0600(capsys, tmp_path):
    old = os.umask(0o002)
    try:
        assert sample(tmp_path, tmp_path / "out", "--num-images", "1") == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert set(modes.values()) == {0o664}, modes


def test_empty_out_and_a_file_as_out_are_refused(capsys, no_work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (("sample", "--preset", "digits"), ("demo",), ("train-zoo",), ("evaluate", "--preset", "digits"),
                    ("bench",)):
        assert "argument --out: is empty" in refused(capsys, *command, "--out", "")
        (tmp_path / "a-file").write_text("x")
        assert "argument --out: " in refused(capsys, *command, "--out", str(tmp_path / "a-file"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("command, name", [(("demo",), "results.csv"), (("demo",), "similarity.png"),
                                           (("train-zoo",), "manifest.json"),
                                           (("train-zoo",), "digits-classifier.safetensors"),
                                           (("evaluate", "--preset", "digits"), "results.json"),
                                           (("evaluate", "--preset", "digits"), "pareto.png"),
                                           (("bench",), "bench.json")])
def test_every_command_refuses_to_replace_a_users_file(capsys, no_work, tmp_path, command, name):
    (tmp_path / name).write_text("mine")
    err = refused(capsys, *command, "--out", str(tmp_path))
    assert f"holds {name}, which tstitch did not write" in err
    assert (tmp_path / name).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_output_folder_lifecycle(tmp_path):
    """begin/finish: an interrupted run's files stay tstitch's; a command removes only its own stale files."""
    (tmp_path / "grid.png").write_text("sample's")
    first = OutputFolder(tmp_path, "sample", names=["grid.png"], patterns=["sample-*.png"], overwrite=True)
    first.check()
    first.begin()
    (tmp_path / "sample-000.png").write_text("1")
    (tmp_path / "sample-001.png").write_text("2")
    # interrupted here: a rerun accepts the files of the run that was cut short
    OutputFolder(tmp_path, "sample", names=["grid.png"], patterns=["sample-*.png"]).check()
    assert first.finish([tmp_path / "grid.png", tmp_path / "sample-000.png", tmp_path / "sample-001.png"]) == []
    other = OutputFolder(tmp_path, "demo", names=["grid.png", "results.csv"])
    other.check()  # grid.png is tstitch's (sample's): demo may replace it
    other.begin()
    assert other.finish([tmp_path / "grid.png"]) == []
    second = OutputFolder(tmp_path, "sample", names=["grid.png"], patterns=["sample-*.png"])
    second.check()
    second.begin()
    assert second.finish([tmp_path / "sample-000.png"]) == ["grid.png"]  # demo's: not from this run
    # sample-001.png was sample's and is stale; grid.png now belongs to demo and stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "sample-000.png", OUTPUTS_MANIFEST]
    assert json.loads((tmp_path / OUTPUTS_MANIFEST).read_text())["files"] == {"grid.png": "demo",
                                                                             "sample-000.png": "sample"}
    (tmp_path / OUTPUTS_MANIFEST).write_text("{broken")
    with pytest.raises(ValueError, match="unreadable"):
        second.check()


# -- case 8: Ctrl-C -----------------------------------------------------------------------------------------------


def test_ctrl_c_in_sample_is_one_line_and_exit_130(capsys, tmp_path, monkeypatch):
    import tstitch.experiments.generate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tstitch.experiments.generate, "generate", interrupted)
    assert cli.main(["sample", "--preset", "digits", "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == f"tstitch sample: interrupted; nothing was written to {tmp_path / 'out'}"


@pytest.mark.slow
def test_ctrl_c_in_evaluate_keeps_finished_shards_and_names_the_resume_command(tmp_path):
    """The one subprocess: SIGINT once the first shard is on disk."""
    from tstitch.experiments.evaluation_files import shard_ok

    out = tmp_path / "run"
    argv = ["evaluate", "--preset", "digits", "--fractions", "0.5", "--samples", "100000", "--steps", "4",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    shards = out / "digits-s-0.5_digits-xl-0.5" / "shards"
    with processes.child([sys.executable, "-m", "tstitch.cli", *argv], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 240
        while not list(shards.glob("shard-*.npz")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last == "tstitch evaluate: interrupted; rerun to resume (finished shards are kept): tstitch " + " ".join(
        argv), stderr
    finished = sorted(shards.glob("shard-*.npz"))
    assert finished and not list(shards.glob(".*"))  # whole shards only, no temporaries
    for number, path in enumerate(finished):
        assert shard_ok(path, range(8 * number, 8 * number + 8), (8, 8, 1))
