# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The fast paths (compile, half precision, channels-last, offloading) keep the stitch schedule: checked with
the StitchRecord and an independent call log on tiny models, on CPU.

The compile tests use the ``eager`` backend: recompilation is decided by dynamo's guards, which are the same
whatever backend compiles the graphs, and ``eager`` keeps the tests in seconds. The same check with the
default ``inductor`` backend (about a minute on a 2-core CPU) runs when ``TSTITCH_SLOW_TESTS=1``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo
from tiny_models import (  # one_thread: an autouse fixture
    CROSS_ATTENTION_DIM,
    DIT_SAMPLE_SIZE,
    LATENT_CHANNELS,
    SCHEDULERS,
    CallLog,
    one_thread,  # noqa: F401
    sd_pipeline,
    tiny_dit,
    tiny_unet,
)

import tstitch
from tstitch.models.fastpaths import (
    FastPaths,
    OffloadSwitch,
    compile_models,
    compiled_graph_count,
    disable_offload,
    enable_offload,
    parse_dtype,
    set_dtype,
    to_channels_last,
)

STEPS = 5
LABELS = [1, 7, 42]


def dit_pair():
    small, large = tiny_dit(0), tiny_dit(1, num_layers=2)
    small._tstitch_name, large._tstitch_name = "small", "large"
    return small, large


def noise(dtype=torch.float32):
    shape = (len(LABELS), LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def run(models, fraction, dtype=torch.float32):
    return tstitch.sample(list(models), fraction, SCHEDULERS["ddim"](), noise=noise(dtype), class_labels=LABELS,
                          num_inference_steps=STEPS, guidance_scale=3.0)


def plan(fraction):
    return tstitch.Plan.from_small_fractions(fraction).assignment(STEPS)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def check_compiled_switching(backend):
    """Compiled models follow the schedule (the record, and outputs equal to the eager models': a model run
    at the wrong step would change them) and switching between them compiles nothing."""
    small, large = dit_pair()
    fractions = (0.4, 0.6, 0.0, 1.0, 0.4)
    reference = {r: run((small, large), r).latents for r in fractions}
    compile_models([small, large], backend=backend)
    run((small, large), 0.4)  # warm-up: each model compiles at its first call
    graphs = compiled_graph_count()
    assert graphs >= 2
    with torch._dynamo.config.patch(error_on_recompile=True):
        for r in fractions:
            result = run((small, large), r)
            assert result.record.model_per_step() == plan(r)
            torch.testing.assert_close(result.latents, reference[r], rtol=1e-4, atol=1e-5)
    assert compiled_graph_count() == graphs  # switching models compiled nothing new


def test_compiled_models_switch_without_recompiling(fresh_dynamo):
    check_compiled_switching("eager")


@pytest.mark.skipif(os.environ.get("TSTITCH_SLOW_TESTS") != "1",
                    reason="slow (inductor compiles C++ on the CPU, about a minute): set TSTITCH_SLOW_TESTS=1")
def test_inductor_compiled_models_switch_without_recompiling(fresh_dynamo):
    check_compiled_switching("inductor")


def test_compiled_models_in_a_stitched_pipeline_keep_the_schedule(fresh_dynamo):
    small, large = tiny_unet(0), tiny_unet(1, layers_per_block=2)
    compile_models([small, large], backend="eager")
    pipe = tstitch.stitch(sd_pipeline(large, SCHEDULERS["ddim"]()), small, 0.4)
    prompt = torch.randn(1, 4, CROSS_ATTENTION_DIM, generator=torch.Generator().manual_seed(0))
    call = dict(prompt_embeds=prompt, negative_prompt_embeds=prompt * 0, num_inference_steps=STEPS,
                guidance_scale=5.0, output_type="latent")
    pipe(**call)
    graphs = compiled_graph_count()
    with torch._dynamo.config.patch(error_on_recompile=True):
        pipe(**call)
    assert tstitch.get_record(pipe).model_per_step() == plan(0.4)
    assert compiled_graph_count() == graphs


def test_half_precision_keeps_the_schedule():
    small, large = dit_pair()
    set_dtype([small, large], "bf16")
    assert small.dtype == large.dtype == torch.bfloat16
    result = run((small, large), 0.6, dtype=torch.bfloat16)
    assert result.record.model_per_step() == plan(0.6)
    assert result.latents.dtype == torch.bfloat16 and torch.isfinite(result.latents.float()).all()


def test_channels_last_keeps_the_schedule_and_the_result():
    small, large = tiny_unet(0), tiny_unet(1, layers_per_block=2)
    prompt = torch.randn(1, 4, CROSS_ATTENTION_DIM, generator=torch.Generator().manual_seed(0))
    call = dict(prompt_embeds=prompt, negative_prompt_embeds=prompt * 0, num_inference_steps=STEPS,
                guidance_scale=5.0, output_type="latent", generator=torch.Generator().manual_seed(0))
    pipe = tstitch.stitch(sd_pipeline(large, SCHEDULERS["ddim"]()), small, 0.4)
    reference = pipe(**call).images
    to_channels_last([small, large])
    assert large.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    call["generator"] = torch.Generator().manual_seed(0)
    images = pipe(**call).images
    assert tstitch.get_record(pipe).model_per_step() == plan(0.4)
    torch.testing.assert_close(images, reference, rtol=1e-3, atol=1e-4)  # other conv kernels, same models


def spy_moves(models, names):
    """Log every ``.to(device)`` of the models as ``(name, device)``."""
    moves = []
    for model, name in zip(models, names, strict=True):
        original = model.to

        def to(*args, _original=original, _name=name, **kwargs):
            device = kwargs.get("device", args[0] if args else None)
            moves.append((_name, str(device)))
            return _original(*args, **kwargs)

        model.to = to
    return moves


def test_offload_moves_the_idle_model_away_and_keeps_the_schedule():
    small, large = dit_pair()
    denoiser = tstitch.StitchedDenoiser([small, large], tstitch.Plan.from_small_fractions(0.4))
    moves = spy_moves([small, large], ["small", "large"])
    switch = enable_offload(denoiser, device="cpu", offload_device="cpu")
    assert isinstance(switch, OffloadSwitch) and denoiser.before_call is switch
    assert moves == [("small", "cpu"), ("large", "cpu")]  # parked: the large model stays home
    moves.clear()
    with CallLog(small=small, large=large) as log:
        result = tstitch.sample(denoiser, None, SCHEDULERS["ddim"](), noise=noise(), class_labels=LABELS,
                                num_inference_steps=STEPS, guidance_scale=3.0)
    assert result.record.model_per_step() == plan(0.4) == [0, 0, 1, 1, 1]
    assert log.names == ["small", "small", "large", "large", "large"]
    # one swap when the small model starts, one at the switch: the large model out, the small one in, and back
    assert moves == [("large", "cpu"), ("small", "cpu"), ("small", "cpu"), ("large", "cpu")]
    assert switch.swaps == 2 and switch.seconds >= 0.0 and switch.resident == 1
    disable_offload(denoiser)
    assert denoiser.before_call is None


def test_offload_on_a_pipeline_needs_a_stitched_one():
    small, large = tiny_unet(0), tiny_unet(1, layers_per_block=2)
    pipe = sd_pipeline(large, SCHEDULERS["ddim"]())
    with pytest.raises(ValueError, match="not stitched"):
        enable_offload(pipe)
    tstitch.stitch(pipe, small, 0.4)
    switch = enable_offload(pipe, "cpu")
    assert tstitch.get_record(pipe) is not None and switch.device == torch.device("cpu")
    disable_offload(pipe)


def test_fast_paths_bundle_and_names():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("fp16") is torch.float16 and parse_dtype(None) is None
    with pytest.raises(ValueError, match="unknown precision"):
        FastPaths(dtype="fp8")
    small, large = dit_pair()
    FastPaths(dtype="bf16", channels_last=True).apply([small, large])
    assert large.dtype == torch.bfloat16
    assert str(FastPaths()) == "none"
    assert str(FastPaths(compile=True, dtype="fp16", offload=True)) == "compile(inductor) + float16 + offload"
    assert FastPaths(dtype="fp16").as_dict()["dtype"] == "float16"
