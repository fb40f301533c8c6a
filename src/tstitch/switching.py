# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Running an adaptive plan: the per-sample signal, each sample's switch, and the batch split and merge.

A :class:`Switching` belongs to a :class:`~tstitch.stitcher.StitchedDenoiser` whose plan is adaptive
(:mod:`tstitch.adaptive`). During a run it

* reads the signal at every scheduler ``step()`` (a :class:`~tstitch.stepcount.StepCounter` listener): the
  prediction the scheduler steps with, which is the *guided* one under classifier-free guidance, turned into
  ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` (or the v- / sample-prediction equivalent) with ``x_t`` the
  denoiser's input at the step's first call (the scheduler's sample scaled into the model's space, so Euler-type
  schedulers are read right) and ``a_t`` the scheduler's ``alphas_cumprod`` at the step's timestep;
* decides, at the first call of each step, which samples switch (:class:`~tstitch.adaptive.AdaptiveRule`);
* when the samples of a call are on different models, runs each model on its rows only and merges the outputs
  in the original order (:meth:`Switching.split`), so that each sample's result is what it would be alone.

A *sample* is a row of the scheduler's sample. A denoiser call may have ``k`` times as many rows (classifier-free
guidance doubles the batch: ``[uncond; cond]`` in most diffusers pipelines, ``[cond; uncond]`` in
``tstitch.sample``): row ``r`` belongs to sample ``r % B``, so both halves of a sample always run on the same
model, whatever the pipeline's order. (DiTPipeline steps the doubled batch itself; its two halves carry the
same guided prediction, so they always switch together.) Only tensors whose first dimension is the call's row
count are split (the latents, a per-row timestep, labels, text embeddings, ``added_cond_kwargs``, ControlNet
residuals); anything else (a scalar timestep, options) goes to every model as it is.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

from .adaptive import AdaptiveRule, switch_bounds
from .stepcount import StitchRecord

__all__ = ["Switching", "take_rows", "merge_rows"]

logger = logging.getLogger(__name__)

#: ``run(model_index, args, kwargs) -> output``: one model's call on some rows.
RunModel = Callable[[int, tuple, dict], Any]


def take_rows(value: Any, rows: torch.Tensor, count: int) -> Any:
    """``value`` with only ``rows`` of every tensor whose first dimension is ``count`` (in dicts, lists, tuples)."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, rows.to(value.device)) if value.ndim and value.shape[0] == count else value
    if isinstance(value, dict):
        return {key: take_rows(item, rows, count) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(take_rows(item, rows, count) for item in value)
    return value


def _output_tensor(output: Any) -> torch.Tensor:
    if hasattr(output, "sample"):
        return output.sample
    return output[0] if isinstance(output, (tuple, list)) else output


def merge_rows(parts: list[tuple[torch.Tensor, Any]], count: int) -> Any:
    """One output of ``count`` rows from ``(rows, output)`` parts, in the form of the first part's output (a
    tensor, a tuple, or a diffusers output object)."""
    first = _output_tensor(parts[0][1])
    merged = first.new_empty((count, *first.shape[1:]))
    for rows, output in parts:
        merged.index_copy_(0, rows.to(merged.device), _output_tensor(output))
    template = parts[0][1]
    if isinstance(template, torch.Tensor):
        return merged
    if isinstance(template, (tuple, list)):
        return type(template)([merged, *template[1:]])
    if dataclasses.is_dataclass(template):
        return dataclasses.replace(template, sample=merged)
    raise TypeError(f"cannot merge denoiser outputs of type {type(template).__name__}")


def _arg(args: tuple, kwargs: dict, position: int, name: str) -> Any:
    return args[position] if len(args) > position else kwargs.get(name)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)


class Switching:
    """The per-sample state of an adaptive plan's run (see the module's docstring)."""

    def __init__(self, rule: AdaptiveRule) -> None:
        self.rule = rule
        self.record: StitchRecord | None = None  # set by reset(): no run yet

    def reset(self, scheduler: Any, record: StitchRecord) -> None:
        """Start a run of ``record.num_steps`` steps on ``scheduler`` (at its first denoiser call)."""
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise ValueError(
                f"adaptive plan {self.rule}: the scheduler {type(scheduler).__name__} has no alphas_cumprod (a "
                "flow-matching scheduler?), and the x0-change signal needs the noise schedule a_t; use a fixed plan")
        config = getattr(scheduler, "config", {})
        self.prediction = config.get("prediction_type", "epsilon") if hasattr(config, "get") else "epsilon"
        if self.prediction not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"adaptive plan {self.rule}: cannot read x0 from prediction type {self.prediction!r}")
        self.alphas = torch.as_tensor(alphas).detach().double()
        self.order = getattr(scheduler, "order", 1) or 1
        self.num_steps = record.num_steps
        self.low, self.high = switch_bounds(self.rule, self.num_steps)
        self.record = record
        record.switch_models = (self.rule.start_model, self.rule.end_model)
        self.switch: torch.Tensor | None = None  # per sample: its switch step, num_steps while it has none
        self.all_switched_at: int | None = None  # a switch of every sample before the batch size was known
        self.on_end: torch.Tensor | None = None  # per sample: on the end model at the decided step
        self.common = self.rule.start_model  # the model of every sample at the decided step, -1: split
        self.decided = -1
        self.signal: torch.Tensor | None = None
        self.signal_step = self.x0_step = self.input_step = -1
        self.x0: torch.Tensor | None = None
        self.step_input: torch.Tensor | None = None
        self._rows: dict[int, list[tuple[int, torch.Tensor]]] = {}

    # -- deciding -------------------------------------------------------------------------------------------
    def model_at(self, step: int) -> int:
        """The model every sample runs at ``step``, or ``-1`` when the batch is split (decides the step once)."""
        if step != self.decided:
            self._decide(step)
        return self.common

    def _decide(self, step: int) -> None:
        self.decided = step
        self._rows.clear()
        start, end = self.rule.start_model, self.rule.end_model
        if self.switch is None:  # the batch size is known after the first step(): no signal yet either
            if step >= self.high and self.all_switched_at is None:
                self.all_switched_at = step
            self.common = start if self.all_switched_at is None else end
            return
        pending = self.switch == self.num_steps
        if bool(pending.any()):
            go = pending & (step >= self.high)
            if step >= self.low and self.signal is not None and self.signal_step == step - 1:
                crossed = self.signal > self.rule.threshold if start == 0 else self.signal < self.rule.threshold
                go |= pending & crossed
            if bool(go.any()):
                self.switch[go] = step
                self.record.switch_steps = self.switch.tolist()
        self.on_end = self.switch <= step
        self.common = end if bool(self.on_end.all()) else start if not bool(self.on_end.any()) else -1

    # -- observing ------------------------------------------------------------------------------------------
    def observe_input(self, step: int, args: tuple, kwargs: dict) -> None:
        """Keep the input latents of the first denoiser call of ``step`` (``x_t`` of the signal)."""
        if step != self.input_step:
            self.step_input, self.input_step = _first_tensor(args, kwargs), step

    def on_step(self, position: int, args: tuple, kwargs: dict) -> None:
        """A :class:`~tstitch.stepcount.StepCounter` listener: read the signal of the step being taken."""
        if self.record is None or position % self.order:
            return
        step = position // self.order
        sample = _arg(args, kwargs, 2, "sample")
        if not isinstance(sample, torch.Tensor):
            return
        batch, channels = sample.shape[0], sample.shape[1]
        if self.switch is None:
            at = self.num_steps if self.all_switched_at is None else self.all_switched_at
            self.switch = torch.full((batch,), at, dtype=torch.long, device=sample.device)
            self.record.switch_steps = self.switch.tolist()
        elif batch != self.switch.shape[0]:
            raise ValueError(f"adaptive plan: the scheduler stepped {batch} samples, earlier {self.switch.shape[0]} "
                             "in the same run")
        if not (self.low - 2 <= step <= self.high - 2) or not bool((self.switch == self.num_steps).any()):
            return  # no decision can read this step's signal
        x = self.step_input
        if x is None or self.input_step != step or x.shape[0] < batch:
            raise ValueError(f"adaptive plan: the denoiser's input at step {step} does not hold the {batch} samples "
                             "the scheduler steps")
        output = _arg(args, kwargs, 0, "model_output")
        timestep = _arg(args, kwargs, 1, "timestep")
        index = min(max(round(float(timestep)), 0), self.alphas.shape[0] - 1)
        a = float(self.alphas[index])
        x, output = x[:batch, :channels].float(), output[:, :channels].float()
        if self.prediction == "epsilon":
            x0 = (x - (1 - a) ** 0.5 * output) / a**0.5
        elif self.prediction == "v_prediction":
            x0 = a**0.5 * x - (1 - a) ** 0.5 * output
        else:
            x0 = output
        if self.x0 is not None and self.x0_step == step - 1:
            previous = self.x0.flatten(1)
            change = (x0.flatten(1) - previous).norm(dim=1) / previous.norm(dim=1).clamp_min(1e-12)
            self.signal, self.signal_step = change, step
        self.x0, self.x0_step = x0, step

    # -- splitting ------------------------------------------------------------------------------------------
    def split(self, run: RunModel, args: tuple, kwargs: dict) -> Any:
        """Run each model on the rows of its samples (``run(model_index, args, kwargs)``) and merge the outputs."""
        first = _first_tensor(args, kwargs)
        count = first.shape[0]
        parts = [(rows, run(index, take_rows(args, rows, count), take_rows(kwargs, rows, count)))
                 for index, rows in self._groups(count)]
        return merge_rows(parts, count)

    def _groups(self, count: int) -> list[tuple[int, torch.Tensor]]:
        """``(model_index, rows)`` of a call of ``count`` rows at the decided step: row ``r`` is sample ``r % B``."""
        if count not in self._rows:
            batch = self.on_end.shape[0]
            if count % batch:
                raise ValueError(f"adaptive plan: a denoiser call has {count} rows, not a multiple of the {batch} "
                                 "samples the scheduler steps, so its rows cannot be told apart by sample")
            on_end = self.on_end.repeat(count // batch)
            self._rows[count] = [(self.rule.start_model, (~on_end).nonzero().flatten()),
                                 (self.rule.end_model, on_end.nonzero().flatten())]
        return self._rows[count]
