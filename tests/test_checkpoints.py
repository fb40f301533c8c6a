# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Loading DiT checkpoints: shape inference, the official -> diffusers mapping, file kinds and errors.

The converted models are checked against an independent forward pass of the official DiT architecture
written here from its description (patchify, 2D sin-cos positions, 256-wide timestep features, label
table, adaLN-Zero blocks, tanh-GELU MLP, final adaLN layer, unpatchify). No network, random weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel

from tstitch.models.checkpoints import (
    CheckpointNotAvailableError,
    get_timestep_embedding_mode,
    load_dit,
    save_dit_safetensors,
    set_timestep_embedding,
)
from tstitch.models.dit_layout import convert_official_dit_state_dict, heads_for_hidden_size, infer_official_dit_config

# -- an official-layout DiT, written from the architecture description -------------------------------------


def sincos_positions(dim: int, grid: int) -> np.ndarray:
    """(grid*grid, dim): first half encodes the column, second half the row; each half sin then cos."""

    def one_axis(width: int, positions: np.ndarray) -> np.ndarray:
        freqs = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
        angles = positions.reshape(-1, 1).astype(np.float64) * freqs.reshape(1, -1)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.concatenate([one_axis(dim // 2, cols.ravel()), one_axis(dim // 2, rows.ravel())], axis=1)


def random_official_state_dict(
    hidden: int,
    depth: int,
    *,
    patch: int = 2,
    latent: int = 8,
    channels: int = 4,
    learn_sigma: bool = True,
    num_classes: int = 1000,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """Official DiT keys and shapes with random (non-zero) weights; ``device="meta"`` for shapes only."""
    gen = torch.Generator().manual_seed(seed)
    out_channels = 2 * channels if learn_sigma else channels

    def w(*shape: int) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta")
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return torch.randn(shape, generator=gen) / math.sqrt(fan_in)

    def b(n: int) -> torch.Tensor:
        return torch.empty(n, device="meta") if device == "meta" else 0.1 * torch.randn(n, generator=gen)

    grid = latent // patch
    sd = {
        "x_embedder.proj.weight": w(hidden, channels, patch, patch),
        "x_embedder.proj.bias": b(hidden),
        "t_embedder.mlp.0.weight": w(hidden, 256),
        "t_embedder.mlp.0.bias": b(hidden),
        "t_embedder.mlp.2.weight": w(hidden, hidden),
        "t_embedder.mlp.2.bias": b(hidden),
        "final_layer.adaLN_modulation.1.weight": w(2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": b(2 * hidden),
        "final_layer.linear.weight": w(patch * patch * out_channels, hidden),
        "final_layer.linear.bias": b(patch * patch * out_channels),
    }
    if device == "meta":
        sd["y_embedder.embedding_table.weight"] = torch.empty(num_classes + 1, hidden, device="meta")
        sd["pos_embed"] = torch.empty(1, grid * grid, hidden, device="meta")
    else:
        sd["y_embedder.embedding_table.weight"] = torch.randn(num_classes + 1, hidden, generator=gen)
        sd["pos_embed"] = torch.from_numpy(sincos_positions(hidden, grid)).float().unsqueeze(0)
    for i in range(depth):
        sd[f"blocks.{i}.attn.qkv.weight"] = w(3 * hidden, hidden)
        sd[f"blocks.{i}.attn.qkv.bias"] = b(3 * hidden)
        sd[f"blocks.{i}.attn.proj.weight"] = w(hidden, hidden)
        sd[f"blocks.{i}.attn.proj.bias"] = b(hidden)
        sd[f"blocks.{i}.mlp.fc1.weight"] = w(4 * hidden, hidden)
        sd[f"blocks.{i}.mlp.fc1.bias"] = b(4 * hidden)
        sd[f"blocks.{i}.mlp.fc2.weight"] = w(hidden, 4 * hidden)
        sd[f"blocks.{i}.mlp.fc2.bias"] = b(hidden)
        sd[f"blocks.{i}.adaLN_modulation.1.weight"] = w(6 * hidden, hidden)
        sd[f"blocks.{i}.adaLN_modulation.1.bias"] = b(6 * hidden)
    return sd


def reference_forward(
    sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, heads: int
) -> torch.Tensor:
    """The official DiT forward pass, from the description, in float64 for a clean reference."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    hidden, channels, patch, _ = sd["x_embedder.proj.weight"].shape
    out_channels = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    batch, _, height, _ = x.shape
    grid = height // patch

    def linear(h: torch.Tensor, name: str) -> torch.Tensor:
        return h @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(h, (hidden,), eps=1e-6)
        return normed * (1 + scale[:, None, :]) + shift[:, None, :]

    tokens = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch)
    h = tokens.flatten(2).transpose(1, 2) + sd["pos_embed"]

    half = 128  # 256 timestep features: cos then sin, frequencies exp(-ln(10000) * i / 128)
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    angles = t.double()[:, None] * freqs[None, :]
    t_features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    t_emb = linear(F.silu(linear(t_features, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]

    head_dim = hidden // heads
    for i in range(depth):
        p = f"blocks.{i}"
        mods = linear(F.silu(c), f"{p}.adaLN_modulation.1").chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        a = modulate(h, shift_msa, scale_msa)
        qkv = linear(a, f"{p}.attn.qkv").reshape(batch, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, -1, hidden)
        h = h + gate_msa[:, None, :] * linear(attended, f"{p}.attn.proj")
        m = modulate(h, shift_mlp, scale_mlp)
        m = linear(F.gelu(linear(m, f"{p}.mlp.fc1"), approximate="tanh"), f"{p}.mlp.fc2")
        h = h + gate_mlp[:, None, :] * m
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    h = linear(modulate(h, shift, scale), "final_layer.linear")
    h = h.reshape(batch, grid, grid, patch, patch, out_channels)
    return h.permute(0, 5, 1, 3, 2, 4).reshape(batch, out_channels, grid * patch, grid * patch)


def inputs(latent: int = 8, channels: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, channels, latent, latent, generator=gen)
    t = torch.tensor([999, 500, 3])
    y = torch.tensor([7, 1000, 123])  # 1000 = the null class
    return x, t, y


def assert_close_to_reference(model, sd, heads, latent=8, atol=1e-5):
    x, t, y = inputs(latent)
    with torch.no_grad():
        got = model(x, timestep=t, class_labels=y).sample
    want = reference_forward(sd, x, t, y, heads)
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert scale > 0.1  # a meaningful output, not all zeros
    err = (got.double() - want).abs().max().item()
    assert err < atol * max(1.0, scale), f"max error {err} (output scale {scale})"
    return got


# -- shape inference ---------------------------------------------------------------------------------------

PUBLISHED = {  # name: (depth, hidden, heads)
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


@pytest.mark.parametrize(
    "name, patch, latent",
    [("S", 2, 32), ("B", 4, 32), ("L", 8, 32), ("XL", 2, 32), ("XL", 2, 64), ("S", 8, 64)],
)
def test_config_of_published_sizes_from_shapes_only(name, patch, latent):
    depth, hidden, heads = PUBLISHED[name]
    sd = random_official_state_dict(hidden, depth, patch=patch, latent=latent, device="meta")
    config = infer_official_dit_config(sd)
    assert config["num_layers"] == depth
    assert config["num_attention_heads"] == heads
    assert config["num_attention_heads"] * config["attention_head_dim"] == hidden
    assert config["patch_size"] == patch
    assert config["sample_size"] == latent
    assert config["in_channels"] == 4 and config["out_channels"] == 8
    assert config["num_embeds_ada_norm"] == 1000


def test_config_without_learned_sigma_and_other_class_count():
    sd = random_official_state_dict(384, 2, learn_sigma=False, num_classes=10, channels=1, device="meta")
    config = infer_official_dit_config(sd)
    assert (config["in_channels"], config["out_channels"], config["num_embeds_ada_norm"]) == (1, 1, 10)


def test_heads_for_unknown_widths():
    assert [heads_for_hidden_size(h) for h in (384, 768, 1024, 1152)] == [6, 12, 16, 16]
    assert heads_for_hidden_size(512) == 8
    assert heads_for_hidden_size(576) == 9
    assert heads_for_hidden_size(72) == 1
    assert heads_for_hidden_size(200) == 4  # head width 50, the divisor closest to 64
    with pytest.raises(ValueError):
        heads_for_hidden_size(0)


def test_heads_override():
    sd = random_official_state_dict(384, 1, device="meta")
    assert infer_official_dit_config(sd, num_attention_heads=12)["attention_head_dim"] == 32
    with pytest.raises(ValueError, match="not divisible"):
        infer_official_dit_config(sd, num_attention_heads=7)


def test_mlp_ratio_other_than_four_is_refused():
    sd = random_official_state_dict(384, 1, device="meta")
    sd["blocks.0.mlp.fc1.weight"] = torch.empty(3 * 384, 384, device="meta")
    with pytest.raises(ValueError, match="mlp_ratio"):
        infer_official_dit_config(sd)


# -- numerical equivalence with the official architecture --------------------------------------------------


@pytest.fixture(scope="module")
def small_sd():
    """DiT-S width (384, 6 heads), 2 blocks, patch 2, latent 8."""
    return random_official_state_dict(384, 2, seed=0)


def test_official_pt_matches_reference_forward(tmp_path, small_sd):
    path = tmp_path / "dit-s.pt"
    torch.save(small_sd, path)
    model = load_dit(path)
    assert isinstance(model, DiTTransformer2DModel) and not model.training
    assert model.config.num_attention_heads == 6 and model.config.attention_head_dim == 64
    assert get_timestep_embedding_mode(model) == "official"
    assert_close_to_reference(model, small_sd, heads=6)


def test_diffusers_timestep_features_differ_from_official(tmp_path, small_sd):
    """diffusers' DiT divides the frequency exponent by 127, the official DiT by 128: not the same model."""
    torch.save(small_sd, tmp_path / "dit-s.pt")
    model = set_timestep_embedding(load_dit(tmp_path / "dit-s.pt"), "diffusers")
    x, t, y = inputs()
    with torch.no_grad():
        got = model(x, timestep=t, class_labels=y).sample
    want = reference_forward(small_sd, x, t, y, heads=6)
    assert (got.double() - want).abs().max().item() > 1e-3
    set_timestep_embedding(model, "official")
    assert_close_to_reference(model, small_sd, heads=6)
    with pytest.raises(ValueError):
        set_timestep_embedding(model, "other")


def test_diffusers_position_table_is_the_official_one(tmp_path, small_sd):
    torch.save(small_sd, tmp_path / "dit-s.pt")
    model = load_dit(tmp_path / "dit-s.pt")
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    computed = DiTTransformer2DModel(**config).pos_embed.pos_embed
    torch.testing.assert_close(computed, small_sd["pos_embed"], atol=1e-6, rtol=0)


def test_xl_width_safetensors_matches_reference_forward(tmp_path):
    """DiT-XL width (1152, 16 heads of 72), one block, in an official-layout safetensors file."""
    from safetensors.torch import save_file

    sd = random_official_state_dict(1152, 1, seed=3)
    save_file(sd, str(tmp_path / "dit-xl.safetensors"))
    model = load_dit(tmp_path / "dit-xl.safetensors")
    assert model.config.num_attention_heads == 16 and model.config.attention_head_dim == 72
    assert_close_to_reference(model, sd, heads=16)


def test_patch_4_learned_sigma_off_matches_reference(tmp_path):
    sd = random_official_state_dict(128, 2, patch=4, latent=8, learn_sigma=False, num_classes=10, seed=5)
    torch.save(sd, tmp_path / "tiny.pth")
    model = load_dit(tmp_path / "tiny.pth")
    assert model.config.patch_size == 4 and model.out_channels == 4
    x, t, _ = inputs()
    y = torch.tensor([3, 10, 0])
    with torch.no_grad():
        got = model(x, timestep=t, class_labels=y).sample
    want = reference_forward(sd, x, t, y, heads=2)
    assert (got.double() - want).abs().max().item() < 2e-5 * max(1.0, want.abs().max().item())


def test_nonstandard_stored_positions_are_used(tmp_path):
    sd = random_official_state_dict(128, 1, seed=6)
    sd["pos_embed"] = torch.randn(sd["pos_embed"].shape, generator=torch.Generator().manual_seed(0))
    torch.save(sd, tmp_path / "odd.pt")
    assert_close_to_reference(load_dit(tmp_path / "odd.pt"), sd, heads=2)


def test_nested_ema_with_training_state_and_ddp_prefix(tmp_path, small_sd):
    other = {k: torch.zeros_like(v) for k, v in small_sd.items()}
    checkpoint = {
        "model": other,
        "ema": {f"module.{k}": v for k, v in small_sd.items()},
        "opt": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "args": argparse.Namespace(model="DiT-S/2", image_size=256),
    }
    torch.save(checkpoint, tmp_path / "0400000.pt")
    assert_close_to_reference(load_dit(tmp_path / "0400000.pt"), small_sd, heads=6)
    torch.save({"model": small_sd}, tmp_path / "model-only.pt")
    assert_close_to_reference(load_dit(tmp_path / "model-only.pt"), small_sd, heads=6)


def test_convert_is_usable_on_its_own(small_sd):
    config, converted = convert_official_dit_state_dict(small_sd)
    model = DiTTransformer2DModel(**config).eval()
    model.load_state_dict(converted, strict=True)
    set_timestep_embedding(model, "official")
    assert_close_to_reference(model, small_sd, heads=6)
    # every tensor is a copy: changing the result leaves the source alone
    converted["transformer_blocks.0.attn1.to_q.weight"].zero_()
    assert small_sd["blocks.0.attn.qkv.weight"].abs().sum() > 0
    ptrs = [v.data_ptr() for v in converted.values()]
    assert len(set(ptrs)) == len(ptrs)


def test_loading_leaves_the_global_random_state_alone(tmp_path, small_sd):
    torch.save(small_sd, tmp_path / "s.pt")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_dit(tmp_path / "s.pt")
    torch.testing.assert_close(torch.rand(3), expected)


def test_dtype(tmp_path, small_sd):
    torch.save({k: v.half() for k, v in small_sd.items()}, tmp_path / "half.pt")
    model = load_dit(tmp_path / "half.pt", dtype=torch.float16)
    assert model.dtype == torch.float16


# -- saving and diffusers layouts --------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path, small_sd):
    torch.save(small_sd, tmp_path / "s.pt")
    model = load_dit(tmp_path / "s.pt")
    out = save_dit_safetensors(model, tmp_path / "out" / "s.safetensors")
    assert sorted(os.listdir(tmp_path / "out")) == ["s.safetensors"]  # no temporary file left behind
    again = load_dit(out)
    assert get_timestep_embedding_mode(again) == "official"
    public = lambda config: {k: v for k, v in dict(config).items() if not k.startswith("_")}  # noqa: E731
    assert public(again.config) == public(model.config)
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            again(x, timestep=t, class_labels=y).sample,
            model(x, timestep=t, class_labels=y).sample,
            atol=0,
            rtol=0,
        )
    # overwriting goes through a temporary file too
    save_dit_safetensors(again, out)
    assert sorted(os.listdir(tmp_path / "out")) == ["s.safetensors"]


def test_diffusers_layout_file_without_config(tmp_path, small_sd):
    from safetensors.torch import save_file

    torch.save(small_sd, tmp_path / "s.pt")
    model = load_dit(tmp_path / "s.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="sample_size"):
        load_dit(tmp_path / "bare.safetensors")
    bare = load_dit(tmp_path / "bare.safetensors", sample_size=8)
    assert get_timestep_embedding_mode(bare) == "diffusers"  # unknown origin: diffusers numerics
    assert bare.config.num_layers == 2 and bare.config.num_attention_heads == 6
    official = load_dit(tmp_path / "bare.safetensors", sample_size=8, timestep_embedding="official")
    assert_close_to_reference(official, small_sd, heads=6)


def test_diffusers_model_and_pipeline_folders(tmp_path, small_sd):
    torch.save(small_sd, tmp_path / "s.pt")
    model = load_dit(tmp_path / "s.pt")
    pipeline_dir = tmp_path / "pipe"
    model.save_pretrained(pipeline_dir / "transformer")
    (pipeline_dir / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    for source in (pipeline_dir, pipeline_dir / "transformer"):
        loaded = load_dit(source)
        assert get_timestep_embedding_mode(loaded) == "diffusers"
        assert loaded.config.num_layers == 2
    loaded = load_dit(pipeline_dir, timestep_embedding="official")
    assert_close_to_reference(loaded, small_sd, heads=6)
    # a model folder's weights file with its config.json beside it needs no sample_size
    beside = load_dit(pipeline_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    assert beside.config.sample_size == 8


# -- errors ------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_dit(tmp_path / "nope.pt")


def test_truncated_and_corrupt_files(tmp_path, small_sd):
    torch.save(small_sd, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt.*truncated or corrupt"):
        load_dit(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt"):
        load_dit(tmp_path / "empty.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="junk.safetensors.*truncated or corrupt"):
        load_dit(tmp_path / "junk.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        load_dit(tmp_path / "notes.txt")


def test_unsafe_pickle_is_refused(tmp_path, small_sd):
    torch.save({"ema": small_sd, "hook": os.getcwd}, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_dit(tmp_path / "unsafe.pt")


def test_unknown_layout_and_missing_keys(tmp_path, small_sd):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown checkpoint layout"):
        load_dit(tmp_path / "other.pt")
    torch.save({"step": 3, "note": "no weights"}, tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="no state dict"):
        load_dit(tmp_path / "nothing.pt")
    broken = dict(small_sd)
    del broken["blocks.1.attn.proj.bias"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken.pt.*blocks\.1\.attn\.proj\.bias"):
        load_dit(tmp_path / "broken.pt")
    extra = dict(small_sd, **{"blocks.0.attn.q_norm.weight": torch.ones(64)})
    with pytest.raises(ValueError, match="unexpected keys.*q_norm"):
        convert_official_dit_state_dict(extra)
    gap = {k: v for k, v in small_sd.items() if not k.startswith("blocks.0.")}
    with pytest.raises(ValueError, match="missing"):
        convert_official_dit_state_dict(gap)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotAvailableError) as info:
        load_dit("tstitch-tests/no-such-dit-model")
    message = str(info.value)
    assert "tstitch-tests/no-such-dit-model" in message and "offline" in message
    assert "huggingface-cli download" in message and "local path" in message
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(CheckpointNotAvailableError, match="DiT-S-2.pt"):
        load_dit("tstitch-tests/no-such-repo/DiT-S-2.pt", local_files_only=True)


def test_not_a_path_nor_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dit(str(tmp_path / "missing-folder" / "x"))
