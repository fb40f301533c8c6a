# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The LDM-S -> LDM pair end to end: the ``ldm`` family, the ``ldm-s-ldm`` preset (from random-weight files of
the real layouts at tiny widths), ``tstitch sample`` in its modes, the missing-file error, the benchmark case."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import processes
import pytest
import torch
from tiny_models import one_thread  # noqa: F401
from write_ldm_checkpoints import write_ldm_checkpoints

from tstitch.bench import SUITES, build_case
from tstitch.cli import main
from tstitch.experiments.generate import SampleOptions, generate
from tstitch.models.loading import load_preset
from tstitch.sampling import ClassConditionedUNet
from tstitch.sampling.ldm_official import sample_ldm_official

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ldm")
    write_ldm_checkpoints(folder, tiny=True)
    return folder


@pytest.fixture(scope="module")
def loaded(ckpt_dir: Path):
    return load_preset("ldm-s-ldm", checkpoint_dir=ckpt_dir)


def test_the_preset_loads_each_model_with_its_own_embedder_and_the_vq(loaded) -> None:
    from diffusers import VQModel

    assert loaded.family == "ldm" and loaded.names == ["LDM-S", "LDM"]
    assert all(isinstance(m, ClassConditionedUNet) for m in loaded.models)
    assert [m.config.cross_attention_dim for m in loaded.models] == [8, 16]  # widths differ: own conditioning
    assert isinstance(loaded.vae, VQModel) and loaded.latent_scale == 1.0
    assert loaded.num_classes == 1000 and loaded.latent_shape == (4, 32, 32)
    assert loaded.defaults.mode == "official" and loaded.defaults.guidance_scale == 3.0
    assert loaded.defaults.num_steps == 100


def _published(loaded, seed: int, unconditional: str) -> torch.Tensor:
    """What the published sampler gives for generate()'s noise and random stream (drawn as generate draws them)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, *loaded.latent_shape), generator=generator)
    out = sample_ldm_official([m.unet for m in loaded.models], [m.embedder for m in loaded.models], [3], 0.4,
                              num_steps=5, noise=noise, generator=generator, unconditional=unconditional)
    assert out.record.model_per_step() == [0, 0, 1, 1, 1]
    return loaded.decode(out.latents, 1)


@pytest.mark.parametrize("mode, unconditional", [("official", "random"), ("official-zeros", "zeros")])
def test_sample_official_modes_are_the_published_sampler(loaded, mode: str, unconditional: str) -> None:
    options = SampleOptions(fractions=(0.4,), num_steps=5, class_labels=(3,), mode=mode, warmup=False, seed=7)
    result = generate(loaded, options)
    assert result.stitched.steps_per_model == [2, 3] and result.stitched.model_per_step == [0, 0, 1, 1, 1]
    assert torch.equal(result.stitched.images, _published(loaded, 7, unconditional))


def test_sample_with_a_diffusers_scheduler(loaded) -> None:
    options = SampleOptions(fractions=(0.4,), num_steps=5, class_labels=(3,), mode="diffusers", scheduler="ddim",
                            warmup=False)
    result = generate(loaded, options)
    assert result.stitched.model_per_step == [0, 0, 1, 1, 1]
    assert result.stitched.images.shape == (1, 3, 64, 64) and torch.isfinite(result.stitched.images).all()


def test_official_zeros_is_for_the_ldm_family_only() -> None:
    loaded = load_preset("digits")
    with pytest.raises(ValueError, match="mode 'official-zeros' is for the LDM family"):
        generate(loaded, SampleOptions(mode="official-zeros", num_steps=2, warmup=False))


def test_cli_sample_preset_end_to_end(ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = main(["sample", "--preset", "ldm-s-ldm", "--checkpoint-dir", str(ckpt_dir), "--fraction", "0.4",
                 "--steps", "5", "--num-images", "1", "--out", str(out), "--no-progress", "--no-warmup"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "LDM-S 2 steps + LDM 3 steps" in printed and "mode official, guidance 3" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stitched"]["steps_per_model"] == [2, 3] and (out / "sample-000.png").is_file()


@pytest.mark.slow
def test_missing_files_are_named_at_once_without_importing_torch(tmp_path: Path) -> None:
    script = ("import sys; from tstitch.cli import main; code = main(['sample', '--preset', 'ldm-s-ldm', "
              f"'--checkpoint-dir', {str(tmp_path)!r}, '--fraction', '0.4']); "
              "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "TSTITCH_CHECKPOINT_DIR": ""}
    done = processes.run([sys.executable, "-c", script], env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert err.startswith("tstitch sample: error: preset 'ldm-s-ldm' (offline) cannot be loaded")
    for name in ("no file ldm_s.ckpt", "no file ldm.ckpt", "no file vq-f8/model.ckpt",
                 "https://ommer-lab.com/files/latent-diffusion/vq-f8.zip", "https://github.com/NVlabs/T-Stitch",
                 f"searched now: {tmp_path}"):
        assert name in err, err


def test_bench_case_builds_with_tiny_widths() -> None:
    assert "ldm-s-ldm" in [name for name, _ in SUITES["cpu"]]
    assert "ldm-s-ldm" not in [name for name, _ in SUITES["quick"]]
    case = build_case("ldm-s-ldm", tiny=True, num_steps=2, num_images=1, guidance_scale=3.0)
    case.validate()
    assert (case.small_name, case.large_name) == ("LDM-S", "LDM")
    assert case.small.config.cross_attention_dim == 8 and case.large.config.cross_attention_dim == 16
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        for model in (case.small, case.large):
            out = model(x, timestep=torch.tensor([500, 500]), class_labels=torch.tensor([3, 1000])).sample
            assert out.shape == x.shape and torch.isfinite(out).all()
    from tstitch.bench.harness import BenchSettings, run_case

    result = run_case(build_case("ldm-s-ldm", tiny=True, num_steps=3, num_images=1, repetitions=1,
                                 guidance_scale=3.0, fractions=(0.4,)), BenchSettings(memory=False, dispatch_calls=10))
    assert [(row["fraction"], row["small_steps"]) for row in result["rows"]] == [(0.0, 0), (0.4, 1), (1.0, 3)]
    assert {"pipeline", "pipeline-stitched@0", "stitched@0.4"} <= set(result["runs"])  # DiTPipeline runs it too
    full = build_case("ldm-s-ldm", device="meta", num_steps=5, num_images=1)  # published shapes, not allocated
    assert [sum(p.numel() for p in m.unet.parameters()) // 100_000 for m in (full.small, full.large)] == [253, 3949]
