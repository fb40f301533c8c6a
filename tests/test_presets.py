# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Presets: the table, offline errors, and every preset kind loaded from tiny local models.

No network: hub presets are checked against an empty Hugging Face cache; the DiT presets are loaded from
tiny official-layout checkpoints in a checkpoint folder, the Stable Diffusion / SDXL presets from tiny
random pipelines saved to folders (``models=`` replaces the hub ids), the digits presets from the shipped
weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from test_checkpoints import random_official_state_dict
from tiny_models import SCHEDULERS, tiny_unet, tiny_vae
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from tstitch.experiments.generate import SampleOptions, generate
from tstitch.models.checkpoints import CheckpointNotAvailableError, get_timestep_embedding_mode
from tstitch.models.loaded import ClassConditionalModels, StitchedPipeline
from tstitch.models.loading import load_models, load_preset
from tstitch.models.presets import PRESETS, describe_presets, get_preset
from tstitch.sampling.official import sample_official
from tstitch.sampling.schedulers import SCHEDULERS as SCHEDULER_NAMES
from tstitch.sampling.schedulers import make_scheduler
from tstitch.stitcher import StitchedDenoiser, get_stitch

HUB_PRESETS = [name for name in PRESETS if not name.startswith("digits")]


# -- tiny components saved to folders -----------------------------------------------------------------------


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over single letters (no merges), written to ``folder``."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)


def tiny_text_encoder(hidden: int, seed: int, projection: int | None = None):
    config = CLIPTextConfig(
        vocab_size=54, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        projection_dim=projection or hidden,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def save_sd(folder: Path, unet_seed: int = 1, **unet_overrides) -> Path:
    """A tiny Stable Diffusion 1.x pipeline (text encoder and tokenizer included), saved to ``folder``."""
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(8, seed=3), tokenizer=tiny_tokenizer(folder.parent / "tok"),
        unet=tiny_unet(seed=unet_seed, **unet_overrides), scheduler=SCHEDULERS["ddim"](), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_sdxl(folder: Path, unet_seed: int = 5) -> Path:
    """A tiny SDXL pipeline (two text encoders: widths 4 + 4 = the U-Net's cross-attention width 8)."""
    tokenizer = tiny_tokenizer(folder.parent / "tok")
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(4, seed=6),
        text_encoder_2=tiny_text_encoder(4, seed=7, projection=8), tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=tiny_unet(seed=unet_seed, sdxl=True), scheduler=SCHEDULERS["euler"](), add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_unet(folder: Path, seed: int, **overrides) -> Path:
    tiny_unet(seed=seed, **overrides).save_pretrained(folder)
    return folder


def save_official_dit(path: Path, hidden: int, depth: int, seed: int) -> Path:
    """An official-layout DiT state dict (4x4 latents, learned sigma, 1000 classes), as ``torch.save`` writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_official_state_dict(hidden, depth, latent=4, seed=seed), path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    dit_dir = root / "checkpoints"
    save_official_dit(dit_dir / "dit_s_256.pt", hidden=64, depth=1, seed=1)
    save_official_dit(dit_dir / "dit_b_256.pt", hidden=96, depth=1, seed=2)
    save_official_dit(dit_dir / "DiT-XL-2-256x256.pt", hidden=128, depth=2, seed=3)
    tiny_vae().save_pretrained(root / "vae")
    return {
        "checkpoints": dit_dir,
        "vae": root / "vae",
        "sd": save_sd(root / "sd" / "pipe"),
        "sd-small-unet": save_unet(root / "sd-small-unet", seed=2),
        "sd-small-pipe": save_sd(root / "sd-small" / "pipe", unet_seed=4),
        "sd-wide-unet": save_unet(root / "sd-wide-unet", seed=2, cross_attention_dim=16),
        "sdxl": save_sdxl(root / "sdxl" / "pipe"),
        "sdxl-small-unet": save_unet(root / "sdxl-small-unet", seed=8, sdxl=True),
    }


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Offline, with an empty Hugging Face cache and no checkpoint folder anywhere."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TSTITCH_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./pretrained_models
    return tmp_path


# -- the table ---------------------------------------------------------------------------------------------


def test_the_published_pairs_are_named():
    assert {"dit-s-xl", "dit-b-xl", "dit-s-b-xl", "sd15-bksdm-tiny", "sd15-bksdm-small", "sdxl-ssd1b",
            "digits"} <= set(PRESETS)
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert len(preset.fractions) == len(preset.models) - 1
        assert 0 <= sum(preset.fractions) <= 1


@pytest.mark.parametrize("name", ["dit-s-xl", "dit-b-xl", "dit-s-b-xl"])
def test_dit_presets_sample_as_the_paper(name):
    preset = get_preset(name)
    assert (preset.kind, preset.scheduler, preset.num_steps, preset.guidance_scale) == ("class", "ddim", 100, 1.5)
    assert preset.mode == "official" and preset.timestep_embedding == "official"
    assert preset.vae.hub == ("stabilityai/sd-vae-ft-ema",) and preset.latent_scale == 0.18215
    assert preset.models[-1].hub == ("facebook/DiT-XL-2-256",)
    assert [m.label.split("/")[0] for m in preset.models] == [f"DiT-{s.upper()}" for s in name[4:].split("-")]


def test_unet_presets_use_the_pipeline_defaults():
    expected = {
        "sd15-bksdm-tiny": ("nota-ai/bk-sdm-tiny", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        "sd15-bksdm-small": ("nota-ai/bk-sdm-small", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        "sdxl-ssd1b": ("segmind/SSD-1B", "stabilityai/stable-diffusion-xl-base-1.0"),
    }
    for name, (small, large) in expected.items():
        preset = get_preset(name)
        assert preset.kind == "pipeline"
        assert (preset.scheduler, preset.num_steps, preset.guidance_scale) == (None, None, None)
        assert preset.models[0].hub[0] == small and preset.models[0].subfolder == "unet"
        assert preset.models[1].hub[0] == large
    assert "runwayml/stable-diffusion-v1-5" in get_preset("sd15-bksdm-tiny").models[1].hub


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'dit-xxl'.*dit-s-xl.*sd15-bksdm-tiny.*digits"):
        load_preset("dit-xxl")


def test_describe_presets_names_every_preset():
    text = describe_presets()
    for name in PRESETS:
        assert name in text


# -- offline: every hub preset fails clearly, before loading anything ---------------------------------------


@pytest.mark.parametrize("name", HUB_PRESETS)
def test_hub_presets_offline_name_every_missing_model(name, empty_hub_cache):
    with pytest.raises(CheckpointNotAvailableError) as info:
        load_preset(name)
    message = str(info.value)
    assert f"preset {name!r} (offline) cannot be loaded" in message
    preset = get_preset(name)
    for source in preset.models + ((preset.vae,) if preset.vae else ()):
        assert source.label in message
        for hub_id in source.hub:
            assert repr(hub_id) in message
        for file_name in source.files:
            assert file_name in message
    if preset.family == "dit":
        assert "drive.google.com" in message  # where the T-Stitch DiT-S/B files are published
    if preset.kind == "class":
        assert "--checkpoint-dir" in message and "TSTITCH_CHECKPOINT_DIR" in message
    if any(source.hub for source in preset.models):
        assert "hf download" in message
    assert "--model PATH" in message


def test_dit_preset_offline_names_only_what_is_missing(empty_hub_cache, folders):
    checkpoints = empty_hub_cache / "some-dir"
    checkpoints.mkdir()
    (checkpoints / "dit_s_256.pt").write_bytes((folders["checkpoints"] / "dit_s_256.pt").read_bytes())
    with pytest.raises(CheckpointNotAvailableError) as info:
        load_preset("dit-s-xl", checkpoint_dir=checkpoints)
    message = str(info.value)
    assert "DiT-S/2" not in message
    assert "facebook/DiT-XL-2-256" in message and "stabilityai/sd-vae-ft-ema" in message


def test_checkpoint_dir_from_the_environment(empty_hub_cache, folders, monkeypatch):
    monkeypatch.setenv("TSTITCH_CHECKPOINT_DIR", str(folders["checkpoints"]))
    loaded = load_preset("dit-s-xl", vae=str(folders["vae"]))
    assert loaded.names == ["DiT-S/2", "DiT-XL/2"]


def test_preset_models_must_match_in_number(folders):
    with pytest.raises(ValueError, match="preset 'sd15-bksdm-tiny' has 2 models .* got 1 --model"):
        load_preset("sd15-bksdm-tiny", models=[str(folders["sd"])])


# -- the digits presets: offline for real -------------------------------------------------------------------


def test_digits_preset_samples_and_compares_from_the_same_noise():
    loaded = load_preset("digits")
    assert isinstance(loaded, ClassConditionalModels) and loaded.names == ["digits-s", "digits-xl"]
    options = SampleOptions(num_steps=5, class_labels=[3, 7], progress=False)
    result = generate(loaded, options, compare=True)
    stitched, baseline = result.stitched, result.baseline
    assert stitched.images.shape == (2, 1, 8, 8) and 0 <= stitched.images.min() <= stitched.images.max() <= 1
    assert stitched.model_per_step == [0, 0, 1, 1, 1] and stitched.steps_per_model == [2, 3]
    assert baseline.model_per_step == [0] * 5 and baseline.model_names == ["digits-xl"]
    assert result.speedup == pytest.approx(baseline.seconds / stitched.seconds)
    assert not torch.equal(stitched.images, baseline.images)
    # fraction 0 is the large model alone, from the same noise
    alone = generate(loaded, SampleOptions(fractions=[0.0], num_steps=5, class_labels=[3, 7], progress=False,
                                           warmup=False))
    assert torch.equal(alone.stitched.images, baseline.images)


def test_digits_images_do_not_depend_on_the_batch_size():
    loaded = load_preset("digits")
    options = dict(num_steps=4, class_labels=[1, 2, 3], progress=False, warmup=False)
    whole = generate(loaded, SampleOptions(**options)).stitched.images
    batched = generate(loaded, SampleOptions(**options, batch_size=2)).stitched.images
    torch.testing.assert_close(whole, batched)


def test_three_digits_models():
    loaded = load_preset("digits-s-b-xl")
    result = generate(loaded, SampleOptions(fractions=[0.4, 0.2], num_steps=10, num_images=2, progress=False,
                                            warmup=False, mode="official"))
    assert result.stitched.steps_per_model == [4, 2, 4]
    assert result.settings["class_labels"] == [0, 1]


# -- the DiT presets from tiny official checkpoints ---------------------------------------------------------


def test_dit_preset_from_a_checkpoint_folder_reproduces_the_published_sampler(folders):
    loaded = load_preset("dit-s-xl", checkpoint_dir=folders["checkpoints"], vae=str(folders["vae"]))
    assert isinstance(loaded, ClassConditionalModels)
    assert [get_timestep_embedding_mode(m) for m in loaded.models] == ["official", "official"]
    assert loaded.latent_scale == 0.18215 and loaded.latent_shape == (4, 4, 4)
    labels = [207, 88]
    result = generate(loaded, SampleOptions(num_steps=5, class_labels=labels, progress=False, warmup=False))
    assert result.settings["mode"] == "official" and result.settings["guidance_scale"] == 1.5
    assert result.stitched.steps_per_model == [2, 3]

    noise = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    expected = sample_official(loaded.models, 0.4, noise=noise, class_labels=labels, num_steps=5,
                               guidance_scale=1.5)
    decoded = loaded.vae.decode(expected.latents / 0.18215).sample
    torch.testing.assert_close(result.stitched.images, ((decoded + 1) / 2).clamp(0, 1))


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpm++", "heun"])
def test_dit_preset_with_diffusers_schedulers(folders, scheduler):
    loaded = load_preset("dit-s-b-xl", checkpoint_dir=folders["checkpoints"], vae=str(folders["vae"]))
    options = SampleOptions(mode="diffusers", scheduler=scheduler, num_steps=5, fractions=[0.2, 0.4],
                            class_labels=[1], guidance_scale=4.0, progress=False, warmup=False)
    result = generate(loaded, options)
    assert result.stitched.model_per_step == [0, 1, 1, 2, 2]
    assert result.stitched.images.shape == (1, 3, 4, 4)


def test_dit_models_by_path(folders):
    loaded = load_models([str(folders["checkpoints"] / "dit_s_256.pt"),
                          str(folders["checkpoints"] / "DiT-XL-2-256x256.pt")], vae=str(folders["vae"]))
    assert loaded.names == ["dit_s_256.pt", "DiT-XL-2-256x256.pt"]
    assert loaded.defaults.mode == "official" and loaded.defaults.num_steps == 100
    with pytest.raises(ValueError, match="class labels must be in \\[0, 999\\]"):
        generate(loaded, SampleOptions(class_labels=[1000], num_steps=2, progress=False))


# -- Stable Diffusion / SDXL presets from tiny folders ------------------------------------------------------


def test_sd_preset_from_local_folders(folders):
    loaded = load_preset("sd15-bksdm-tiny", models=[str(folders["sd-small-unet"]), str(folders["sd"])],
                         local_files_only=True)
    assert isinstance(loaded, StitchedPipeline) and isinstance(loaded.pipe, StableDiffusionPipeline)
    assert isinstance(get_stitch(loaded.pipe), StitchedDenoiser)
    assert loaded.pipe.text_encoder.config.hidden_size == 8  # the large pipeline's text encoder and tokenizer
    result = generate(loaded, SampleOptions(prompts=["a cat", "a dog"], num_steps=5, progress=False), compare=True)
    assert result.settings["guidance_scale"] == 7.5  # the pipeline's default
    assert result.stitched.images.shape == (2, 3, 8, 8)
    assert result.stitched.model_per_step == [0, 0, 1, 1, 1]
    assert result.baseline.model_per_step == [0] * 5 and result.baseline.model_names == ["pipe"]
    # the pipeline is left stitched as asked, the large model's own modules still reachable
    assert get_stitch(loaded.pipe).plan.fractions == (0.4, 0.6)
    assert loaded.pipe.unet.config.cross_attention_dim == 8


def test_sd_small_model_from_a_pipeline_folder(folders):
    loaded = load_models([str(folders["sd-small-pipe"]), str(folders["sd"])])
    assert loaded.small_models[0].config.sample_size == 8
    result = generate(loaded, SampleOptions(prompts=["a cat"], num_steps=4, scheduler="euler", fractions=[0.5],
                                            progress=False, warmup=False))
    assert result.stitched.model_per_step == [0, 0, 1, 1]
    assert type(loaded.pipe.scheduler).__name__ == "EulerDiscreteScheduler"


def test_sdxl_preset_from_local_folders(folders):
    loaded = load_preset("sdxl-ssd1b", models=[str(folders["sdxl-small-unet"]), str(folders["sdxl"])])
    assert isinstance(loaded.pipe, StableDiffusionXLPipeline)
    result = generate(loaded, SampleOptions(prompts=["a cat"], num_steps=5, progress=False, warmup=False,
                                            negative_prompt="a dog"))
    assert result.stitched.model_per_step == [0, 0, 1, 1, 1]


def test_refuses_a_small_unet_of_another_cross_attention_width(folders):
    with pytest.raises(ValueError, match="cross-attention width \\(config.cross_attention_dim\\) is 16.* is 8"):
        load_preset("sd15-bksdm-tiny", models=[str(folders["sd-wide-unet"]), str(folders["sd"])])


def test_refuses_an_sd_unet_for_sdxl(folders):
    with pytest.raises(ValueError, match="added conditioning \\(config.addition_embed_type\\) is None.*'text_time'"):
        load_preset("sdxl-ssd1b", models=[str(folders["sd-small-unet"]), str(folders["sdxl"])])


def test_refuses_mixing_a_dit_with_a_pipeline(folders):
    with pytest.raises(ValueError, match="class-conditional DiT but the large model"):
        load_models([str(folders["checkpoints"] / "dit_s_256.pt"), str(folders["sd"])])
    with pytest.raises(ValueError, match="bare model folder"):
        load_models([str(folders["sd"]), str(folders["sd-small-unet"])])


# -- schedulers and bad requests ----------------------------------------------------------------------------


def test_every_scheduler_name_builds_on_the_dit_schedule():
    from tstitch.zoo import scheduler_config

    for name in SCHEDULER_NAMES:
        if name == "flow-euler":  # a flow-matching scheduler on a beta schedule: refused, naming why
            with pytest.raises(ValueError, match="'flow-euler' is a flow-matching scheduler: it needs a flow-matching"):
                make_scheduler(name, scheduler_config())
            continue
        assert make_scheduler(name, scheduler_config()).config.beta_end == 0.02
    assert make_scheduler("ddpm", scheduler_config(), learned_variance=True).config.variance_type == "learned_range"
    assert make_scheduler("DPMSolver++", scheduler_config()).config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError, match="unknown scheduler 'ddimm'; known: ddim, ddpm"):
        make_scheduler("ddimm", scheduler_config())


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(fractions=[0.2, 0.2]), "2 models take one fraction"),
        (dict(fractions=[1.5]), "must be in \\[0, 1\\]"),
        (dict(prompts=["a cat"]), "class-conditional: give --class-labels"),
        (dict(class_labels=[10]), "class labels must be in \\[0, 9\\]"),
        (dict(mode="official", scheduler="euler"), "published DiT sampler .* ddim, ddpm"),
        (dict(mode="fast"), "mode must be one of"),
        (dict(num_steps=0), "steps must be >= 1"),
        (dict(batch_size=0), "batch size must be >= 1"),
        (dict(size=256), "--size applies to text-to-image"),
    ],
)
def test_bad_requests_fail_before_sampling(options, match):
    loaded = load_preset("digits")
    with pytest.raises(ValueError, match=match):
        generate(loaded, SampleOptions(progress=False, **options))


def test_bad_requests_for_pipelines(folders):
    loaded = load_models([str(folders["sd-small-unet"]), str(folders["sd"])])
    with pytest.raises(ValueError, match="give a prompt"):
        generate(loaded, SampleOptions(progress=False))
    with pytest.raises(ValueError, match="--mode official is the published DiT sampler"):
        generate(loaded, SampleOptions(prompts=["a"], mode="official", progress=False))
    with pytest.raises(ValueError, match="text-to-image pipeline: give --prompt"):
        generate(loaded, SampleOptions(class_labels=[1], progress=False))
