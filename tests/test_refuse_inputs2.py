# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Issue 23's further classes of bad input: output paths, a full disk, checkpoints, evaluation folders and the
torchrun environment (docs/refused-inputs.md names each row's test). Each was reproduced on the code before the
fix; the docstrings say what happened then."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import processes
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import tiny_dit

from tstitch import cli
from tstitch.models.checkpoints import load_dit, save_dit_safetensors
from tstitch.outputs import OUTPUTS_MANIFEST
from tstitch.utils import staged_writes

COMMANDS_WITH_OUT = ["sample", "evaluate", "demo", "bench", "train-zoo"]


class ModelsLoaded(Exception):
    """Raised in place of loading a model: a refusal must come before it."""


@pytest.fixture
def no_models(monkeypatch):
    """Every entry point that loads models raises :class:`ModelsLoaded`."""
    import tstitch.experiments.evaluate
    import tstitch.models.loading

    def loaded(*args, **kwargs):
        raise ModelsLoaded

    for module, name in [(tstitch.models.loading, "load_preset"), (tstitch.models.loading, "load_models"),
                         (tstitch.experiments.evaluate, "resolve_models")]:
        monkeypatch.setattr(module, name, loaded)


def one_error_line(err: str, command: str) -> str:
    """The error line of a refusal (argparse prints its usage above it); no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"tstitch {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


# -- output paths -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS_WITH_OUT)
@pytest.mark.parametrize("kind, out, message", [
    ("component of 300 characters", "a" * 300, "a component of it is 300 bytes long"),
    ("path of 5,000 characters", "/".join(["b" * 99] * 50), "leaves room for the files written inside it"),
    ("name that is not UTF-8", "out\udcff", r"is not valid UTF-8 \(byte 0xff"),
])
def test_output_paths_the_system_cannot_take_are_refused_before_any_work(tmp_path, monkeypatch, capsys, no_models,
                                                                         command, kind, out, message):
    """Before: a 300-character component or a 5,000-character path raised a traceback (OSError: File name too
    long) from the --out check; a non-UTF-8 --out ran the whole sample and then failed printing its path where
    stdout is strict UTF-8 (a real UTF-8 locale)."""
    monkeypatch.chdir(tmp_path)
    assert cli.main([command, "--out", out]) == 2
    line = one_error_line(capsys.readouterr().err, command)
    assert "argument --out:" in line and re.search(message, line), line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--plan", "--checkpoint-dir"])
def test_path_flags_name_a_path_the_system_cannot_look_up(tmp_path, capsys, no_models, flag):
    """Before: a too-long name was a traceback (OSError from Path.exists); a loop of links was 'does not exist'."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for value, reason in [("c" * 300, "File name too long"), (str(tmp_path / "loop"), "Too many levels of symbolic")]:
        assert cli.main(["sample", "--preset", "digits", flag, value, "--out", str(tmp_path / "out")]) == 2
        line = one_error_line(capsys.readouterr().err, "sample")
        assert f"argument {flag}:" in line and reason in line


def test_a_full_disk_on_the_second_run_leaves_the_first_runs_files_whole(tmp_path, monkeypatch, capsys):
    """Before: the files written before the disk filled were already replaced (sample-000.png of the second run
    beside sample-001.png of the first). Now every file is written under a temporary name and all are renamed at
    the end: a full disk leaves the first run's files byte for byte, and no temporary file."""
    import PIL.Image

    out = tmp_path / "out"
    args = ["sample", "--preset", "digits", "--num-images", "3", "--steps", "2", "--no-progress", "--no-warmup",
            "--out", str(out)]
    assert cli.main([*args, "--seed", "1"]) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.name != OUTPUTS_MANIFEST}
    real_save, saved = PIL.Image.Image.save, []

    def disk_fills(image, target, *rest, **options):
        saved.append(target)
        if len(saved) == 2:  # the second image: half of it fits, then the disk is full
            Path(target).write_bytes(b"\x89PNG\r\n\x1a\n half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(image, target, *rest, **options)

    monkeypatch.setattr(PIL.Image.Image, "save", disk_fills)
    capsys.readouterr()
    assert cli.main([*args, "--seed", "2"]) == 2
    assert "No space left on device" in one_error_line(capsys.readouterr().err, "sample")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != OUTPUTS_MANIFEST} == first
    assert json.loads((out / OUTPUTS_MANIFEST).read_text())["files"]  # the list is whole JSON
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_staged_writes_rename_all_or_nothing(tmp_path):
    from tstitch.utils import atomic_write

    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(OSError), staged_writes():
        atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("new a"))
        atomic_write(tmp_path / "b.txt", lambda tmp: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old a"
    with staged_writes():
        atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("new a"))
        assert (tmp_path / "a.txt").read_text() == "old a"  # renamed when the block ends
    assert (tmp_path / "a.txt").read_text() == "new a" and len(list(tmp_path.iterdir())) == 1


# -- checkpoints ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dit_file(tmp_path_factory):
    path = save_dit_safetensors(tiny_dit(0), tmp_path_factory.mktemp("dit") / "dit.safetensors")
    with safe_open(str(path), "pt") as handle:
        return path, handle.metadata()


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
@pytest.mark.parametrize("which", ["one tensor", "every tensor"])
def test_integer_or_bool_weights_are_refused_naming_the_tensor(dit_file, tmp_path, dtype, which):
    """Before: loaded (cast silently into the float parameters: a model of zeros and ones)."""
    path, metadata = dit_file
    key = "transformer_blocks.0.attn1.to_q.weight"
    tensors = {k: (v.to(dtype) if which == "every tensor" or k == key else v) for k, v in load_file(str(path)).items()}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(ValueError, match=rf"bad.safetensors: model weights are floating-point tensors, but .* {name}"):
        load_dit(tmp_path / "bad.safetensors")


def test_a_config_asking_for_a_huge_model_is_refused_before_anything_is_built(dit_file, tmp_path, monkeypatch):
    """Before: a 40 KB file whose metadata config said sample_size 40000 made tstitch allocate the position table
    of 4e8 positions (12.8 GB at this width) before looking at a tensor (19 s, then out of memory)."""
    import diffusers

    path, metadata = dit_file
    built = []
    real_init = diffusers.DiTTransformer2DModel.__init__

    @functools.wraps(real_init)  # keeps the signature that load_dit reads the config's fields from
    def counted_init(self, *args, **kwargs):
        built.append(kwargs)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.DiTTransformer2DModel, "__init__", counted_init)
    for field, value, message in [("sample_size", 40000, r"sample_size must be an integer in \[1, 512\] .*got 40000"),
                                  ("sample_size", "4", "sample_size must be an integer"),
                                  ("num_layers", 10_000, "the config says num_layers=10000, the file has 1 blocks"),
                                  ("num_embeds_ada_norm", 10**9, "embedding_table.weight is"),
                                  ("attention_head_dim", 4096, "pos_embed.proj.weight is")]:
        config = {**json.loads(metadata["tstitch_dit_config"]), field: value}
        save_file(load_file(str(path)), str(tmp_path / "bomb.safetensors"),
                  metadata={**metadata, "tstitch_dit_config": json.dumps(config)})
        with pytest.raises(ValueError, match=message):
            load_dit(tmp_path / "bomb.safetensors")
    assert built == []  # no model was built from any of them
    assert load_dit(path).config.sample_size == 4 and len(built) == 1


def test_a_fifo_and_truncated_files_with_a_safetensors_name(dit_file, tmp_path):
    """Before: a FIFO was 'not found: no such file' (no hang); truncated files were refused already."""
    from tstitch.models.ldm_checkpoints import load_ldm_checkpoint

    os.mkfifo(tmp_path / "fifo.safetensors")
    with processes.deadline(20):
        with pytest.raises(ValueError, match="fifo.safetensors' is not a plain file"):
            load_dit(tmp_path / "fifo.safetensors")
        with pytest.raises(ValueError, match="fifo.safetensors' is not a plain file"):
            load_ldm_checkpoint(tmp_path / "fifo.safetensors")
        assert cli.main(["sample", "--model", str(tmp_path / "fifo.safetensors"), "--model", "digits-xl",
                         "--out", str(tmp_path / "out")]) == 2
    data = dit_file[0].read_bytes()
    for size in (6, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.safetensors").write_bytes(data[:size])
        with pytest.raises(ValueError, match="cut.safetensors: not a readable safetensors file"):
            load_dit(tmp_path / "cut.safetensors")


def test_a_lightning_ckpt_with_a_payload_nested_in_its_globals_is_refused_naming_it(tmp_path, monkeypatch):
    """A CompVis .ckpt whose Lightning callback (read as an inert placeholder) carries a nested object that
    would run ``os.system`` when unpickled: refused naming the global; nothing runs (it was so already)."""
    from ldm_reference import UNetSpec, random_unet_state_dict

    from tstitch.models.ldm_checkpoints import load_ldm_checkpoint

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class ModelCheckpoint:
        def __reduce__(self):
            return (ModelCheckpoint, (Payload(),))

    module = types.ModuleType("pytorch_lightning.callbacks")
    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    monkeypatch.setitem(sys.modules, "pytorch_lightning", types.ModuleType("pytorch_lightning"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    weights = {"model.diffusion_model." + k: v for k, v in random_unet_state_dict(UNetSpec(context_dim=16)).items()}
    torch.save({"state_dict": weights, "callbacks": {"checkpoint": ModelCheckpoint()}}, tmp_path / "ldm.ckpt")
    monkeypatch.delitem(sys.modules, module.__name__)
    monkeypatch.delitem(sys.modules, "pytorch_lightning")
    with pytest.raises(ValueError, match=r"ldm.ckpt: the checkpoint holds Python objects .* \((posix|os|nt)\.system\)"):
        load_ldm_checkpoint(tmp_path / "ldm.ckpt")
    assert not marker.exists()


# -- the torchrun environment ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("environment, message", [
    ({"RANK": "1"}, "RANK=1 is in the environment but WORLD_SIZE is not"),
    ({"RANK": "abc"}, "RANK='abc' in the environment is not an integer"),
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc' in the environment is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 in the environment is outside WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is in the environment but RANK is not"),
    ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
])
def test_a_rank_left_in_the_environment_is_refused_before_any_work(tmp_path, monkeypatch, capsys, no_models,
                                                                   environment, message):
    """Before: RANK=1 without WORLD_SIZE loaded the models, sampled shards as 'process 1 of 1' and ended in a
    TypeError traceback; RANK=abc said "invalid literal for int() with base 10: 'abc'"."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["evaluate", "--preset", "digits", "--out", str(tmp_path / "out")]) == 2
    assert message in one_error_line(capsys.readouterr().err, "evaluate")
    assert not (tmp_path / "out").exists()


# -- evaluation folders -----------------------------------------------------------------------------------------------

# Three schedules (fractions 0, 0.5, 1 of digits-s before digits-xl), 60 samples in 12 shards of 5 each.
EVALUATE = ["evaluate", "--preset", "digits", "--sweep", "--sweep-step", "0.5", "--samples", "60", "--batch-size", "5",
            "--steps", "3", "--metric", "digits", "--device", "cpu", "--no-progress"]
SLUGS = ["digits-s-0_digits-xl-1", "digits-s-0.5_digits-xl-0.5", "digits-s-1_digits-xl-0"]


def samples_digests(out: Path) -> dict[str, str]:
    return {slug: hashlib.sha256((out / slug / "samples.npz").read_bytes()).hexdigest() for slug in SLUGS}


def scores(out: Path) -> list[tuple]:
    """The rows' metrics (timings left out: they differ from run to run)."""
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [(row["schedule"], row["fid"], row["inception_score"], row["accuracy"], row["precision"], row["recall"])
            for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    assert cli.main([*EVALUATE, "--out", str(out)]) == 0
    return out


def test_a_second_evaluate_on_a_folder_being_written_is_refused_in_one_line(tmp_path, capsys, no_models):
    """Before: both ran, each sampling every shard and racing the other's merges, temporaries and reports (a
    run could delete the other's temporary file under it). Now process 0 holds a lock on the folder."""
    from tstitch.experiments.evaluation_files import FolderLock

    holder = FolderLock(tmp_path / "out")  # another evaluate, writing there (a second descriptor: flock conflicts)
    holder.acquire()
    try:
        assert cli.main([*EVALUATE, "--out", str(tmp_path / "out")]) == 2
        line = one_error_line(capsys.readouterr().err, "evaluate")
        assert "another tstitch evaluate is writing to" in line
    finally:
        holder.release()
    with pytest.raises(ModelsLoaded):  # free again: the next one goes on to load its models
        cli.main([*EVALUATE, "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [OUTPUTS_MANIFEST]


def test_a_damaged_finished_folder_is_found_by_checksum_and_redone(uninterrupted, tmp_path, caplog, capsys):
    """Before: 64 flipped bytes in a finished samples.npz went unnoticed (its metrics.json was reused), or,
    without metrics.json, crashed with 'Bad CRC-32' after the work; a truncated samples.json crashed in the
    report. Now samples.json records the sha256 of samples.npz: the damaged schedule is sampled and scored
    again, with a warning, and the results are the uninterrupted run's."""
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    npz = out / SLUGS[1] / "samples.npz"
    data = bytearray(npz.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(byte ^ 0xFF for byte in data[middle:middle + 64])
    npz.write_bytes(bytes(data))
    info = out / SLUGS[2] / "samples.json"
    info.write_text(info.read_text()[:40])  # truncated
    (out / SLUGS[0] / "metrics.json").write_text('{"key": ')  # truncated
    with caplog.at_level(logging.WARNING):
        assert cli.main([*EVALUATE, "--out", str(out)]) == 0
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    assert f"{npz} is damaged (Bad CRC-32" in warnings  # a small archive: the zip's own CRC finds it first
    assert "metrics.json is unreadable" in warnings
    assert samples_digests(out) == samples_digests(uninterrupted)
    assert scores(out) == scores(uninterrupted)

    (out / "manifest.json").write_text((out / "manifest.json").read_text()[:100])  # a truncated manifest
    capsys.readouterr()
    assert cli.main([*EVALUATE, "--out", str(out)]) == 2
    assert "manifest.json is unreadable" in one_error_line(capsys.readouterr().err, "evaluate")


def test_flipped_bytes_that_the_zip_does_not_check_are_found_by_the_sha256(tmp_path, caplog):
    """In an archive larger than one read of the zip stream, bytes flipped after the first 4 KB keep the shapes
    readable: only the sha256 that samples.json records finds them."""
    import numpy as np

    from tstitch.experiments.evaluation_files import SAMPLES_CHECKSUM, file_sha256, samples_ok, write_samples_npz

    images = np.random.default_rng(0).integers(0, 256, (200, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "shard.npz", images=images)
    npz = tmp_path / "samples.npz"
    write_samples_npz(npz, [tmp_path / "shard.npz"], np.arange(200), 200, (8, 8, 1))
    (tmp_path / "samples.json").write_text(json.dumps({SAMPLES_CHECKSUM: file_sha256(npz)}))
    assert samples_ok(npz, 200, (8, 8, 1))
    data = bytearray(npz.read_bytes())
    data[8000:8064] = bytes(byte ^ 0xFF for byte in data[8000:8064])
    npz.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert not samples_ok(npz, 200, (8, 8, 1))
    assert "samples.npz does not match the sha256 recorded in samples.json" in caplog.text


def wait_for(condition, process, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, "the run ended before the moment to kill it came"
        assert time.monotonic() < end, "the moment to kill the run never came"
        time.sleep(0.005)


@pytest.mark.slow
def test_kill_9_at_several_moments_then_resume_gives_the_uninterrupted_results(uninterrupted, tmp_path, capsys):
    """kill -9 while the shards are sampled (with a second evaluate refused meanwhile: two processes at once),
    then while the schedules are merged and scored, then a resume: the samples' bytes and the scores of an
    uninterrupted run, and no temporary file left."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "tstitch.cli", *EVALUATE, "--out", str(out)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with processes.child(argv, env=environment, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL) as run:
        wait_for(lambda: len(list(out.glob("*/shards/shard-*.npz"))) >= 3, run)
        assert cli.main([*EVALUATE, "--out", str(out)]) == 2  # a second evaluate, while the first is writing
        assert "another tstitch evaluate is writing to" in one_error_line(capsys.readouterr().err, "evaluate")
        os.kill(run.pid, signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
    with processes.child(argv, env=environment, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL) as run:
        wait_for(lambda: any((out / slug / "samples.npz").exists() for slug in SLUGS), run)
        os.kill(run.pid, signal.SIGKILL)  # merging or scoring
        assert run.wait() == -signal.SIGKILL
    assert not (out / "results.json").exists()
    assert cli.main([*EVALUATE, "--out", str(out)]) == 0
    assert samples_digests(out) == samples_digests(uninterrupted)
    assert scores(out) == scores(uninterrupted)
    assert not list(out.rglob(".*tmp*"))


# -- plan files -------------------------------------------------------------------------------------------------------


@pytest.fixture
def bad_plans(tmp_path):
    (tmp_path / "nested.json").write_text("[" * 100_000 + "]" * 100_000)  # 200 KB
    (tmp_path / "long.json").write_text(json.dumps({"version": 1, "num_models": 2,
                                                    "sequence": [0] * 2000 + [1] * 3000}))
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("nested.json", "not a plan (JSON nested too deeply)"),
    ("long.json", "sequence has 5,000 steps; a plan has at most 1,000"),
    ("fifo.json", "is not a plain file"),
    ("loop.json", "Too many levels of symbolic links"),
])
def test_bad_plan_files_are_refused_by_name_before_any_work(bad_plans, capsys, no_models, name, message):
    """Before: 100,000-deep JSON was a RecursionError traceback; a 5,000-step plan was refused only after the
    models loaded, as 'num_inference_steps ... got 5000' (not naming --plan); a FIFO was 'a folder' (and
    load_plan called it missing); a loop of links 'does not exist'."""
    from tstitch.planfile import load_plan

    with processes.deadline(20):
        with pytest.raises(ValueError, match=re.escape(message)):
            load_plan(bad_plans / name)
        for command in ("sample", "evaluate"):
            assert cli.main([command, "--preset", "digits", "--plan", str(bad_plans / name),
                             "--out", str(bad_plans / "out")]) == 2
            line = one_error_line(capsys.readouterr().err, command)
            assert "argument --plan:" in line and message in line
    assert not (bad_plans / "out").exists()
