# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The embedded family: shipped weights, loading errors, the digits metric, training smoke run, the demo."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel

import tstitch
from tstitch.experiments.demo import DemoConfig, format_table, run_demo
from tstitch.metrics import FeatureFID, classifier_accuracy
from tstitch.zoo import DEFAULT_WEIGHTS_DIR, FAMILY, load_classifier, load_family, load_model, scheduler_config
from tstitch.zoo.data import load_digits_tensors
from tstitch.zoo.train import train_zoo


@pytest.fixture(scope="module")
def digits():
    return load_digits_tensors()


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_family_loads_offline_with_the_documented_shapes():
    family = load_family()
    assert list(family) == ["digits-s", "digits-b", "digits-xl"]
    params = {}
    for name, model in family.items():
        assert isinstance(model, DiTTransformer2DModel)
        assert not model.training
        assert model.config.in_channels == 1 and model.config.sample_size == 8
        assert model.config.num_embeds_ada_norm == 10
        assert model.config.num_layers == FAMILY[name].num_layers
        params[name] = sum(p.numel() for p in model.parameters())
    assert params["digits-s"] < params["digits-b"] < params["digits-xl"]
    assert [FAMILY[n].relative_compute for n in family] == [1.0, 4.0, 18.0]
    total = sum(p.stat().st_size for p in DEFAULT_WEIGHTS_DIR.glob("*.safetensors"))
    assert total < 25 * 2**20


def test_shipped_weights_are_trained(digits, classifier):
    images, labels = digits
    assert classifier_accuracy(classifier, images, labels) > 0.97
    manifest = json.loads((DEFAULT_WEIGHTS_DIR / "manifest.json").read_text())
    assert set(manifest["models"]) == set(FAMILY)
    assert all(info["steps"] == FAMILY[name].train_steps for name, info in manifest["models"].items())


def test_unknown_model_name_is_refused():
    with pytest.raises(ValueError, match="unknown embedded model 'digits-xxl'.*digits-s"):
        load_model("digits-xxl")
    with pytest.raises(ValueError, match="digits-m"):
        load_family(["digits-s", "digits-m"])


def test_missing_truncated_and_corrupted_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="digits-s.safetensors.*train-zoo"):
        load_model("digits-s", tmp_path)
    data = (DEFAULT_WEIGHTS_DIR / "digits-s.safetensors").read_bytes()
    (tmp_path / "digits-s.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"digits-s\.safetensors are corrupted or truncated"):
        load_model("digits-s", tmp_path)
    (tmp_path / "digits-s.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load_model("digits-s", tmp_path)
    # weights of another member do not fit
    shutil.copy(DEFAULT_WEIGHTS_DIR / "digits-b.safetensors", tmp_path / "digits-s.safetensors")
    with pytest.raises(ValueError, match="do not fit the model"):
        load_model("digits-s", tmp_path)


def test_digits_fid_is_zero_for_identical_sets_and_grows_with_damage(digits, classifier):
    images, _ = digits
    metric = FeatureFID(classifier, images)
    assert abs(metric.score(images)) < 1e-6
    noisy = (images + 0.5 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert metric.score(noisy) > 10 * max(metric.score(images[::2]), 1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        metric.score(images[:1])


def test_accuracy_drops_with_shuffled_labels(digits, classifier):
    images, labels = digits
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert classifier_accuracy(classifier, images, labels) > 0.97
    assert classifier_accuracy(classifier, images, shuffled) < 0.2


def test_stitched_sampling_of_the_family_follows_the_schedule():
    family = load_family(["digits-s", "digits-xl"])
    from diffusers import DDIMScheduler

    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = tstitch.sample([family["digits-s"], family["digits-xl"]], 0.4, DDIMScheduler(**scheduler_config()),
                         noise=noise, class_labels=[0, 1, 2, 3], num_inference_steps=10, guidance_scale=1.5)
    assert out.record.model_per_step() == [0] * 4 + [1] * 6
    assert out.latents.shape == (4, 1, 8, 8)


def test_train_zoo_smoke_run_is_reproducible(tmp_path):
    first = train_zoo(tmp_path / "a", ["digits-s"], steps=3, seed=1, progress=False)
    train_zoo(tmp_path / "b", ["digits-s"], steps=3, seed=1, progress=False)
    assert first["models"]["digits-s"]["steps"] == 3
    a = load_model("digits-s", tmp_path / "a").state_dict()
    b = load_model("digits-s", tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "digits-classifier.safetensors", "digits-s.safetensors", "manifest.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_demo_refuses_an_unwritable_folder_before_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(PermissionError, match="cannot be written"):
        run_demo(locked / "out", DemoConfig.quick(num_samples=4, num_steps=1), progress=False)


def test_demo_refuses_a_file_as_output_folder(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        run_demo(target, DemoConfig.quick(num_samples=4, num_steps=1), progress=False)


def test_demo_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        run_demo(tmp_path, DemoConfig(num_samples=5000), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_demo_on_a_tiny_setting_writes_every_output(tmp_path):
    config = DemoConfig.quick(num_samples=20, num_steps=2, batch_size=10, similarity_samples=4,
                              guidance_scales=(1.0, 1.5), guidance_samples=10, interval_groups=4)
    results = run_demo(tmp_path, config, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(results["files"])
    assert {"grid.png", "pareto.png", "results.csv", "results.json", "similarity.png"} <= set(results["files"])
    rows = results["sections"][0]["rows"]
    assert [r["fractions"] for r in rows[:11]] == [[round(0.1 * i, 6)] for i in range(11)]
    assert len(rows) == 11 + len(config.three_model)
    assert rows[0]["model_per_step"] == [1, 1] and rows[-3]["model_per_step"] == [0, 0]
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert all(r["seconds_per_image"] > 0 and r["fid"] >= 0 for r in rows)
    assert {r["guidance"] for r in results["guidance_sweep"]} == {1.0, 1.5}
    assert len(results["similarity"]["digits-s vs digits-xl"]["x0_relative_l2"]) == 2
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["rows"][3]["fid"] == pytest.approx(rows[3]["fid"])
    assert "T-Stitch point" in format_table(results)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.slow
def test_demo_is_deterministic(tmp_path, monkeypatch):
    import tstitch.experiments.demo as demo

    def no_figure(*args, path=None, **kwargs):  # the figures are the other demo test's; they take most of a run
        path = Path(args[-1] if path is None else path)
        path.write_bytes(b"")
        return path

    for name in ("plot_grid", "plot_similarity", "plot_stitch_section"):
        monkeypatch.setattr(demo, name, no_figure)
    config = DemoConfig.quick(num_samples=10, num_steps=2, batch_size=10, similarity_samples=2,
                              three_model=((0.2, 0.2),), guidance_samples=10, interval_groups=4)
    first = run_demo(tmp_path / "a", config, progress=False)
    second = run_demo(tmp_path / "b", config, progress=False)
    assert [r["fid"] for r in first["rows"]] == [r["fid"] for r in second["rows"]]
    assert [r["fid_vs_large_high"] for r in first["rows"]] == [r["fid_vs_large_high"] for r in second["rows"]]


def test_train_zoo_refuses_bad_steps_before_touching_the_folder(tmp_path, capsys):
    from tstitch import cli

    for name in ("digits-classifier.safetensors", "manifest.json"):
        (tmp_path / name).write_bytes(b"the weights and manifest of an earlier run")
    for steps in (0, -1):
        with pytest.raises(ValueError, match=f"steps must be >= 1, got {steps}"):
            train_zoo(tmp_path, steps=steps, progress=False)
    with pytest.raises(ValueError, match="names is empty"):
        train_zoo(tmp_path, [], progress=False)
    assert cli.main(["train-zoo", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "argument --steps: must be an integer in [1, 100000], got 0" in capsys.readouterr().err
    for name in ("digits-classifier.safetensors", "manifest.json"):
        assert (tmp_path / name).read_bytes() == b"the weights and manifest of an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits-classifier.safetensors", "manifest.json"]


@pytest.mark.slow
def test_train_zoo_of_one_member_keeps_the_manifest_true_to_the_folder(tmp_path, capsys):
    from tstitch import cli

    out = tmp_path / "zoo"
    assert cli.main(["train-zoo", "--models", "digits-s", "digits-b", "digits-xl", "--steps", "2", "--out", str(out),
                     "--no-progress"]) == 0
    first = json.loads((out / "manifest.json").read_text())
    capsys.readouterr()
    assert cli.main(["train-zoo", "--models", "digits-s", "--steps", "3", "--seed", "1", "--out", str(out),
                     "--no-progress"]) == 0
    assert "note: digits-b, digits-xl in" in capsys.readouterr().out
    second = json.loads((out / "manifest.json").read_text())
    assert second["models"]["digits-s"]["steps"] == 3 and second["models"]["digits-s"]["seed"] == 1
    assert second["models"]["digits-b"] == first["models"]["digits-b"]
    assert second["models"]["digits-xl"] == first["models"]["digits-xl"]
    assert second["kept_from_earlier_run"] == ["digits-b", "digits-xl"]
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "digits-classifier.safetensors", "digits-s.safetensors", "digits-b.safetensors", "digits-xl.safetensors",
        "manifest.json", "tstitch-outputs.json"])
    assert load_model("digits-b", out) is not None
