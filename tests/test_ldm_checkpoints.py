# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Loading CompVis LDM checkpoints: shape inference, the CompVis -> diffusers mapping, EMA, the class
embedder, the VQ first stage, Lightning files and errors.

Random-weight checkpoints with the real CompVis key names are built here (``ldm_reference.py``) and the
converted diffusers models are compared with an independent float64 forward pass of the CompVis
architecture. No network.
"""

from __future__ import annotations

import logging
import os
import sys
import types

import pytest
import torch
from diffusers import UNet2DConditionModel, VQModel
from ldm_reference import UNetSpec, VQSpec, random_unet_state_dict, random_vq_state_dict, unet_forward, vq_decode

from tstitch.models.ldm_checkpoints import (
    convert_ldm_unet_state_dict,
    extract_unet_state_dict,
    infer_ldm_unet_config,
    infer_vq_config,
    load_ldm_checkpoint,
    load_vq_first_stage,
)
from tstitch.sampling import ClassEmbedder

PREFIX = "model.diffusion_model."


def lightning_checkpoint(unet_sd, *, table=None, ema=None, first_stage=None, extra=None):
    """A Lightning-style ``.ckpt`` dict: ``state_dict`` with the CompVis prefixes, plus training state."""
    state = {PREFIX + k: v for k, v in unet_sd.items()}
    if table is not None:
        state["cond_stage_model.embedding.weight"] = table
    if ema is not None:
        state.update({"model_ema." + ("diffusion_model." + k).replace(".", ""): v for k, v in ema.items()})
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    if first_stage is not None:
        state.update({"first_stage_model." + k: v for k, v in first_stage.items()})
    checkpoint = {"state_dict": state, "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.4.2",
                  "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-6}]}], "lr_schedulers": []}
    checkpoint.update(extra or {})
    return checkpoint


def check_unet(unet, sd, spec, atol=1e-5):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, spec.in_channels, 8, 8, generator=gen)
    t = torch.tensor([991, 500, 1])
    context = torch.randn(3, 1, spec.context_dim, generator=gen)
    with torch.no_grad():
        got = unet(x, t, encoder_hidden_states=context).sample
    want = unet_forward(sd, spec, x, t, context)
    scale = want.abs().max().item()
    assert scale > 0.1
    assert (got.double() - want).abs().max().item() < atol * max(1.0, scale)


@pytest.fixture(scope="module")
def spec():
    return UNetSpec(context_dim=16)


@pytest.fixture(scope="module")
def unet_sd(spec):
    return random_unet_state_dict(spec, seed=0)


# -- shapes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, channels, context, heads, millions", [
    ("LDM-S", 64, 256, [2, 4, 8], 25.4), ("LDM", 256, 512, [8, 16, 32], 395.0)])
def test_published_sizes_from_shapes_only(name, channels, context, heads, millions):
    spec = UNetSpec(model_channels=channels, channel_mult=(1, 2, 4), num_res_blocks=2, attention=(True,) * 3,
                    context_dim=context)
    sd = random_unet_state_dict(spec, device="meta")
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 1) == millions  # the published 25M / 394M
    config = infer_ldm_unet_config(sd)
    assert config["block_out_channels"] == [channels, 2 * channels, 4 * channels]
    assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3
    assert config["up_block_types"] == ["CrossAttnUpBlock2D"] * 3
    assert config["layers_per_block"] == 2 and config["cross_attention_dim"] == context
    assert config["attention_head_dim"] == heads  # 32 channels per head
    assert config["transformer_layers_per_block"] == 1 and not config["use_linear_projection"]
    assert (config["in_channels"], config["out_channels"], config["sample_size"]) == (4, 4, 32)
    converted = convert_ldm_unet_state_dict(sd, config)
    with torch.device("meta"):
        expected = UNet2DConditionModel(**config).state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_head_layout_options(unet_sd):
    assert infer_ldm_unet_config(unet_sd)["attention_head_dim"] == [1, 2]
    assert infer_ldm_unet_config(unet_sd, num_head_channels=16)["attention_head_dim"] == [2, 4]
    assert infer_ldm_unet_config(unet_sd, num_heads=4)["attention_head_dim"] == [4, 4]
    with pytest.raises(ValueError, match="num_head_channels=24"):
        infer_ldm_unet_config(unet_sd, num_head_channels=24)
    with pytest.raises(ValueError, match="not both"):
        infer_ldm_unet_config(unet_sd, num_heads=2, num_head_channels=16)


# -- numerical equivalence with the CompVis architecture -----------------------------------------------------


def test_lightning_ckpt_matches_reference(tmp_path, spec, unet_sd):
    table = torch.randn(10, spec.context_dim, generator=torch.Generator().manual_seed(2))
    torch.save(lightning_checkpoint(unet_sd, table=table), tmp_path / "ldm_s.ckpt")
    loaded = load_ldm_checkpoint(tmp_path / "ldm_s.ckpt")
    assert isinstance(loaded.unet, UNet2DConditionModel) and not loaded.unet.training
    assert loaded.vq is None and not loaded.used_ema
    check_unet(loaded.unet, unet_sd, spec)
    assert isinstance(loaded.embedder, ClassEmbedder)
    context = loaded.embedder(torch.tensor([3, 9]))
    assert context.shape == (2, 1, spec.context_dim)
    torch.testing.assert_close(context[:, 0], table[[3, 9]], atol=0, rtol=0)


@pytest.mark.parametrize("variant", [
    UNetSpec(channel_mult=(1, 2, 2), num_res_blocks=2, attention=(False, True, True), transformer_depth=2,
             use_scale_shift_norm=True, context_dim=8),
    UNetSpec(use_linear=True, num_head_channels=16, context_dim=24, in_channels=3, out_channels=6),
])
def test_other_architectures_match_reference(tmp_path, variant):
    sd = random_unet_state_dict(variant, seed=4)
    torch.save(lightning_checkpoint(sd), tmp_path / "m.ckpt")
    loaded = load_ldm_checkpoint(tmp_path / "m.ckpt", num_head_channels=variant.num_head_channels)
    assert loaded.embedder is None
    check_unet(loaded.unet, sd, variant)


def test_yaml_config_gives_the_heads_and_is_checked(tmp_path):
    variant = UNetSpec(num_head_channels=16, context_dim=8)
    sd = random_unet_state_dict(variant, seed=5)
    torch.save(lightning_checkpoint(sd), tmp_path / "m.ckpt")
    yaml_text = (
        "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    unet_config:\n"
        "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n      params:\n"
        "        in_channels: 4\n        out_channels: 4\n        model_channels: 32\n        num_res_blocks: 1\n"
        "        attention_resolutions: [1, 2]\n        channel_mult: [1, 2]\n        num_head_channels: 16\n"
        "        use_spatial_transformer: true\n        transformer_depth: 1\n        context_dim: {context}\n")
    (tmp_path / "ok.yaml").write_text(yaml_text.format(context=8))
    loaded = load_ldm_checkpoint(tmp_path / "m.ckpt", config=tmp_path / "ok.yaml")
    assert loaded.unet.config.attention_head_dim == [2, 4]
    check_unet(loaded.unet, sd, variant)
    (tmp_path / "bad.yaml").write_text(yaml_text.format(context=512))
    with pytest.raises(ValueError, match="config says context_dim=512, the weights say 8"):
        load_ldm_checkpoint(tmp_path / "m.ckpt", config=tmp_path / "bad.yaml")
    (tmp_path / "other.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError, match="unet_config"):
        load_ldm_checkpoint(tmp_path / "m.ckpt", config=tmp_path / "other.yaml")


def test_ema_weights_are_preferred_and_logged(tmp_path, spec, unet_sd, caplog):
    zeros = {k: torch.zeros_like(v) for k, v in unet_sd.items()}
    torch.save(lightning_checkpoint(zeros, ema=unet_sd), tmp_path / "ema.ckpt")
    with caplog.at_level(logging.INFO, logger="tstitch.models.ldm_checkpoints"):
        loaded = load_ldm_checkpoint(tmp_path / "ema.ckpt")
    assert loaded.used_ema
    assert any("EMA weights (model_ema.*)" in r.getMessage() for r in caplog.records)
    check_unet(loaded.unet, unet_sd, spec)
    raw = load_ldm_checkpoint(tmp_path / "ema.ckpt", ema=False)
    assert not raw.used_ema
    assert all(p.abs().sum() == 0 for p in raw.unet.parameters())
    torch.save(lightning_checkpoint(unet_sd), tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="ema=True"):
        load_ldm_checkpoint(tmp_path / "plain.ckpt", ema=True)
    partial = lightning_checkpoint(zeros, ema=unet_sd)
    del partial["state_dict"]["model_ema.diffusion_modelout2weight"]
    with pytest.raises(ValueError, match="EMA weights are incomplete.*diffusion_modelout2weight"):
        extract_unet_state_dict(partial["state_dict"])


def test_first_stage_in_the_ldm_checkpoint_and_alone(tmp_path, unet_sd):
    vspec = VQSpec()
    vsd = random_vq_state_dict(vspec, seed=6)
    torch.save(lightning_checkpoint(unet_sd, first_stage={k: v for k, v in vsd.items() if not k.startswith("loss.")}),
               tmp_path / "ldm.ckpt")
    torch.save({"state_dict": vsd}, tmp_path / "model.ckpt")  # vq-f8 layout, loss.* included
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(7)) * 2
    want = vq_decode(vsd, vspec, z)
    for vq in (load_ldm_checkpoint(tmp_path / "ldm.ckpt").vq, load_vq_first_stage(tmp_path / "model.ckpt")):
        assert isinstance(vq, VQModel) and vq.config.scaling_factor == 1.0
        assert vq.config.down_block_types == ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]
        with torch.no_grad():
            got = vq.decode(z).sample
        assert (got.double() - want).abs().max().item() < 1e-5 * want.abs().max().item()
    assert load_ldm_checkpoint(tmp_path / "ldm.ckpt", load_first_stage=False).vq is None
    assert infer_vq_config(vsd)["num_vq_embeddings"] == 16


def test_loading_leaves_the_global_random_state_alone_and_copies(tmp_path, unet_sd):
    torch.save(lightning_checkpoint(unet_sd, table=torch.randn(10, 16)), tmp_path / "m.ckpt")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    loaded = load_ldm_checkpoint(tmp_path / "m.ckpt", dtype=torch.float16)
    torch.testing.assert_close(torch.rand(3), expected)
    assert loaded.unet.dtype == torch.float16 and loaded.embedder.embedding.weight.dtype == torch.float16
    config = infer_ldm_unet_config(unet_sd)
    converted = convert_ldm_unet_state_dict(unet_sd, config)
    converted["conv_in.weight"].zero_()
    assert unet_sd["input_blocks.0.0.weight"].abs().sum() > 0


# -- files and errors ----------------------------------------------------------------------------------------


def test_lightning_objects_are_read_as_inert_placeholders(tmp_path, unet_sd, monkeypatch):
    """Old Lightning versions key callbacks by class: loadable without importing (or running) Lightning."""
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", module.__name__]
    for name in names:
        monkeypatch.setitem(sys.modules, name, module if name == module.__name__ else types.ModuleType(name))
    checkpoint = lightning_checkpoint(unet_sd, extra={"callbacks": {ModelCheckpoint: {"best_model_score": 0.1}}})
    torch.save(checkpoint, tmp_path / "pl.ckpt")
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    loaded = load_ldm_checkpoint(tmp_path / "pl.ckpt")
    assert loaded.unet.config.cross_attention_dim == 16


def test_missing_truncated_and_unsafe_files(tmp_path, unet_sd):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_ldm_checkpoint(tmp_path / "nope.ckpt")
    torch.save(lightning_checkpoint(unet_sd), tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.ckpt.*truncated or corrupt"):
        load_ldm_checkpoint(tmp_path / "cut.ckpt")
    (tmp_path / "notes.ckpt").write_text("hello")
    with pytest.raises(ValueError, match="notes.ckpt"):
        load_ldm_checkpoint(tmp_path / "notes.ckpt")
    torch.save(lightning_checkpoint(unet_sd, extra={"hook": os.getcwd}), tmp_path / "unsafe.ckpt")
    with pytest.raises(ValueError, match="weights_only.*getcwd"):
        load_ldm_checkpoint(tmp_path / "unsafe.ckpt")
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "nothing.ckpt")
    with pytest.raises(ValueError, match="no state dict"):
        load_ldm_checkpoint(tmp_path / "nothing.ckpt")
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="no CompVis U-Net weights"):
        load_ldm_checkpoint(tmp_path / "other.ckpt")


def test_missing_unexpected_and_misshapen_keys(tmp_path, unet_sd):
    config = infer_ldm_unet_config(unet_sd)
    broken = {k: v for k, v in unet_sd.items() if k != "output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"}
    with pytest.raises(ValueError, match=r"missing keys.*output_blocks\.1\.1\.transformer_blocks\.0\.attn2\.to_k"):
        convert_ldm_unet_state_dict(broken, config)
    extra = dict(unet_sd, **{"label_emb.weight": torch.zeros(10, 128)})
    with pytest.raises(ValueError, match="unexpected keys.*label_emb.weight"):
        convert_ldm_unet_state_dict(extra, config)
    wrong = dict(unet_sd, **{"middle_block.1.proj_out.bias": torch.zeros(7)})
    torch.save(lightning_checkpoint(wrong), tmp_path / "wrong.ckpt")
    wrong_shape = r"wrong.ckpt: \d+ tensor\(s\) have the wrong shape.*mid_block\.attentions\.0\.proj_out\.bias"
    with pytest.raises(ValueError, match=wrong_shape):
        load_ldm_checkpoint(tmp_path / "wrong.ckpt")
    torch.save(lightning_checkpoint(unet_sd, table=torch.zeros(10, 5)), tmp_path / "table.ckpt")
    with pytest.raises(ValueError, match="embedding.weight has shape"):
        load_ldm_checkpoint(tmp_path / "table.ckpt")
    gap = {k: v for k, v in unet_sd.items() if not k.startswith("input_blocks.1.")}
    with pytest.raises(ValueError, match="input blocks"):
        infer_ldm_unet_config(gap)
