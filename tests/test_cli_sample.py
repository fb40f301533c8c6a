# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch sample`` end to end, in-process: the digits preset offline, own models by path, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_presets import save_sd, save_unet

from tstitch import cli

TIME = r"([0-9.]+) s"


def run_cli(*argv: str) -> int:
    return cli.main(["sample", *argv])


def test_digits_preset_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli("--preset", "digits", "--fraction", "0.4", "--compare", "--out", str(out), "--no-progress")
    printed = capsys.readouterr().out
    assert code == 0, printed

    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["grid.png", "summary.json", "tstitch-outputs.json",
                            *[f"sample-{i:03d}.png" for i in range(10)],
                            *[f"large-{i:03d}.png" for i in range(10)]])
    from PIL import Image

    with Image.open(out / "sample-000.png") as image:
        assert image.size == (64, 64)  # the 8x8 digits, enlarged pixel for pixel
    assert not list(out.glob(".*"))  # no temporary files left behind

    assert "preset 'digits': digits-s 0.4, digits-xl 0.6" in printed
    assert "ddim 25 steps, mode diffusers, guidance 1, 10 images, seed 0, cpu float32, 1 thread" in printed
    stitched = re.search(rf"stitched: +digits-s 10 steps \+ digits-xl 15 steps: {TIME}", printed)
    alone = re.search(rf"digits-xl alone: digits-xl 25 steps: {TIME}", printed)
    speedup = re.search(r"speed-up: +([0-9.]+)x end to end", printed)
    assert stitched and alone and speedup, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stitched"]["steps_per_model"] == [10, 15]
    assert summary["baseline"]["steps_per_model"] == [25]
    assert float(stitched.group(1)) == pytest.approx(summary["stitched"]["seconds"], abs=6e-3)
    assert float(alone.group(1)) == pytest.approx(summary["baseline"]["seconds"], abs=6e-3)
    assert float(speedup.group(1)) == pytest.approx(summary["speedup"], abs=6e-3)


def test_own_models_by_name_with_the_published_sampler(tmp_path, capsys):
    code = run_cli("--model", "digits-s", "--model", "digits-b", "--model", "digits-xl", "--fractions", "0.3", "0.3",
                   "--mode", "official", "--scheduler", "ddpm", "--steps", "10", "--class-labels", "4", "2",
                   "--num-images", "3", "--batch-size", "2", "--out", str(tmp_path), "--no-progress", "--no-warmup")
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "digits-s -> digits-b -> digits-xl: digits-s 0.3, digits-b 0.3, digits-xl 0.4" in printed
    assert "digits-s 3 steps + digits-b 3 steps + digits-xl 4 steps" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["class_labels"] == [4, 2, 4]
    assert summary["settings"]["scheduler"] == "ddpm" and summary["baseline"] is None
    assert len(list(tmp_path.glob("sample-*.png"))) == 3


def test_stable_diffusion_folders(tmp_path, capsys):
    large = save_sd(tmp_path / "sd" / "pipe")
    small = save_unet(tmp_path / "small-unet", seed=2)
    code = run_cli("--model", str(small), "--model", str(large), "--prompt", "a cat", "--steps", "5",
                   "--scheduler", "unipc", "--compare", "--out", str(tmp_path / "out"), "--no-progress")
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "small-unet 2 steps + pipe 3 steps" in printed and "pipe alone: pipe 5 steps" in printed
    assert "unipc 5 steps, mode diffusers, guidance 7.5, 1 images" in printed
    assert (tmp_path / "out" / "large-000.png").is_file()


def test_help_is_a_guide(capsys):
    assert cli.main(["sample", "--help"]) == 0
    text = capsys.readouterr().out
    for needle in ("examples:", "--preset digits --fraction 0.4 --compare", "--list-presets", "--checkpoint-dir",
                   "dit_s_256.pt", "grid.png"):
        assert needle in text


def test_list_presets(capsys):
    assert run_cli("--list-presets") == 0
    text = capsys.readouterr().out
    assert "dit-s-xl" in text and "facebook/DiT-XL-2-256" in text and "segmind/SSD-1B" in text


def test_hub_preset_offline_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TSTITCH_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    code = run_cli("--preset", "dit-s-xl", "--fraction", "0.4", "--offline", "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tstitch sample: error: preset 'dit-s-xl' (offline) cannot be loaded")
    assert "dit_s_256.pt" in err and "'facebook/DiT-XL-2-256'" in err and "hf download" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        ((), "choose models: --preset NAME"),
        (("--preset", "digits-xxl"), "argument --preset: unknown preset 'digits-xxl' \\(did you mean "
                                     "'digits-s-b-xl'\\?\\); known: dit-s-xl"),
        (("--preset", "digits", "--fraction", "1.5"), "argument --fraction: must be in \\[0, 1\\], got 1.5"),
        (("--preset", "digits", "--fractions", "0.2", "0.3"), "2 models take one fraction"),
        (("--preset", "digits-s-b-xl", "--fraction", "0.4"), "3 models take 2 fractions"),
        (("--preset", "digits", "--fractions", "0.7", "0.6"), "sum to 1.3, more than 1"),
        (("--preset", "digits", "--prompt", "a cat"), "class-conditional: give --class-labels"),
        (("--preset", "digits", "--class-labels", "10"), "class labels must be in \\[0, 9\\]"),
        (("--preset", "digits", "--scheduler", "fastest"), "unknown scheduler 'fastest'; known: ddim"),
        (("--preset", "digits", "--steps", "0"), "argument --steps: must be an integer in \\[1, 1000\\], got 0"),
        (("--preset", "digits", "--threads", "0"), "argument --threads: must be an integer in \\[1, 1024\\], got 0"),
        (("--preset", "digits", "--mode", "official", "--scheduler", "heun"), "published DiT sampler"),
        (("--model", "digits-xl"), "at least two --model values"),
        (("--model", "nowhere/at/all.txt", "--model", "digits-xl"), "not found"),
        (("--preset", "digits", "--device", "cuda:0"), "CUDA is not available"),
    ],
)
def test_bad_input(tmp_path, capsys, argv, message):
    if "cuda" in " ".join(argv):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    code = run_cli(*argv, "--out", str(tmp_path / "out"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, err), err


def test_unwritable_output_folder_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    import tstitch.models.loading

    def fail(*args, **kwargs):
        raise AssertionError("models were loaded before the output folder was checked")

    monkeypatch.setattr(tstitch.models.loading, "load_preset", fail)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = run_cli("--preset", "digits", "--out", str(blocker / "out"))
    assert code == 2
    assert "output folder" in capsys.readouterr().err
    assert Path(blocker).read_text() == "not a folder"
