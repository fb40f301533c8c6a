# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The stitch as a hook on the pipeline's own model: saving, copying, threads, compile, cache hooks, unstitch."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch
from diffusers import DiTPipeline, PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast
from tiny_models import (  # one_thread: an autouse fixture
    SCHEDULERS,
    dit_pipeline,
    follow_plan,
    one_thread,  # noqa: F401
    tiny_dit,
)

import tstitch
from tstitch.planfile import plan_to_dict
from tstitch.stepcount import THREAD_ERROR
from tstitch.stitcher import suspended

LABELS = [1, 7, 42]
N = 5


def run(pipe, steps: int = N) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    images = pipe(LABELS, num_inference_steps=steps, guidance_scale=4.0, generator=generator, output_type="np").images
    return torch.as_tensor(images)


def stitched_pair(fraction: float = 0.4, scheduler: str = "ddim"):
    small, large = tiny_dit(1), tiny_dit(2)
    return tstitch.stitch(dit_pipeline(large, SCHEDULERS[scheduler]()), small, fraction), small, large


# -- unstitch leaves the model as it was ---------------------------------------------------------------------


def test_unstitch_leaves_the_model_bit_identical():
    small, large = tiny_dit(1), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["heun"]())
    attrs, state = dict(vars(large)), {k: v.clone() for k, v in large.state_dict().items()}
    before = run(pipe)
    tstitch.stitch(pipe, small, 0.4)
    assert "forward" in vars(large)
    run(pipe)
    tstitch.unstitch(pipe)
    assert vars(large).keys() == attrs.keys() and "forward" not in vars(large)
    assert all(vars(large)[k] is v for k, v in attrs.items() if k not in ("_parameters", "_buffers", "_modules"))
    assert all(torch.equal(v, large.state_dict()[k]) for k, v in state.items())
    assert torch.equal(run(pipe), before)


# -- save_pretrained / save_stitch ---------------------------------------------------------------------------


def test_save_pretrained_writes_the_large_models_pipeline(tmp_path):
    pipe, small, large = stitched_pair()
    stitched = run(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    assert pipe.transformer is large and tstitch.get_record(pipe).model_per_step() == [0, 0, 1, 1, 1]
    loaded = DiTPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.transformer) is type(large) and "forward" not in vars(loaded.transformer)
    with suspended(pipe):
        assert torch.equal(run(loaded), run(pipe))  # the large model alone, saved and reloaded
    assert torch.equal(run(pipe), stitched)  # the stitch is still on


def test_save_and_load_a_stitch(tmp_path):
    small, middle, large = tiny_dit(1), tiny_dit(3), tiny_dit(2)
    small._tstitch_name = "DiT-S"
    pipe = dit_pipeline(large, SCHEDULERS["dpmsolver++"]())
    plan = tstitch.Plan.from_sequence([1, 0, 2, 2, 1], names=["S", "B", "XL"])
    tstitch.stitch(pipe, [small, middle], plan)
    stitched = run(pipe)
    folder = tstitch.save_stitch(pipe, tmp_path / "stitch")
    data = json.loads((folder / "stitch.json").read_text())
    assert data["plan"] == plan_to_dict(plan)
    assert [m["name"] for m in data["models"]] == ["DiT-S", "DiTTransformer2DModel[1]"]
    with pytest.raises(FileExistsError, match="exists; not overwriting"):
        tstitch.save_stitch(pipe, folder)

    fresh = dit_pipeline(tiny_dit(2), SCHEDULERS["dpmsolver++"]())
    tstitch.load_stitch(fresh, folder)
    assert torch.equal(run(fresh), stitched)
    record = tstitch.get_record(fresh)
    assert record.model_names[:2] == ["DiT-S", "DiTTransformer2DModel[1]"]
    assert record.model_per_step() == [1, 0, 2, 2, 1] and tstitch.get_stitch(fresh).plan == plan


def test_load_stitch_validates_the_folder(tmp_path):
    pipe = dit_pipeline(tiny_dit(2), SCHEDULERS["ddim"]())
    with pytest.raises(FileNotFoundError, match="not a folder written by save_stitch"):
        tstitch.load_stitch(pipe, tmp_path)
    cases = {
        "{": "is not valid JSON",
        '{"version": 2}': "version must be 1, got 2",
        '{"version": 1, "models": []}': "models must be a non-empty list",
        '{"version": 1, "models": [{"class": "os", "path": "m"}], "plan": {"version": 1, "num_models": 2, '
        '"fractions": [0.5, 0.5]}}': r"models\[0\].class must name a diffusers model class",
        '{"version": 1, "models": [{"class": "DiTTransformer2DModel", "path": "../x"}], "plan": {"version": 1, '
        '"num_models": 2, "fractions": [0.5, 0.5]}}': r"models\[0\].path must be a folder inside",
        '{"version": 1, "models": [{"class": "DiTTransformer2DModel", "path": "m"}], "plan": {"version": 1, '
        '"num_models": 2, "sequence": [0, 5]}}': r"sequence\[1\] is 5, not a model index",
    }
    for text, message in cases.items():
        (tmp_path / "stitch.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            tstitch.load_stitch(pipe, tmp_path)
    assert "forward" not in vars(pipe.transformer)


# -- copying --------------------------------------------------------------------------------------------------


def test_deepcopy_of_a_stitched_pipeline_is_refused_and_works_after_unstitch():
    pipe, small, large = stitched_pair()
    stitched = run(pipe)
    for target in (pipe, large):
        with pytest.raises(RuntimeError, match=r"cannot be deep-copied: call tstitch.unstitch\(pipe\) first"):
            copy.deepcopy(target)
    assert torch.equal(run(pipe), stitched)  # the failed copy left the pipeline working
    tstitch.unstitch(pipe)
    plain = run(pipe)
    copied = copy.deepcopy(pipe)
    assert copied.transformer is not large and torch.equal(run(copied), plain)
    tstitch.stitch(copied, small, 0.4)
    assert torch.equal(run(copied), stitched)


# -- threads --------------------------------------------------------------------------------------------------


def test_two_threads_at_once_get_the_right_images_or_a_clear_error():
    pipe, small, large = stitched_pair(scheduler="dpmsolver++")
    expected, expected_calls = run(pipe), list(tstitch.get_record(pipe).calls)
    outcomes = []
    for _ in range(3):
        barrier = threading.Barrier(2, timeout=2)

        def wait(*args, barrier=barrier):
            try:
                barrier.wait()  # both threads are inside a run before either goes on
            except threading.BrokenBarrierError:
                pass

        handle = small.register_forward_pre_hook(wait)
        results: list = [None, None]

        def work(i, results=results):
            try:
                results[i] = run(pipe)
            except RuntimeError as error:
                results[i] = error

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        handle.remove()
        for result in results:
            if isinstance(result, RuntimeError):
                assert str(result) == THREAD_ERROR
            else:
                assert torch.equal(result, expected)  # never a silently wrong image
        if sum(isinstance(r, torch.Tensor) for r in results) == 1:
            assert tstitch.get_record(pipe).calls == expected_calls  # the record is the surviving run's
        outcomes.append(tuple(type(r).__name__ for r in results))
        assert torch.equal(run(pipe), expected)  # one thread again: back to normal
        assert tstitch.get_record(pipe).calls == expected_calls
    assert any("RuntimeError" in outcome for outcome in outcomes)  # the runs really overlapped


def test_sequential_use_from_several_threads_is_fine():
    pipe, _, _ = stitched_pair()
    expected = run(pipe)
    results = []
    for _ in range(2):
        thread = threading.Thread(target=lambda: results.append(run(pipe)))
        thread.start()
        thread.join()
    assert len(results) == 2 and all(torch.equal(r, expected) for r in results)


# -- torch.compile and diffusers' cache hooks --------------------------------------------------------------


def test_compiled_models_in_a_stitch():
    torch._dynamo.reset()
    pipe, small, large = stitched_pair()
    expected = run(pipe)
    small.compile(backend="aot_eager")
    large.compile(backend="aot_eager")
    compiled = run(pipe)  # dynamo's graphs run the same arithmetic; the kernels may differ in the last bits
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-5)
    with torch._dynamo.config.patch(error_on_recompile=True):  # the routing is not traced: no recompilation
        assert torch.equal(run(pipe), compiled)  # the same graphs again
    assert tstitch.get_record(pipe).model_per_step() == [0, 0, 1, 1, 1]
    tstitch.unstitch(pipe)
    torch._dynamo.reset()


def test_pyramid_attention_broadcast_on_the_large_model():
    def pab():
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 10_000),
            current_timestep_callback=lambda: 500,
        )

    small, large, twin = tiny_dit(1), tiny_dit(2), tiny_dit(2)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    tstitch.stitch(pipe, small, 0.4)
    without_cache = run(pipe)
    apply_pyramid_attention_broadcast(large, pab())
    apply_pyramid_attention_broadcast(twin, pab())
    with_cache = run(pipe)
    assert not torch.equal(with_cache, without_cache)  # the cache acted on the large model's steps
    with follow_plan(twin, [small], [0, 0, 1, 1, 1]):  # the same cache, driven by hand
        assert torch.equal(run(dit_pipeline(twin, SCHEDULERS["ddim"]())), with_cache)


def test_unstitch_after_model_offload_was_switched_on_and_off():
    pipe, small, large = stitched_pair()
    expected = run(pipe)
    pipe.enable_model_cpu_offload(device="cpu")  # accelerate wraps the stitch, and re-wraps after each call
    assert torch.equal(run(pipe), expected)
    pipe.remove_all_hooks()
    assert torch.equal(run(pipe), expected)
    tstitch.unstitch(pipe)
    assert "forward" not in vars(large) and "_old_forward" not in vars(large)
    assert torch.equal(run(pipe), run(dit_pipeline(tiny_dit(2), SCHEDULERS["ddim"]())))


# -- several pipelines around one model ---------------------------------------------------------------------


def test_a_plain_pipeline_sharing_the_model_runs_it_unstitched():
    pipe, small, large = stitched_pair()
    stitched = run(pipe)
    plain = dit_pipeline(large, SCHEDULERS["ddim"]())  # the same model object, no stitch
    expected_plain = run(dit_pipeline(tiny_dit(2), SCHEDULERS["ddim"]()))
    assert torch.equal(run(plain), expected_plain)  # outside the stitched pipeline's runs: the large model
    assert tstitch.get_record(pipe).model_per_step() == [0, 0, 1, 1, 1]  # not touched by the plain run
    assert torch.equal(run(pipe), stitched) and torch.equal(run(plain), expected_plain)


def test_two_stitched_pipelines_around_one_model():
    small, large = tiny_dit(1), tiny_dit(2)
    first = tstitch.stitch(dit_pipeline(large, SCHEDULERS["ddim"]()), small, 0.2)
    second = tstitch.stitch(dit_pipeline(large, SCHEDULERS["heun"]()), small, 0.6)
    reference = {}
    for name, fraction, scheduler in (("first", 0.2, "ddim"), ("second", 0.6, "heun")):
        reference[name] = run(tstitch.stitch(dit_pipeline(tiny_dit(2), SCHEDULERS[scheduler]()), tiny_dit(1), fraction))
    for _ in range(2):
        assert torch.equal(run(first), reference["first"]) and torch.equal(run(second), reference["second"])
    assert tstitch.get_record(first).model_per_step() == [0, 1, 1, 1, 1]
    assert tstitch.get_record(second).model_per_step() == [0, 0, 0, 1, 1]
    tstitch.unstitch(first)
    assert "forward" in vars(large)  # the second stitch still hooks the model
    assert torch.equal(run(second), reference["second"])
    tstitch.unstitch(second)
    assert "forward" not in vars(large)


def test_two_stitched_pipelines_sharing_model_and_scheduler_are_refused_at_the_call():
    small, large = tiny_dit(1), tiny_dit(2)
    first = tstitch.stitch(dit_pipeline(large, SCHEDULERS["ddim"]()), small, 0.2)
    second = DiTPipeline(**first.components)  # the same scheduler object and the same model
    second.set_progress_bar_config(disable=True)
    tstitch.stitch(second, small, 0.6)
    with pytest.raises(RuntimeError, match="2 stitched pipelines share this model and are all in the middle of a run"):
        run(first)
    tstitch.unstitch(second)
    run(first)  # alone again: fine
    assert tstitch.get_record(first).model_per_step() == [0, 1, 1, 1, 1]
