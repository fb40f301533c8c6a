# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Bad input to the Python API (sampling, schedulers, model loading): a ValueError naming the argument and its
value, raised before any model call; and every scheduler row either samples every family or is refused up front.

Each case here failed (a traceback, or silent garbage) before the checks were written."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_checkpoints import random_official_state_dict
from test_stitch_pipelines import PROMPT, SD3_POOLED, SD3_PROMPT
from tiny_models import (  # noqa: F401  (one_thread: an autouse fixture)
    DIT_SAMPLE_SIZE,
    LATENT_CHANNELS,
    one_thread,
    sd3_pipeline,
    sd_pipeline,
    tiny_dit,
    tiny_sd3_transformer,
    tiny_unet,
)

import tstitch
from tstitch.experiments.batches import sample_batches
from tstitch.models.checkpoints import load_dit, save_dit_safetensors
from tstitch.models.families import FAMILIES
from tstitch.models.loading import load_models, load_preset
from tstitch.sampling import SCHEDULERS, Guidance, make_scheduler, scheduler_factory
from tstitch.sampling.checks import check_device
from tstitch.sampling.official import sample_official
from tstitch.sampling.schedulers import DIT_NOISE_SCHEDULE, SD_NOISE_SCHEDULE, is_flow_matching

NAN, INF = float("nan"), float("inf")
STEPS = 3


class Counted:
    """Counts the forward calls of some models (to show that a refusal came before any work)."""

    def __init__(self, *models: torch.nn.Module):
        self.calls = 0
        self.handles = [m.register_forward_hook(self._count) for m in models]

    def _count(self, *_):
        self.calls += 1

    def __enter__(self) -> Counted:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def ten_class():
    """A small and a large DiT with 10 classes (the digits models' count; 10 is their null class)."""
    return [tiny_dit(0, num_embeds_ada_norm=10), tiny_dit(1, num_embeds_ada_norm=10, num_layers=2)]


def noise(batch: int = 2, **kwargs) -> torch.Tensor:
    return torch.randn(batch, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE,
                       generator=torch.Generator().manual_seed(0), **kwargs)


def run_sample(models, **overrides):
    kwargs = dict(noise=noise(), class_labels=[1, 2], num_inference_steps=STEPS, guidance_scale=2.0)
    kwargs.update(overrides)
    scheduler = kwargs.pop("scheduler", None) or make_scheduler("ddim", DIT_NOISE_SCHEDULE)
    return tstitch.sample(models, kwargs.pop("fractions", 0.5), scheduler, **kwargs)


def run_official(models, **overrides):
    kwargs = dict(noise=noise(), class_labels=[1, 2], num_steps=STEPS, guidance_scale=2.0)
    kwargs.update(overrides)
    return sample_official(models, kwargs.pop("fractions", 0.5), **kwargs)


def run_batches(models, **overrides):
    kwargs = dict(noise=noise(), labels=torch.tensor([1, 2]), num_steps=STEPS, guidance_scale=2.0, batch_size=1)
    kwargs.update(overrides)
    return sample_batches(models, [0.5], scheduler_factory("ddim", DIT_NOISE_SCHEDULE), kwargs.pop("noise"),
                          kwargs.pop("labels"), **kwargs)


SAMPLERS = {"sample": run_sample, "sample_official": run_official, "sample_batches": run_batches}


def refused(run, models, match: str, **overrides) -> None:
    """``run`` raises ValueError matching ``match`` and never calls a model."""
    with Counted(*models) as counted, pytest.raises(ValueError, match=match):
        run(models, **overrides)
    assert counted.calls == 0


# -- guidance (issue 14, case 3) -----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("scale", [-3, -0.5, NAN, INF, -INF, True, "2", None])
def test_guidance_scale_must_be_finite_and_not_negative(ten_class, sampler, scale):
    refused(SAMPLERS[sampler], ten_class, r"guidance_scale must be a finite number >= 0 \(guidance is on above 1\), "
            f"got {re.escape(repr(scale))}", guidance_scale=scale)


@pytest.mark.parametrize("scale", [-3, NAN, INF])
def test_guidance_objects_refuse_bad_scales(scale):
    with pytest.raises(ValueError, match=f"guidance scale must be a finite number >= 0.*got {scale}"):
        Guidance(scale)


def test_guidance_options_refused():
    with pytest.raises(ValueError, match="null_class must be an integer >= 0 or None, got -1"):
        Guidance(2.0, null_class=-1)
    with pytest.raises(ValueError, match="guided_channels must be an integer >= 0 or None, got 1.5"):
        Guidance(2.0, guided_channels=1.5)


@pytest.mark.parametrize("guided", [5, -1, 1.5])
def test_guided_channels_beyond_the_latents(ten_class, guided):
    refused(run_sample, ten_class, "guided_channels must be", guided_channels=guided)
    if guided != 5:  # the published sampler's default (3) exceeds 1-channel latents: it then guides them all
        refused(run_official, ten_class, "guided_channels must be an integer >= 0", guided_channels=guided)


@pytest.mark.parametrize("scale", [0, 0.5, 1.0, 1.5])
def test_finite_scales_still_sample(ten_class, scale):
    assert torch.isfinite(run_sample(ten_class, guidance_scale=scale).latents).all()
    assert torch.isfinite(run_official(ten_class, guidance_scale=scale).latents).all()


# -- labels and step counts (case 5) -------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("labels, match", [
    ([10, 1], r"class_labels must be in \[0, 9\], got \[10\] \(10 is the null class"),
    ([-1, 1], r"class_labels must be in \[0, 9\], got \[-1\]"),
    ([11, 1], r"class_labels must be in \[0, 9\], got \[11\]"),
    ([1.7, 1], r"class_labels must be whole numbers, got \[1.7\]"),
    ([NAN, 1], r"class_labels must be whole numbers"),
    ([1, 2, 3], r"3 class labels for a batch of 2|3 labels for 2 noise samples"),
    ([[1], [2]], r"one label per sample \(1-D\)"),
    ([True, False], "class_labels must be integers, got dtype torch.bool"),
    (["a", "b"], "class_labels must be integers"),
])
def test_labels_outside_the_classes(ten_class, sampler, labels, match):
    if sampler == "sample_batches":
        if labels in ([[1], [2]], ["a", "b"]):
            return  # sample_batches takes a labels tensor; its own length check is below
        refused(run_batches, ten_class, match, labels=torch.tensor(labels))
        return
    refused(SAMPLERS[sampler], ten_class, match, class_labels=labels)


def test_labels_as_floats_holding_whole_numbers_are_accepted(ten_class):
    as_floats = run_sample(ten_class, class_labels=[1.0, 2.0]).latents
    assert torch.equal(as_floats, run_sample(ten_class, class_labels=[1, 2]).latents)


@pytest.mark.parametrize("steps", [-5, 0, 2.5, 3.0, "3", True, None, 1001])
def test_step_counts(ten_class, steps):
    got = re.escape(repr(steps))
    refused(run_sample, ten_class, rf"num_inference_steps must be an integer in \[1, 1000\], got {got}",
            num_inference_steps=steps)
    refused(run_official, ten_class, rf"num_steps must be an integer in \[1, 1000\], got {got}", num_steps=steps)
    if steps != 1001:  # sample_batches checks through sample, per batch: also before any model call
        refused(run_batches, ten_class, "num_inference_steps must be an integer", num_steps=steps)


def test_step_counts_of_the_bare_loop(ten_class):
    from tstitch.sampling import denoise

    with pytest.raises(ValueError, match=r"num_inference_steps must be an integer in \[1, 1000\], got 0"):
        denoise(lambda step: ten_class[0], make_scheduler("ddim", DIT_NOISE_SCHEDULE), noise(), num_inference_steps=0)


@pytest.mark.parametrize("eta", [-0.1, 1.5, NAN, "0"])
def test_official_eta(ten_class, eta):
    refused(run_official, ten_class, r"eta must be a number in \[0, 1\]", eta=eta)


@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_official_train_timesteps(ten_class, value):
    refused(run_official, ten_class, "num_train_timesteps must be an integer >= 1", num_train_timesteps=value)


# -- noise, batches, models and fractions ----------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["sample", "sample_official"])
@pytest.mark.parametrize("bad, match", [
    (torch.randn(2, 3, 4, 4), "noise has 3 channels"),
    (torch.randn(2, 4, 8, 8), "noise is 8x8"),
    (torch.randn(0, 4, 4, 4), "at least one sample"),
    (torch.randn(4, 4, 4), r"noise must be \(batch, channels, height, width\), got shape \(4, 4, 4\)"),
    (torch.ones(2, 4, 4, 4, dtype=torch.long), "floating-point tensor, got dtype torch.int64"),
    (torch.full((2, 4, 4, 4), NAN), "noise holds NaN or inf"),
    (torch.full((2, 4, 4, 4), INF), "noise holds NaN or inf"),
    ([[0.0]], "noise must be a torch tensor"),
])
def test_bad_noise(ten_class, sampler, bad, match):
    labels = [1, 2][: len(bad)] if torch.is_tensor(bad) and bad.ndim == 4 else [1, 2]
    refused(SAMPLERS[sampler], ten_class, match, noise=bad, class_labels=labels)


def test_noise_of_another_dtype_than_the_models(ten_class):
    refused(run_sample, ten_class, r"noise has dtype torch.float64 but the model's is torch.float32",
            noise=noise(dtype=torch.float64))


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, None])
def test_batch_size(ten_class, batch_size):
    refused(run_batches, ten_class, f"batch_size must be an integer >= 1, got {batch_size}", batch_size=batch_size)


def test_batches_of_mismatched_lengths(ten_class):
    refused(run_batches, ten_class, "got 3 labels for 2 noise samples", labels=torch.tensor([1, 2, 3]))
    refused(run_batches, ten_class, "got 1 generators for 2 noise samples",
            generators=[torch.Generator().manual_seed(0)])


def test_models_and_fractions(ten_class):
    refused(run_sample, ten_class, "fractions is None for 2 models", fractions=None)
    with pytest.raises(ValueError, match="models is empty"):
        run_sample([])
    refused(run_sample, ten_class, r"fractions\[0\] must be in \[0, 1\], got nan", fractions=NAN)
    refused(run_official, ten_class, r"fractions\[0\] must be in \[0, 1\]", fractions=1.5)


# -- schedulers (case 6): every row with every family it is offered for --------------------------------------


def digits_schedule() -> dict:
    return FAMILIES["digits"].noise_schedule()


@pytest.fixture(scope="module")
def digits_models():
    load = FAMILIES["digits"].load
    return [load(name, device=torch.device("cpu"), dtype=torch.float32) for name in ("digits-s", "digits-xl")]


def sd_pipe(scheduler_name: str):
    from diffusers import PNDMScheduler

    pipe = sd_pipeline(tiny_unet(seed=1), PNDMScheduler.from_config(SD_NOISE_SCHEDULE, skip_prk_steps=True))
    pipe.scheduler = make_scheduler(scheduler_name, pipe.scheduler)  # as tstitch sample does
    tstitch.stitch(pipe, tiny_unet(seed=2), 0.5)
    return pipe


def sd3_pipe(scheduler_name: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = sd3_pipeline(tiny_sd3_transformer(seed=1), FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.scheduler = make_scheduler(scheduler_name, pipe.scheduler)
    tstitch.stitch(pipe, tiny_sd3_transformer(seed=2), 0.5)
    return pipe


FLOW_ROWS = [name for name, row in SCHEDULERS.items() if row.flow_matching]


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_with_the_class_families(ten_class, digits_models, name):
    """The digits and DiT families (the bare loop, learned sigma or not) at 1, 2 (the warm-up's count) and 4
    steps; a flow-matching row is refused when it is built, naming why."""
    for models, schedule, learned, labels in ((ten_class, DIT_NOISE_SCHEDULE, True, [1, 2]),
                                              (digits_models, digits_schedule(), False, [3, 4])):
        if name in FLOW_ROWS:
            message = rf"scheduler '{re.escape(name)}' is a flow-matching scheduler: it needs a flow-matching model"
            with pytest.raises(ValueError, match=message):
                make_scheduler(name, schedule, learned_variance=learned)
            with pytest.raises(ValueError, match="needs a flow-matching model"):
                scheduler_factory(name, schedule)
            continue
        channels, size = models[-1].config.in_channels, models[-1].config.sample_size
        start = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
        for steps in (1, 2, 4):
            out = tstitch.sample(models, 0.5, make_scheduler(name, schedule, learned_variance=learned), noise=start,
                                 class_labels=labels, num_inference_steps=steps, guidance_scale=1.5,
                                 generator=torch.Generator().manual_seed(1))
            assert torch.isfinite(out.latents).all(), (name, steps)
            assert out.record.model_per_step()[-1] == 1  # the large model finishes


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_with_the_pipeline_family(name):
    """Stable Diffusion (noise prediction) takes every diffusion row; SD3 (flow matching) the flow rows; the
    other pairings are refused when the scheduler is built, naming the kind of model each needs."""
    if name in FLOW_ROWS:
        message = rf"scheduler '{re.escape(name)}' is a flow-matching scheduler.*PNDMScheduler"
        with pytest.raises(ValueError, match=message):
            sd_pipe(name)
        pipe = sd3_pipe(name)
        run = dict(prompt_embeds=SD3_PROMPT, pooled_prompt_embeds=SD3_POOLED)
    else:
        message = rf"scheduler '{re.escape(name)}' is a diffusion scheduler, but this model is a flow-matching model"
        with pytest.raises(ValueError, match=message + r" \(FlowMatchEulerDiscreteScheduler\)"):
            sd3_pipe(name)
        pipe = sd_pipe(name)
        run = dict(prompt_embeds=PROMPT)
    for steps in (2, 4):
        latents = pipe(**run, num_inference_steps=steps, guidance_scale=1.0, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
        assert torch.isfinite(latents).all(), (name, steps)
        assert tstitch.get_record(pipe).model_per_step()[-1] == 1


def test_flow_matching_is_told_from_the_schedule():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    assert is_flow_matching(FlowMatchEulerDiscreteScheduler())
    assert is_flow_matching(FlowMatchEulerDiscreteScheduler().config)
    assert not is_flow_matching(DDIMScheduler())
    assert not is_flow_matching(DIT_NOISE_SCHEDULE)
    assert not is_flow_matching(SD_NOISE_SCHEDULE)


@pytest.mark.parametrize("name", ["nope", 3, None])
def test_unknown_scheduler_names(name):
    with pytest.raises(ValueError, match="known: ddim|must be a name"):
        make_scheduler(name, DIT_NOISE_SCHEDULE)


# -- checkpoints (cases 8, 9) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A diffusers-layout safetensors file (config in its metadata) and an official-layout .pt file."""
    folder = tmp_path_factory.mktemp("ckpt")
    st = save_dit_safetensors(tiny_dit(0), folder / "dit.safetensors")
    official = random_official_state_dict(64, 2, latent=4)
    torch.save(official, folder / "official.pt")
    return folder, st, official


def metadata_of(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


@pytest.mark.parametrize("key", ["transformer_blocks.0.attn1.to_q.weight", "proj_out_2.bias",
                                 "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"])
def test_wrong_shaped_tensor_in_safetensors(saved, tmp_path, key):
    _, st, _ = saved
    tensors = load_file(str(st))
    tensors[key] = torch.zeros(3, 5)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata_of(st))
    with pytest.raises(ValueError, match=rf"bad.safetensors: 1 tensor\(s\) have the wrong shape .*{key} is \(3, 5\) "
                                         r"in the file, \(\d+(,|(, \d+)+)\) in the model"):
        load_dit(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("key", ["blocks.0.attn.proj.weight", "final_layer.linear.bias", "t_embedder.mlp.0.weight"])
def test_wrong_shaped_tensor_in_an_official_file(saved, tmp_path, key):
    _, _, official = saved
    broken = dict(official, **{key: torch.zeros(3, 5)})
    torch.save(broken, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_dit(tmp_path / "bad.pt")


@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("kind", ["safetensors", "official", "folder"])
def test_non_finite_weights_are_refused_naming_the_tensor(saved, tmp_path, value, kind):
    _, st, official = saved
    if kind == "safetensors":
        key, tensors = "transformer_blocks.0.ff.net.2.weight", load_file(str(st))
        tensors[key][0, 0] = value
        target = tmp_path / "w.safetensors"
        save_file(tensors, str(target), metadata=metadata_of(st))
        named = key
    elif kind == "official":
        key, tensors = "blocks.1.mlp.fc2.weight", {k: v.clone() for k, v in official.items()}
        tensors[key][0, 0] = value
        target = tmp_path / "w.pt"
        torch.save({"ema": tensors}, target)
        named = r"transformer_blocks.1.ff.net.2.weight"  # the tensor under its diffusers name
    else:
        model = tiny_dit(0)
        with torch.no_grad():
            model.proj_out_1.bias[0] = value
        target = tmp_path / "folder"
        model.save_pretrained(target)
        named = "proj_out_1.bias"
    with pytest.raises(ValueError, match=rf"non-finite weights \(NaN or inf\) in {named}"):
        load_dit(target)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_files_of_the_wrong_kind(tmp_path, saved):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello, not weights")
    (tmp_path / "text.safetensors").write_text("hello, not weights")
    (tmp_path / "folder.pt").mkdir()

    class Code:
        def __reduce__(self):
            return (os.system, ("echo should never run",))

    (tmp_path / "code.pt").write_bytes(pickle.dumps({"weight": Code()}))
    cases = {
        "empty.pt": "the checkpoint file is empty", "empty.safetensors": "the checkpoint file is empty",
        "text.pt": r"not a readable PyTorch checkpoint .*it starts with b'hello", "text.safetensors":
        "not a readable safetensors file", "folder.pt": "not a diffusers DiT folder",
        "code.pt": "safe loading \\(weights_only=True\\) refuses",
    }
    for name, match in cases.items():
        with pytest.raises(ValueError, match=match):
            load_dit(tmp_path / name)


@pytest.mark.parametrize("options, match", [
    (dict(device="cuda"), "device 'cuda' is not available: this machine has no usable CUDA GPU"),
    (dict(device="cuda:3"), "device 'cuda:3' is not available"),
    (dict(device="gpu7"), "device 'gpu7' is not a device name"),
    (dict(dtype=torch.int64), "dtype must be a floating-point torch.dtype.*got torch.int64"),
    (dict(dtype="float16"), "dtype must be a floating-point torch.dtype.*got 'float16'"),
    (dict(num_attention_heads=0), "num_attention_heads must be an integer >= 1, got 0"),
    (dict(num_attention_heads=3), "num_attention_heads=3 does not divide the hidden size 8"),
    (dict(sample_size=-2), "sample_size must be an integer >= 1, got -2"),
    (dict(sample_size=5), "sample_size 5 is not a multiple of the patch size 2"),
    (dict(timestep_embedding="both"), "timestep_embedding must be"),
])
def test_load_options(saved, monkeypatch, options, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    with pytest.raises(ValueError, match=match):
        load_dit(saved[1], **options)


def test_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("cpu") == torch.device("cpu")
    for bad in ("cuda", "cuda:0", "mps", "xpu", "tpu"):
        with pytest.raises(ValueError, match=f"device '{bad}' is not"):
            check_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device 'cuda:1' does not exist: this machine has 1 CUDA device"):
        check_device("cuda:1")


def test_loaders_refuse_devices_and_dtypes_before_loading(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loads = []
    never = dataclasses.replace(FAMILIES["digits"], load=lambda *a, **k: loads.append(a))
    monkeypatch.setitem(FAMILIES, "digits", never)
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        load_preset("digits", device="cuda")
    with pytest.raises(ValueError, match="dtype must be a floating-point"):
        load_preset("digits", dtype=torch.int8)
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        load_models(["digits-s", "digits-xl"], device="cuda")
    with pytest.raises(ValueError, match="at least two --model values"):
        load_models("digits-xl")
    assert loads == []


def test_models_of_mismatched_families(tmp_path):
    dit = save_dit_safetensors(tiny_dit(0), tmp_path / "dit.safetensors")
    with pytest.raises(ValueError, match="in_channels"):
        load_models(["digits-s", str(dit)], vae=str(tmp_path / "no-vae"))
    with pytest.raises(ValueError, match="in_channels"):
        load_models([str(dit), "digits-xl"])


def test_non_finite_weights_of_any_family_are_refused(monkeypatch):
    real = FAMILIES["digits"].load

    def damaged(name, **kwargs):
        model = real(name, **kwargs)
        if name == "digits-s":
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = NAN
        return model

    monkeypatch.setitem(FAMILIES, "digits", dataclasses.replace(FAMILIES["digits"], load=damaged))
    with pytest.raises(ValueError, match=r"digits-s: non-finite weights \(NaN or inf\) in "):
        load_preset("digits")


@pytest.mark.parametrize("generator, match", [
    (5, "generator must be a torch.Generator \\(not a seed"),
    ([torch.Generator()], r"one torch.Generator per sample \(2\), got 1 items"),
    ([1, 2], r"one torch.Generator per sample \(2\), got 2 items of types \['int'\]"),
])
def test_generators(ten_class, generator, match):
    refused(run_sample, ten_class, match, generator=generator)
    refused(run_official, ten_class, "generator must be one torch.Generator or None", generator=generator)


@pytest.mark.parametrize("scheduler", ["ddim", DIT_NOISE_SCHEDULE, type(make_scheduler("ddim", DIT_NOISE_SCHEDULE))])
def test_scheduler_must_be_a_scheduler_object(ten_class, scheduler):
    refused(run_sample, ten_class, "scheduler must be a diffusers scheduler object.*make_scheduler",
            scheduler=scheduler)


def test_noise_on_another_device_than_the_models():
    models = [tiny_dit(0).to("meta"), tiny_dit(1).to("meta")]
    with pytest.raises(ValueError, match="noise is on cpu but the models are on meta"):
        run_sample(models)


def test_checkpoint_dir_that_is_not_a_folder(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"checkpoint_dir '.*nowhere' is no such folder.*dit_s_256.pt"):
        load_preset("dit-s-xl", checkpoint_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="checkpoint_dir '.*a-file' is a file, not a folder"):
        load_preset("digits", checkpoint_dir=tmp_path / "a-file")


@pytest.mark.parametrize("sampler", ["sample", "sample_official"])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_no_labels_for_class_conditional_models(ten_class, sampler, scale):
    match = r"class_labels is None, but the models are class-conditional \(10 classes\)|guidance needs class_labels"
    refused(SAMPLERS[sampler], ten_class, match, class_labels=None, guidance_scale=scale)


def test_models_that_are_not_modules(ten_class):
    with pytest.raises(ValueError, match=r"models\[0\] must be a denoiser \(a torch.nn.Module\), got 'a'"):
        run_sample(["a", ten_class[1]])


def test_models_in_training_mode_warn(ten_class):
    training = [tiny_dit(0, num_embeds_ada_norm=10).train(), ten_class[1]]
    with pytest.warns(UserWarning, match="a model is in training mode"):
        run_sample(training, guidance_scale=1.0)


@pytest.mark.parametrize("schedule", [None, 3, "linear"])
def test_noise_schedules_that_are_not_schedules(schedule):
    with pytest.raises(ValueError, match="noise_schedule must be a diffusers scheduler, a scheduler config or a dict"):
        make_scheduler("ddim", schedule)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5])
def test_decoding_batch_size(batch_size):
    from tiny_models import tiny_vae

    with pytest.raises(ValueError, match=f"batch_size must be an integer >= 1, got {batch_size}"):
        FAMILIES["dit"].decode(torch.zeros(2, 4, 4, 4), tiny_vae(), 0.18215, batch_size)
