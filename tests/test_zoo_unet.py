# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The embedded U-Net pair: specs, the learned null class, stitching across context widths, training, loading."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

import tstitch
from tstitch import zoo
from tstitch.compat import check_compatible
from tstitch.metrics import classifier_accuracy
from tstitch.sampling import ClassConditionedUNet
from tstitch.sampling.guidance import num_classes_of
from tstitch.zoo import DIGITS_DIT, DIGITS_UNET, FAMILY, UNetSpec, build_model, load_family, load_model
from tstitch.zoo import load_classifier as shipped_classifier
from tstitch.zoo.train import train_diffusion, train_zoo
from tstitch.zoo.unet import DigitsUNet, build_unet


def _tiny(name: str, widths: tuple[int, int], context: int) -> DigitsUNet:
    spec = UNetSpec(name, block_out_channels=widths, layers_per_block=1, cross_attention_dim=context,
                    attention_heads=(1, 1), norm_num_groups=4, train_steps=1)
    torch.manual_seed(0)
    return build_unet(spec).eval().requires_grad_(False)


class LabelRecorder:
    """Records the ``class_labels`` of every call of a model (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[list[int]] = []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append(kwargs["class_labels"].tolist())


def test_names_and_default_family():
    assert DIGITS_DIT == ("digits-s", "digits-b", "digits-xl")
    assert DIGITS_UNET == ("digits-unet-s", "digits-unet")
    assert list(FAMILY) == [*DIGITS_DIT, *DIGITS_UNET]
    assert FAMILY["digits-unet-s"].train_steps == FAMILY["digits-unet"].train_steps


@pytest.mark.parametrize("name, width", [("digits-unet-s", 32), ("digits-unet", 64)])
def test_build_model_gives_a_class_conditioned_unet_with_its_own_context_width(name, width):
    model = build_model(name, seed=3)
    assert isinstance(model, DigitsUNet) and isinstance(model, ClassConditionedUNet)
    assert isinstance(model.unet, UNet2DConditionModel)
    assert model.owns_conditioning is True
    assert model.unet.config.cross_attention_dim == width
    assert model.embedder.embedding.weight.shape == (11, width)
    assert model.config["num_class_embeds"] == 10 and num_classes_of(model) == 10
    assert model.config["sample_size"] == 8 and model.config["in_channels"] == 1
    again = build_model(name, seed=3).state_dict()
    assert all(torch.equal(value, again[key]) for key, value in model.state_dict().items())


def test_the_null_class_is_the_learned_eleventh_row():
    model = _tiny("tiny", (8, 16), 12)
    labels = torch.tensor([3, 10, 0])
    contexts = model.contexts(labels)
    assert contexts.shape == (3, 1, 12)
    assert torch.equal(contexts[:, 0], model.embedder.embedding.weight[labels])
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([7, 7, 7])
    direct = model.unet(x, t, encoder_hidden_states=contexts).sample
    assert torch.equal(model(x, timestep=t, class_labels=labels).sample, direct)


def test_stitching_two_context_widths_with_guidance_uses_null_label_10():
    small, large = _tiny("s", (4, 8), 8), _tiny("l", (8, 16), 16)
    check_compatible(large, small)
    seen_small, seen_large = LabelRecorder(small), LabelRecorder(large)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = tstitch.sample([small, large], [0.4], DDIMScheduler(**zoo.scheduler_config()), noise=noise,
                         class_labels=[4, 7], num_inference_steps=5, guidance_scale=1.5)
    assert out.record.model_per_step() == [0, 0, 1, 1, 1]
    assert seen_small.calls == [[4, 7, 10, 10]] * 2
    assert seen_large.calls == [[4, 7, 10, 10]] * 3
    assert out.latents.shape == (2, 1, 8, 8) and torch.isfinite(out.latents).all()


def test_unet_training_drops_10_percent_of_labels_to_the_null_class(monkeypatch):
    recorders = []

    def recorded_build(name, seed=None):
        model = build_model(name, seed)
        recorders.append(LabelRecorder(model))
        return model

    monkeypatch.setattr("tstitch.zoo.train.build_model", recorded_build)
    train_diffusion("digits-unet-s", 3, seed=0, batch_size=400, progress=False)
    labels = torch.tensor(recorders[0].calls)
    assert labels.shape == (3, 400) and labels.min() >= 0 and labels.max() <= 10
    assert 0.06 < (labels == 10).float().mean().item() < 0.14
    train_diffusion("digits-s", 1, seed=0, batch_size=50, progress=False)  # the DiT drops labels itself
    assert max(recorders[1].calls[0]) < 10


@pytest.mark.slow
def test_train_zoo_smoke_run_of_the_pair_is_reproducible_and_loads(tmp_path):
    names = list(DIGITS_UNET)
    manifest = train_zoo(tmp_path / "a", names, steps=2, seed=1, progress=False)
    train_zoo(tmp_path / "b", names, steps=2, seed=1, progress=False)
    assert list(manifest["models"]) == names
    assert manifest["models"]["digits-unet"]["config"] == FAMILY["digits-unet"].config()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "digits-classifier.safetensors", "digits-unet-s.safetensors", "digits-unet.safetensors", "manifest.json"]
    pair = load_family(names, directory=tmp_path / "a")
    assert list(pair) == names
    for name, model in pair.items():
        again = load_model(name, tmp_path / "b").state_dict()
        assert all(torch.equal(value, again[key]) for key, value in model.state_dict().items())
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        out = model(torch.randn(3, 1, 8, 8), timestep=torch.tensor([1, 500, 999]),
                    class_labels=torch.tensor([0, 9, 10]))
        assert out.sample.shape == (3, 1, 8, 8)
    check_compatible(pair["digits-unet"], pair["digits-unet-s"])


def test_missing_corrupted_and_mismatched_unet_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="digits-unet.safetensors.*train-zoo"):
        load_model("digits-unet", tmp_path)
    zoo.save_weights(build_model("digits-unet-s", seed=0), tmp_path / "digits-unet-s.safetensors", {})
    data = (tmp_path / "digits-unet-s.safetensors").read_bytes()
    (tmp_path / "digits-unet.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"digits-unet\.safetensors are corrupted or truncated"):
        load_model("digits-unet", tmp_path)
    (tmp_path / "digits-unet.safetensors").write_bytes(data)
    with pytest.raises(ValueError, match="do not fit the model"):
        load_model("digits-unet", tmp_path)
    assert isinstance(load_model("digits-unet-s", tmp_path), DigitsUNet)


def test_shipped_pair_loads_and_draws_recognisable_digits():
    manifest = json.loads((zoo.DEFAULT_WEIGHTS_DIR / "manifest.json").read_text())
    pair = load_family(list(DIGITS_UNET))
    for name, model in pair.items():
        info = manifest["models"][name]
        assert info["steps"] == FAMILY[name].train_steps and info["config"] == FAMILY[name].config()
        assert info["parameters"] == sum(p.numel() for p in model.parameters())
        assert isinstance(model, DigitsUNet) and not model.training
    assert manifest["models"]["digits-unet-s"]["parameters"] * 5 < manifest["models"]["digits-unet"]["parameters"]
    noise = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 10
    out = tstitch.sample([pair["digits-unet-s"], pair["digits-unet"]], [0.4], DDIMScheduler(**zoo.scheduler_config()),
                         noise=noise, class_labels=labels, num_inference_steps=10)
    assert classifier_accuracy(shipped_classifier(), out.latents.clamp(-1, 1), labels) > 0.9
