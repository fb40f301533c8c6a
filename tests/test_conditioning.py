# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Per-model conditioning through ``tstitch.stitch``: each model receives its own context at its own steps.

A tiny Stable Diffusion pipeline (8-wide CLIP text encoder and U-Net) is stitched with a small U-Net whose
cross-attention is 6 wide and which has its own 6-wide CLIP text encoder. Forward pre-hooks (no tstitch code)
record what each U-Net receives; the expected contexts are computed by calling the encoders directly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from test_presets import tiny_text_encoder, tiny_tokenizer
from tiny_models import dit_pipeline, one_thread, tiny_dit, tiny_unet, tiny_vae  # noqa: F401

import tstitch
from tstitch.adapters import TextEncoderConditioning
from tstitch.compat import check_compatible

STEPS = 5  # fraction 0.4: steps 0, 1 on the small model, 2, 3, 4 on the large one


def _encode(tokenizer: Any, encoder: Any, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0]


class Recorder:
    """What each watched model computed with: (name, timestep, encoder_hidden_states or class_labels), in order.

    The stitched large model hands a small model's step on from inside its own call: a nested call replaces
    the enclosing call's entry, so each entry is the model that really ran.
    """

    def __init__(self, **models: torch.nn.Module):
        self.calls: list[tuple[str, float, torch.Tensor]] = []
        self.depth = 0
        self.handles = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, m in models.items()]
        self.handles += [m.register_forward_hook(self._done, always_call=True) for m in models.values()]

    def _hook(self, name: str):
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            value = kwargs.get("encoder_hidden_states", kwargs.get("class_labels"))
            if self.depth:
                self.calls.pop()
            self.calls.append((name, float(torch.as_tensor(t).reshape(-1)[0]), value.clone()))
            self.depth += 1
        return hook

    def _done(self, *args: Any) -> None:
        self.depth -= 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("cond")
    tokenizer = tiny_tokenizer(folder / "tok")
    return {
        "tokenizer": tokenizer,
        "large_encoder": tiny_text_encoder(8, seed=3),
        "small_encoder": tiny_text_encoder(6, seed=4),
        "large": tiny_unet(seed=1),
        "small": tiny_unet(seed=2, cross_attention_dim=6),
    }


def _pipe(parts: dict[str, Any]) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=parts["large_encoder"], tokenizer=parts["tokenizer"], unet=parts["large"],
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe: Any, parts: dict[str, Any], **kwargs: Any) -> Recorder:
    recorder = Recorder(small=parts["small"], large=parts["large"])
    try:
        pipe("abc", num_inference_steps=STEPS, height=8, width=8, output_type="latent",
             generator=torch.Generator().manual_seed(0), **kwargs)
    finally:
        recorder.remove()
    return recorder


def test_mismatched_width_without_adapter_names_the_field(parts: dict[str, Any]) -> None:
    pipe = _pipe(parts)
    with pytest.raises(ValueError, match=r"cross-attention width \(config.cross_attention_dim\) is 6.*is 8"):
        tstitch.stitch(pipe, parts["small"], 0.4)
    assert "encode_prompt" not in vars(pipe)
    check_compatible(parts["large"], parts["small"], own_conditioning=True)  # the adapter lifts it
    with pytest.raises(ValueError, match="1 adapters for 2 small models"):
        tstitch.stitch(pipe, [parts["small"], parts["small"]], [0.2, 0.2],
                       conditioning=[TextEncoderConditioning(parts["tokenizer"], parts["small_encoder"])])


@pytest.mark.parametrize("negative", [None, "xyz"])
def test_each_model_gets_its_own_encoders_context_with_guidance(parts: dict[str, Any], negative: str | None) -> None:
    pipe = _pipe(parts)
    adapter = TextEncoderConditioning(parts["tokenizer"], parts["small_encoder"])
    tstitch.stitch(pipe, parts["small"], 0.4, conditioning=[adapter])
    record = _run(pipe, parts, guidance_scale=5.0, negative_prompt=negative, num_images_per_prompt=2)
    tokenizer = parts["tokenizer"]
    # each text encoded once (a batch of one, as the adapter and diffusers encode it), then repeated per image
    small_want = torch.cat([_encode(tokenizer, parts["small_encoder"], [negative or ""]).repeat(2, 1, 1),
                            _encode(tokenizer, parts["small_encoder"], ["abc"]).repeat(2, 1, 1)])
    large_want = torch.cat([_encode(tokenizer, parts["large_encoder"], [negative or ""]).repeat(2, 1, 1),
                            _encode(tokenizer, parts["large_encoder"], ["abc"]).repeat(2, 1, 1)])
    timesteps = pipe.scheduler.timesteps.tolist()
    assert [(name, t) for name, t, _ in record.calls] == [
        ("small", timesteps[0]), ("small", timesteps[1]), ("large", timesteps[2]), ("large", timesteps[3]),
        ("large", timesteps[4]),
    ]
    for name, _, context in record.calls:
        want = small_want if name == "small" else large_want
        assert context.shape == want.shape == (4, tokenizer.model_max_length, 6 if name == "small" else 8)
        assert torch.equal(context, want)
    assert adapter.calls == 1  # encoded once per pipeline call
    assert tstitch.get_record(pipe).model_per_step() == [0, 0, 1, 1, 1]
    _run(pipe, parts, guidance_scale=5.0)
    assert adapter.calls == 2
    tstitch.unstitch(pipe)
    assert "encode_prompt" not in vars(pipe)


def test_without_guidance_the_small_model_gets_the_prompt_only(parts: dict[str, Any]) -> None:
    pipe = _pipe(parts)
    tstitch.stitch(pipe, parts["small"], 0.4,
                   conditioning=[TextEncoderConditioning(parts["tokenizer"], parts["small_encoder"])])
    record = _run(pipe, parts, guidance_scale=1.0)
    want = _encode(parts["tokenizer"], parts["small_encoder"], ["abc"])
    small_contexts = [context for name, _, context in record.calls if name == "small"]
    assert len(small_contexts) == 2 and all(torch.equal(c, want) for c in small_contexts)


def test_prompt_embeds_without_text_is_refused(parts: dict[str, Any]) -> None:
    pipe = _pipe(parts)
    tstitch.stitch(pipe, parts["small"], 0.4,
                   conditioning=[TextEncoderConditioning(parts["tokenizer"], parts["small_encoder"])])
    embeds = _encode(parts["tokenizer"], parts["large_encoder"], ["abc"])
    with pytest.raises(ValueError, match="has no prompt to encode"):
        pipe(prompt_embeds=embeds, num_inference_steps=STEPS, height=8, width=8, output_type="latent",
             guidance_scale=1.0)


def test_a_plain_callable_adapter_and_unchanged_models_without_one() -> None:
    """A lambda adapter on a DiT pipeline: the small model gets its labels mapped; the large model, the call's."""
    large, small = tiny_dit(seed=1), tiny_dit(seed=2)
    pipe = dit_pipeline(large, DDIMScheduler())

    def shift(kwargs: dict[str, Any]) -> dict[str, Any]:
        labels = kwargs["class_labels"]
        return {**kwargs, "class_labels": torch.where(labels < 1000, (labels + 1) % 1000, labels)}

    tstitch.stitch(pipe, small, 0.4, conditioning=[shift])
    recorder = Recorder(small=small, large=large)
    pipe(class_labels=[3, 999], num_inference_steps=STEPS, guidance_scale=4.0, output_type="np",
         generator=torch.Generator().manual_seed(0))
    recorder.remove()
    got = [(name, labels.tolist()) for name, _, labels in recorder.calls]
    assert got == [("small", [4, 0, 1000, 1000])] * 2 + [("large", [3, 999, 1000, 1000])] * 3
    # Without an adapter the same run is bit-identical to a stitch made before this feature existed.
    tstitch.stitch(pipe, small, 0.4, conditioning=[None])
    first = pipe(class_labels=[3], num_inference_steps=STEPS, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    tstitch.stitch(pipe, small, 0.4)
    second = pipe(class_labels=[3], num_inference_steps=STEPS, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert (first == second).all()


def test_a_model_stitched_in_a_collected_pipeline_still_works_in_another(parts: dict[str, Any]) -> None:
    import gc

    first = _pipe(parts)
    tstitch.stitch(first, parts["small"], 0.4,
                   conditioning=[TextEncoderConditioning(parts["tokenizer"], parts["small_encoder"])])
    del first
    gc.collect()
    second = _pipe(parts)
    tstitch.stitch(second, parts["small"], 0.4,
                   conditioning=[TextEncoderConditioning(parts["tokenizer"], parts["small_encoder"])])
    record = _run(second, parts, guidance_scale=1.0)
    assert [name for name, _, _ in record.calls] == ["small", "small", "large", "large", "large"]
    tstitch.unstitch(second)


def test_a_text_encoder_adapter_on_a_pipeline_without_prompts_is_refused_before_any_change(parts) -> None:
    large, small = tiny_dit(seed=1), tiny_dit(seed=2)
    pipe = dit_pipeline(large, DDIMScheduler())
    with pytest.raises(ValueError, match=r"conditioning\[0\] encodes the prompts itself, but DiTPipeline has no "):
        tstitch.stitch(pipe, small, 0.4,
                       conditioning=[TextEncoderConditioning(parts["tokenizer"], parts["small_encoder"])])
    assert "forward" not in vars(large) and "_tstitch_stitch" not in vars(pipe)
