# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Adaptive plans (issue 22, item 1): the rule, its text and JSON forms, each sample's switch where the signal
says, the batch split and merge (each sample as if alone), the per-sample record, and the refusals."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from tiny_models import (  # one_thread: an autouse fixture
    DIT_SAMPLE_SIZE,
    LATENT_CHANNELS,
    SCHEDULERS,
    dit_pipeline,
    one_thread,  # noqa: F401
    tiny_dit,
)
from torch import nn

import tstitch
from tstitch import Plan, StitchedDenoiser
from tstitch.adaptive import AdaptiveRule, switch_bounds
from tstitch.planfile import load_plan, plan_from_dict, plan_from_json, plan_to_dict, save_plan

#: Batch-size-dependent CPU kernels (a matmul over 2 rows or 12) may round differently, so a sample run inside
#: a split batch matches it run alone to ``ALONE_TOL * max |x|`` (float32), not bit for bit. Measured: at most
#: 4.4e-7 of the largest value (the tiny random DiTs' guided latents reach 300-800), as for a *fixed* plan's
#: batch against its samples alone (4.1e-7): the split adds nothing beyond the kernels' rounding.
ALONE_TOL = 2e-6


def assert_alone_close(in_batch: torch.Tensor, alone: torch.Tensor) -> None:
    torch.testing.assert_close(in_batch, alone, rtol=0, atol=ALONE_TOL * float(alone.abs().max()))


def small_first(threshold: float, low: float = 0.0, high: float = 0.9) -> Plan:
    return Plan(adaptive=AdaptiveRule("small-first", threshold, low, high))


def large_first(threshold: float, low: float = 0.1, high: float = 1.0) -> Plan:
    return Plan(adaptive=AdaptiveRule("large-first", threshold, low, high))


# -- the rule: forms, bounds, refusals -----------------------------------------------------------------------

RULE_TEXTS = [
    "adaptive(small-first, x0-change>0.15, 0.2..0.6)",
    "adaptive(large-first, x0-change<0.05, 0.3..1)",
    "adaptive(small-first, x0-change>0, 0..0.99)",
    "adaptive(large-first, x0-change<1e+09, 0.05..0.05)",
    "adaptive(small-first, x0-change>0.123456789, 0.1..0.3333333333333333)",
]


@pytest.mark.parametrize("text", RULE_TEXTS)
@pytest.mark.parametrize("names", [None, ("S", "XL")])
def test_text_and_json_round_trip(text, names, tmp_path):
    plan = Plan.parse(text, names)
    assert plan.adaptive is not None and plan.num_models == 2 and plan.names == names
    assert str(plan) == text
    assert Plan.parse(str(plan), names) == plan
    assert plan_from_dict(plan_to_dict(plan)) == plan
    assert plan_from_json(json.dumps(plan_to_dict(plan))) == plan
    path = save_plan(plan, tmp_path / "plan.json")
    assert load_plan(path) == plan


def test_text_allows_spaces_and_reads_the_same():
    assert Plan.parse(" adaptive( small-first ,x0-change > 0.15 , 0.2 .. 0.6 ) ") == small_first(0.15, 0.2, 0.6)


@pytest.mark.parametrize("text, match", [
    ("adaptive(small-first, x0-change<0.15, 0.2..0.6)", "small-first switches when the signal is >"),
    ("adaptive(large-first, x0-change>0.15, 0.2..0.6)", "large-first switches when the signal is <"),
    ("adaptive(sideways, x0-change>0.15, 0.2..0.6)", "direction must be one of"),
    ("adaptive(small-first, eps-change>0.15, 0.2..0.6)", "signal must be one of"),
    ("adaptive(small-first, x0-change>0.15)", "an adaptive plan reads"),
    ("adaptive(small-first, x0-change>0.15, 0.6..0.2)", "0 <= min_switch <= max_switch <= 1"),
    ("adaptive(small-first, x0-change>0.15, 0.2..1)", "small-first needs max_switch < 1"),
    ("adaptive(large-first, x0-change<0.15, 0..1)", "large-first needs min_switch > 0"),
    ("adaptive(small-first, x0-change>-0.1, 0.2..0.6)", "threshold must be >= 0"),
    ("adaptive(small-first, x0-change>nan, 0.2..0.6)", "an adaptive plan reads"),
])
def test_bad_texts_are_refused_by_name(text, match):
    with pytest.raises(ValueError, match=match):
        Plan.parse(text)


@pytest.mark.parametrize("kwargs, match", [
    ({"direction": "small-first", "threshold": math.nan}, "threshold must be finite"),
    ({"direction": "small-first", "threshold": math.inf}, "threshold must be finite"),
    ({"direction": "small-first", "threshold": "0.1"}, "threshold must be a number"),
    ({"direction": "small-first", "threshold": True}, "threshold must be a number"),
    ({"direction": "small-first", "threshold": -1e-9}, "threshold must be >= 0"),
    ({"direction": "small-first", "threshold": 0.1, "min_switch": -0.1}, "0 <= min_switch"),
    ({"direction": "small-first", "threshold": 0.1, "max_switch": 1.0}, "small-first needs max_switch < 1"),
    ({"direction": "large-first", "threshold": 0.1, "min_switch": 0.0}, "large-first needs min_switch > 0"),
    ({"direction": "large-first", "threshold": 0.1, "min_switch": 0.5, "max_switch": 0.4}, "min_switch <= max_"),
    ({"direction": "Small-First", "threshold": 0.1}, "direction must be one of"),
])
def test_bad_rules_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveRule(**kwargs)


@pytest.mark.parametrize("data, match", [
    ({"direction": "small-first"}, r"adaptive needs the field\(s\) \['threshold'\]"),
    ({"direction": "small-first", "threshold": 0.1, "speed": 2}, r"unknown adaptive field\(s\) \['speed'\]"),
    ([0.1], "adaptive must be a JSON object"),
])
def test_bad_plan_files_are_refused(data, match):
    with pytest.raises(ValueError, match=match):
        plan_from_dict({"version": 1, "num_models": 2, "adaptive": data})
    with pytest.raises(ValueError, match="exactly one of the fields"):
        plan_from_dict({"version": 1, "num_models": 2, "fractions": [0.5, 0.5], "adaptive": data})


def test_default_bounds_keep_the_large_model():
    assert AdaptiveRule("small-first", 0.1) == AdaptiveRule("small-first", 0.1, 0.0, 0.5)
    assert AdaptiveRule("large-first", 0.1) == AdaptiveRule("large-first", 0.1, 0.1, 1.0)


def test_an_adaptive_plan_is_for_two_models():
    rule = AdaptiveRule("small-first", 0.1)
    with pytest.raises(ValueError, match="switches between 2 models"):
        Plan(adaptive=rule, model_count=3)
    with pytest.raises(ValueError, match="switches between 2 models"):
        plan_from_dict({"version": 1, "num_models": 3, "adaptive": rule.to_dict()})
    with pytest.raises(ValueError, match="3 models but the plan"):
        StitchedDenoiser([tiny_dit(0), tiny_dit(1), tiny_dit(2)], Plan(adaptive=rule))
    with pytest.raises(ValueError, match="picks each sample's model during the run"):
        Plan(adaptive=rule).assignment(10)
    with pytest.raises(ValueError, match="is adaptive and has no fractions"):
        _ = Plan(adaptive=rule).small_fractions


def test_switch_bounds_keep_the_large_model_on_every_grid_point():
    values = [i / 20 for i in range(21)] + [0.29, 1 / 3, 0.999]
    for steps in range(1, 61):
        for low in values:
            for high in values:
                for direction in ("small-first", "large-first"):
                    try:
                        rule = AdaptiveRule(direction, 0.1, low, high)
                    except ValueError:
                        continue
                    first, last = switch_bounds(rule, steps)
                    assert 0 <= first <= last <= steps
                    if direction == "small-first":  # the large model runs at least the last step
                        assert last <= steps - 1 and last == min(math.floor(high * steps + 1e-6), steps - 1)
                    else:  # the large model runs at least the first step
                        assert first >= 1 and first == max(math.floor(low * steps + 1e-6), 1)


# -- a denoiser whose signal is scripted per sample and step -------------------------------------------------


class Scripted(nn.Module):
    """Predicts the noise that makes its clean-image prediction ``x0 = scale[sample, step] * ones``, so the
    x0-change signal of each sample and step is set by the test. The sample is the class label; every call
    is logged as ``(name, step, labels)``."""

    def __init__(self, name: str, scales: torch.Tensor, scheduler, log: list):
        super().__init__()
        self.name, self.scales, self.scheduler, self.log = name, scales, scheduler, log
        self.weight = nn.Parameter(torch.zeros(()))  # a device and dtype for the loop's checks

    def forward(self, hidden_states, timestep=None, class_labels=None):
        timesteps = self.scheduler.timesteps.tolist()
        steps = torch.tensor([timesteps.index(int(t)) for t in timestep])
        a = self.scheduler.alphas_cumprod[timestep.long()].view(-1, 1, 1, 1)
        x0 = self.scales[class_labels, steps].view(-1, 1, 1, 1) * torch.ones_like(hidden_states)
        self.log.append((self.name, int(steps[0]), class_labels.tolist()))
        return (hidden_states - a.sqrt() * x0) / (1 - a).sqrt()


def expected_switch(rule: AdaptiveRule, changes: list[float], steps: int) -> int:
    """The switch step of a sample whose signal at step k is ``changes[k]`` (written out from the rule's text)."""
    first, last = switch_bounds(rule, steps)
    for k in range(steps):
        crossed = k >= 2 and (changes[k - 1] > rule.threshold if rule.direction == "small-first"
                              else changes[k - 1] < rule.threshold)
        if k >= last or (k >= first and crossed):
            return k
    return steps


@pytest.mark.parametrize("direction", ["small-first", "large-first"])
@pytest.mark.parametrize("seed", range(6))
def test_each_sample_switches_where_its_signal_says(direction, seed):
    rng = random.Random(seed)
    steps, batch = rng.choice([6, 10, 13]), 6
    low = rng.choice([0.0, 0.1, 0.3]) if direction == "small-first" else rng.choice([0.05, 0.1, 0.3])
    high = rng.choice([0.5, 0.8, 0.95]) if direction == "small-first" else rng.choice([0.6, 0.9, 1.0])
    rule = AdaptiveRule(direction, 0.2, low, max(low, high))
    # changes[k]: the signal of step k, never within 0.05 of the threshold (float error cannot flip it)
    changes = [[0.0] + [rng.choice([0.0, 0.05, 0.1, 0.3, 0.6]) for _ in range(steps - 1)] for _ in range(batch)]
    scales = torch.tensor([[math.prod(1 + c for c in row[: k + 1]) for k in range(steps)] for row in changes])
    scheduler, log = SCHEDULERS["ddim"](), []
    models = [Scripted("small", scales, scheduler, log), Scripted("large", scales, scheduler, log)]
    noise = torch.randn(batch, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE,
                        generator=torch.Generator().manual_seed(seed))
    out = tstitch.sample(models, Plan(adaptive=rule), scheduler, noise=noise, class_labels=list(range(batch)),
                         num_inference_steps=steps)

    switches = [expected_switch(rule, changes[i], steps) for i in range(batch)]
    assert out.record.switch_steps == switches
    start, end = ("small", "large") if direction == "small-first" else ("large", "small")
    expected_models = [[start if k < switches[i] else end for k in range(steps)] for i in range(batch)]
    called: list[list[str]] = [[] for _ in range(batch)]  # each sample's models, in call order
    for name, step, labels in log:
        for label in labels:
            called[label].append(name)
            assert len(called[label]) == step + 1  # one call per sample and step, in step order
    assert called == expected_models
    index = {"small": 0, "large": 1}
    assert out.record.model_per_step_per_sample() == [[index[m] for m in row] for row in expected_models]
    as_dict = out.record.as_dict()
    assert as_dict["switch_steps"] == switches
    assert as_dict["model_per_step_per_sample"] == out.record.model_per_step_per_sample()
    # a split step calls each model once, on its samples' rows only, in batch order
    for k in range(steps):
        calls = [(name, labels) for name, step, labels in log if step == k]
        assert sorted(label for _, labels in calls for label in labels) == list(range(batch))
        assert all(labels == sorted(labels) for _, labels in calls) and len(calls) == len({n for n, _ in calls})


def test_the_signal_reads_the_guided_prediction_and_both_halves_switch_together():
    """Under guidance every sample has a conditional and an unconditional row: they always run on one model."""
    small, large = tiny_dit(0), tiny_dit(1)
    noise = torch.randn(4, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE,
                        generator=torch.Generator().manual_seed(3))
    log: list[tuple[str, int]] = []
    for name, model in (("small", small), ("large", large)):
        def hook(module, args, kwargs, name=name):
            log.append((name, kwargs["class_labels"].tolist()))

        model.register_forward_pre_hook(hook, with_kwargs=True)
    tstitch.sample([small, large], small_first(0.25, 0.0, 0.9), SCHEDULERS["ddim"](), noise=noise,
                   class_labels=[1, 7, 42, 5], num_inference_steps=10, guidance_scale=4.0)
    for _, labels in log:  # [cond rows; null rows] of the same samples, in the same order
        half = len(labels) // 2
        assert labels[half:] == [1000] * half and len(labels) % 2 == 0


# -- each sample as if alone ---------------------------------------------------------------------------------


def varied_run(models, scheduler_name, noise, labels, guidance_scale, direction):
    """The first rule of a short list whose switch steps differ between the samples, and its run."""
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.6, 0.8] if direction == "small-first" else [0.05, 0.1, 0.2, 0.3, 0.5]
    for threshold in thresholds:
        plan = small_first(threshold) if direction == "small-first" else large_first(threshold)
        out = tstitch.sample(models, plan, SCHEDULERS[scheduler_name](), noise=noise, class_labels=labels,
                             num_inference_steps=10, guidance_scale=guidance_scale)
        if len(set(out.record.switch_steps)) > 1:
            return plan, out
    pytest.fail(f"no threshold gave different switch steps ({scheduler_name}, {direction})")


@pytest.mark.parametrize("direction", ["small-first", "large-first"])
@pytest.mark.parametrize("scheduler_name, guidance_scale", [
    ("ddim", 4.0), ("ddim", 1.0), ("euler", 4.0), ("heun", 1.0), ("dpmsolver++", 4.0), ("unipc", 1.0)])
def test_each_sample_of_a_split_batch_equals_it_run_alone(direction, scheduler_name, guidance_scale):
    models = [tiny_dit(0), tiny_dit(1)]
    labels = [1, 7, 42, 5, 600, 999]
    noise = torch.randn(len(labels), LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE,
                        generator=torch.Generator().manual_seed(11))
    plan, batch = varied_run(models, scheduler_name, noise, labels, guidance_scale, direction)
    for i, label in enumerate(labels):
        alone = tstitch.sample(models, plan, SCHEDULERS[scheduler_name](), noise=noise[i : i + 1],
                               class_labels=[label], num_inference_steps=10, guidance_scale=guidance_scale)
        assert alone.record.switch_steps == [batch.record.switch_steps[i]]
        assert_alone_close(batch.latents[i : i + 1], alone.latents)


def test_a_plan_whose_samples_all_switch_together_is_the_fixed_plan_bit_for_bit():
    """No split, no change: threshold 0 switches every sample at the lower bound, like the fraction plan."""
    models = [tiny_dit(0), tiny_dit(1)]
    noise = torch.randn(5, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE,
                        generator=torch.Generator().manual_seed(2))
    for steps, low in [(10, 0.4), (8, 0.25), (20, 0.3)]:
        kwargs = dict(noise=noise, class_labels=[1, 2, 3, 4, 5], num_inference_steps=steps, guidance_scale=3.0)
        adaptive = tstitch.sample(models, small_first(0.0, low, 0.9), SCHEDULERS["ddim"](), **kwargs)
        fixed = tstitch.sample(models, low, SCHEDULERS["ddim"](), **kwargs)
        assert adaptive.record.switch_steps == [math.floor(low * steps + 1e-6)] * 5
        assert adaptive.record.model_per_step() == fixed.record.model_per_step()
        assert torch.equal(adaptive.latents, fixed.latents)


def test_through_stitch_on_a_dit_pipeline_each_sample_equals_it_alone():
    small, large = tiny_dit(0), tiny_dit(1)
    pipe = dit_pipeline(large, SCHEDULERS["ddim"]())
    labels = [1, 7, 42, 5]
    for threshold in (0.2, 0.3, 0.4, 0.6):
        tstitch.stitch(pipe, small, small_first(threshold))
        generators = [torch.Generator().manual_seed(100 + i) for i in range(len(labels))]
        batch = pipe(class_labels=labels, generator=generators, num_inference_steps=10, guidance_scale=4.0,
                     output_type="np").images
        switches = tstitch.get_record(pipe).switch_steps
        if len(set(switches)) > 1:
            break
    else:
        pytest.fail("no threshold gave different switch steps")
    assert switches[:4] == switches[4:]  # DiTPipeline steps the doubled batch: both halves switch together
    assert tstitch.get_record(pipe).as_dict()["switch_steps"] == switches
    for i, label in enumerate(labels):
        alone = pipe(class_labels=[label], generator=[torch.Generator().manual_seed(100 + i)],
                     num_inference_steps=10, guidance_scale=4.0, output_type="np").images
        assert tstitch.get_record(pipe).switch_steps == [switches[i]] * 2
        assert_alone_close(torch.from_numpy(batch[i]), torch.from_numpy(alone[0]))
    tstitch.unstitch(pipe)
    assert not hasattr(pipe, "_tstitch_stitch")


# -- records and refusals ------------------------------------------------------------------------------------


def test_a_fixed_plan_keeps_its_record():
    models = [tiny_dit(0), tiny_dit(1)]
    noise = torch.randn(2, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE)
    out = tstitch.sample(models, 0.4, SCHEDULERS["ddim"](), noise=noise, class_labels=[1, 2], num_inference_steps=5)
    assert out.record.switch_steps is None and out.record.model_per_step_per_sample() is None
    assert set(out.record.as_dict()) == {"model_names", "num_steps", "model_per_step", "calls", "seconds",
                                         "num_calls"}


def test_a_scheduler_without_alphas_is_refused_naming_it():
    denoiser = StitchedDenoiser([tiny_dit(0), tiny_dit(1)], small_first(0.1))
    scheduler = SCHEDULERS["flow-euler"]()
    denoiser.bind(scheduler)
    scheduler.set_timesteps(4)
    x = torch.randn(1, LATENT_CHANNELS, DIT_SAMPLE_SIZE, DIT_SAMPLE_SIZE)
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler has no alphas_cumprod"):
        denoiser(x, timestep=scheduler.timesteps[:1], class_labels=torch.tensor([1]))


def test_per_model_conditioning_is_refused_with_an_adaptive_plan():
    with pytest.raises(ValueError, match="cannot split the batch of a model with its own conditioning"):
        StitchedDenoiser([tiny_dit(0), tiny_dit(1)], small_first(0.1), conditioning=[lambda kwargs: kwargs])
