# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch sample``'s request (:class:`SampleOptions`), resolved once into a typed, frozen :class:`RunSpec` that
``generate`` runs: each check in one place, the plan a :class:`Plan` down to the sampler."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from tstitch import Plan, cli, save_plan
from tstitch.experiments.generate import generate
from tstitch.experiments.run_spec import RunSpec, SampleOptions, resolve
from tstitch.models.loading import load_preset
from tstitch.planfile import plan_to_dict


@pytest.fixture(scope="module")
def digits():
    return load_preset("digits", device="cpu")


@pytest.mark.parametrize(("options", "message"), [
    (dict(plan=Plan((0.4, 0.6)), fractions=[0.4]), "give a plan or fractions, not both"),
    (dict(plan=Plan.parse("S2 > XL3", ["S", "XL"]), num_steps=6), "gives the model of 5 steps, but the run has 6"),
    (dict(mode="fast"), "mode must be one of"),
    (dict(class_labels=[1], prompts=["a"]), "--class-labels .* or --prompt .*, not both"),
    (dict(batch_size=0), "batch size must be >= 1"),
    (dict(num_images=0), "number of images must be >= 1"),
])
def test_a_request_is_checked_when_made_without_models(options, message):
    with pytest.raises(ValueError, match=message):
        SampleOptions(**options)


def test_resolve_fills_every_default_into_a_frozen_spec(digits):
    spec = resolve(digits, SampleOptions(num_images=3, class_labels=[4, 2]))
    assert spec.plan == Plan((0.4, 0.6)) and not spec.plan_given and spec.fractions == (0.4, 0.6)
    assert spec.class_labels == (4, 2, 4) and spec.prompts is None
    assert (spec.scheduler, spec.num_steps, spec.mode, spec.num_images, spec.batch_size) == ("ddim", 25, "diffusers",
                                                                                              3, 3)
    assert spec.fast is None and spec.fast_paths == "none" and spec.cache == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_steps = 3  # type: ignore[misc]
    assert list(spec.as_dict()) == ["label", "models", "fractions", "mode", "seed", "plan", "class_labels",
                                    "scheduler", "num_steps", "guidance_scale", "num_images", "batch_size",
                                    "fast_paths"]


def test_a_given_plan_stays_the_same_plan_and_is_recorded(digits):
    plan = Plan.parse("S1 > XL2 > S1", ["S", "XL"])
    spec = resolve(digits, SampleOptions(plan=plan))
    assert spec.plan is plan and spec.plan_given and spec.num_steps == 4
    assert spec.fractions == (0.5, 0.5) and spec.as_dict()["plan"] == plan_to_dict(plan)


def test_resolve_refuses_what_needs_the_models(digits):
    for options, message in [(dict(fractions=[0.2, 0.2]), "2 models take one fraction"),
                             (dict(plan=Plan.parse("S1 > B1 > XL1", ["S", "B", "XL"])), "is for 3 models, but there "
                                                                                          "are 2"),
                             (dict(class_labels=[10]), r"class labels must be in \[0, 9\]"),
                             (dict(plan=Plan.parse("S1 > XL2", ["S", "XL"]), mode="official"), "per-step plan"),
                             (dict(cache={0: "first-block:0.1"}, mode="official"), "runs without caches")]:
        with pytest.raises(ValueError, match=message):
            resolve(digits, SampleOptions(**options))


def test_generate_runs_a_spec_as_it_runs_the_request(digits):
    options = SampleOptions(fractions=[0.5], num_steps=4, num_images=2, progress=False, warmup=False)
    from_request = generate(digits, options, compare=True)
    from_spec = generate(digits, resolve(digits, options), compare=True)
    assert isinstance(from_spec.spec, RunSpec) and from_spec.settings == from_request.settings
    assert torch.equal(from_spec.stitched.images, from_request.stitched.images)
    assert from_spec.stitched.model_per_step == [0, 0, 1, 1] and from_spec.baseline.model_per_step == [0] * 4
    assert from_spec.baseline.fractions == (1.0,) and from_spec.baseline.plan is None


def test_cli_refuses_a_bad_request_before_loading_the_models(tmp_path, capsys, monkeypatch):
    import tstitch.models.loading

    def fail(*args, **kwargs):
        raise AssertionError("the models were loaded before the request was refused")

    monkeypatch.setattr(tstitch.models.loading, "load_preset", fail)
    plan_path = save_plan(Plan.parse("S2 > XL3", ["S", "XL"]), tmp_path / "plan.json")
    for argv, message in [(["--plan", str(plan_path), "--steps", "6"], "gives the model of 5 steps"),
                          (["--class-labels", "1", "--prompt", "a"], "--class-labels .* or --prompt")]:
        assert cli.main(["sample", "--preset", "digits", *argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert re.search(message, err), err
