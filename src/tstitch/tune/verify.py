# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Verification of chosen plans on held-out seeds: paired FID ratio with a 95% interval, measured speed-up.

Quality and time are measured separately:

* :func:`sample_features`: every plan's samples from the same held-out noise and labels (sharing common
  prefixes, which gives the same latents as the whole loop: DDIM keeps no state between steps), in the
  metric's features.
* :func:`time_plans`: the whole sampling loop (:func:`tstitch.sample` with a
  :class:`~tstitch.stitcher.StitchedDenoiser`) of each plan and of the reference on one batch, repeated with
  the plans interleaved in a rotating order so that a slow spell of a shared machine falls on all of them;
  the median per plan.
* :func:`summarize`: the paired FID ratio to the large model alone with its bootstrap interval, the measured
  and predicted cost.

Plans given as sequences of model indices share prefixes (:class:`~tstitch.tune.engine.PrefixSampler`); plans
given as :class:`tstitch.plan.Plan` objects (adaptive plans, and per-step plans over a model with state between
steps such as the hybrid model :class:`~tstitch.regions.HybridDenoiser`, whose key/value cache belongs to one
batch's run) run the whole loop batch by batch, each run starting with every hybrid model's cache emptied.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..plan import Plan as CorePlan
from ..regions.hybrid import HybridDenoiser
from ..sampling import sample
from ..stitcher import StitchedDenoiser
from .cost import CostModel
from .engine import PrefixSampler
from .plans import as_plan, label
from .stats import jackknife_fid_ratio, paired_fid_ratio
from .workload import Workload

logger = logging.getLogger(__name__)

__all__ = ["sample_features", "time_plans", "summarize", "verify_plans", "meets"]

Plan = tuple[int, ...]
#: A plan to verify: a per-step sequence, or a :class:`tstitch.plan.Plan` run as a whole loop (an adaptive plan,
#: at the reference's steps, or a per-step plan, at its own).
AnyPlan = Plan | CorePlan


def _unique(plans: Sequence[Sequence[int] | CorePlan], first: Plan | None = None) -> list[AnyPlan]:
    order = ([first] if first else []) + [p if isinstance(p, CorePlan) else tuple(p) for p in plans]
    return list(dict.fromkeys(order))


def _is_adaptive(plan: AnyPlan) -> bool:
    return isinstance(plan, CorePlan) and plan.adaptive is not None


def _steps(plan: AnyPlan, num_steps: int) -> int:
    """The step count a plan runs at: an adaptive plan's ``num_steps``, a per-step plan's own."""
    return num_steps if _is_adaptive(plan) else (plan.num_steps if isinstance(plan, CorePlan) else len(plan))


def _fresh(models: Sequence[torch.nn.Module]) -> None:
    """Empty every hybrid model's cache and record: a run starts without another batch's keys and values."""
    for model in models:
        if isinstance(model, HybridDenoiser):
            model.reset()


def _run_whole(workload: Workload, plan: CorePlan, noise: torch.Tensor, labels: torch.Tensor | None, *,
               num_steps: int, batch_size: int, guidance_scale: float) -> tuple[torch.Tensor, list[int] | None]:
    """Final latents of a plan run as the whole loop, batch by batch, and each sample's switch step (adaptive
    plans; else None)."""
    outputs, switches = [], []
    for begin in range(0, len(noise), batch_size):
        _fresh(workload.models)
        scheduler = type(workload.scheduler).from_config(workload.scheduler.config)
        result = sample(StitchedDenoiser(workload.models, plan), None, scheduler, noise=noise[begin:begin + batch_size],
                        class_labels=None if labels is None else labels[begin:begin + batch_size],
                        num_inference_steps=_steps(plan, num_steps), guidance_scale=guidance_scale)
        outputs.append(result.latents)
        switches += result.record.switch_steps or []
    return torch.cat(outputs), switches if _is_adaptive(plan) else None


@torch.no_grad()
def sample_features(workload: Workload, plans: Sequence[Sequence[int] | CorePlan], *, seed: int, num_samples: int,
                    batch_size: int = 500, guidance_scale: float = 1.0, progress: bool = True,
                    on_plan: Callable[[AnyPlan, torch.Tensor], None] | None = None, num_steps: int = 20,
                    switches: dict[CorePlan, list[int]] | None = None) -> dict[AnyPlan, torch.Tensor]:
    """Features ``(num_samples, D)`` of each plan's samples from the noise and labels of ``seed``. Plans given
    as :class:`tstitch.plan.Plan` objects run the whole loop (adaptive plans at ``num_steps`` steps; their
    per-sample switch steps go into ``switches``)."""
    noise, labels = workload.start(seed, num_samples)
    sampler = PrefixSampler(workload.models, workload.scheduler, noise, labels, batch_size=batch_size,
                            guidance_scale=guidance_scale)
    found = {}
    for sequence in tqdm(_unique(plans), desc="held-out samples", disable=not progress):
        if isinstance(sequence, CorePlan):
            latents, switch_steps = _run_whole(workload, sequence, noise, labels, num_steps=num_steps,
                                               batch_size=batch_size, guidance_scale=guidance_scale)
            if switches is not None and switch_steps is not None:
                switches[sequence] = switch_steps
        else:
            latents = sampler.run(sequence)
        found[sequence] = workload.features(latents).double().cpu()
        if on_plan is not None:
            on_plan(sequence, found[sequence])
    return found


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_plans(workload: Workload, plans: Sequence[Sequence[int] | CorePlan], *, batch_size: int,
               repetitions: int = 3, seed: int = 0, guidance_scale: float = 1.0, progress: bool = True,
               num_steps: int = 20) -> dict[AnyPlan, float]:
    """Median seconds of the whole sampling loop of each plan on one batch, interleaved over repetitions
    (adaptive plans at ``num_steps`` steps; every hybrid model's cache emptied before each run)."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    order = _unique(plans)
    noise, labels = workload.start(seed, batch_size)
    times: dict[AnyPlan, list[float]] = {p: [] for p in order}
    bar = tqdm(total=repetitions * len(order), desc="timing plans", disable=not progress)
    for repetition in range(repetitions):
        shift = repetition % len(order)
        for sequence in order[shift:] + order[:shift]:
            whole = isinstance(sequence, CorePlan)
            denoiser = StitchedDenoiser(workload.models, sequence if whole else as_plan(sequence, workload.names))
            scheduler = type(workload.scheduler).from_config(workload.scheduler.config)
            _fresh(workload.models)
            _sync(workload.device)
            start = time.perf_counter()
            sample(denoiser, None, scheduler, noise=noise, class_labels=labels,
                   num_inference_steps=_steps(sequence, num_steps), guidance_scale=guidance_scale)
            _sync(workload.device)
            times[sequence].append(time.perf_counter() - start)
            bar.update()
    bar.close()
    return {p: statistics.median(t) for p, t in times.items()}


def summarize(workload: Workload, features: Mapping[AnyPlan, torch.Tensor],
              seconds: Mapping[AnyPlan, float] | None, reference: Plan, *, costs: CostModel | None = None,
              resamples: int = 300, confidence: float = 0.95, seed: int = 0,
              switches: Mapping[CorePlan, list[int]] | None = None) -> list[dict[str, Any]]:
    """One row per plan: the paired FID ratio to ``reference`` with its interval (when the workload has real
    statistics), the paired feature distance, the measured and the predicted cost relative to ``reference``.
    An adaptive plan's row has ``sequence`` None, its samples' ``switch_steps`` (from ``switches``) and a
    predicted cost from their mean steps per model (:meth:`CostModel.switched`). A per-step
    :class:`tstitch.plan.Plan`'s row is labelled with its text form; it gets a predicted cost only when
    ``costs`` has one figure per model of the plan."""
    reference_features = features[reference]
    scale = float((reference_features - reference_features.roll(1, dims=0)).norm(dim=1).mean()) or 1.0
    rows = []
    for sequence, plan_features in features.items():
        adaptive = _is_adaptive(sequence)
        steps = sequence if not isinstance(sequence, CorePlan) else sequence.sequence
        switch_steps = (switches or {}).get(sequence) if adaptive else None
        row: dict[str, Any] = {
            "plan": str(sequence) if isinstance(sequence, CorePlan) else label(sequence, workload.short),
            "sequence": None if adaptive else list(steps), "steps": len(reference) if adaptive else len(steps),
            "num_samples": len(plan_features),
            "distance": float((plan_features - reference_features).norm(dim=1).mean()) / scale,
        }
        if adaptive:
            row["adaptive"] = sequence.adaptive.to_dict()
            row["switch_steps"] = switch_steps
            if switch_steps:
                row["mean_switch_step"] = sum(switch_steps) / len(switch_steps)
        if seconds is not None and sequence in seconds:
            row["seconds_per_batch"] = seconds[sequence]
            row["measured_cost"] = seconds[sequence] / seconds[reference]
            row["measured_speedup"] = 1.0 / row["measured_cost"]
        if costs is not None and not adaptive and max(steps) < len(costs.seconds_per_step):
            row["predicted_cost"] = costs.relative(steps, len(reference))
        elif costs is not None and switch_steps:
            row["predicted_cost"] = costs.switched(sequence.adaptive.start_model, switch_steps, len(reference),
                                                   len(reference))
        if workload.real_statistics is not None:
            row["fid_ratio"] = paired_fid_ratio(plan_features, reference_features, workload.real_statistics,
                                                resamples=resamples, confidence=confidence, seed=seed).as_dict()
            if len(plan_features) >= 20:
                row["fid_ratio_jackknife"] = jackknife_fid_ratio(plan_features, reference_features,
                                                                 workload.real_statistics,
                                                                 confidence=confidence).as_dict()
        rows.append(row)
    return rows


def verify_plans(workload: Workload, plans: Sequence[Sequence[int] | CorePlan], *, seed: int, num_samples: int,
                 reference_steps: int = 20, batch_size: int = 500, guidance_scale: float = 1.0,
                 costs: CostModel | None = None, timing_repetitions: int = 3, resamples: int = 300,
                 progress: bool = True) -> dict[str, Any]:
    """Held-out quality and measured time of ``plans`` and of the large model alone (``reference_steps``).
    ``plans`` may hold :class:`tstitch.plan.Plan` objects, run as whole loops: adaptive plans (two models, at
    ``reference_steps``) and per-step plans; a plan that runs a hybrid model must be one of these."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    hybrid = {i for i, model in enumerate(workload.models) if isinstance(model, HybridDenoiser)}
    for plan in plans:
        if not isinstance(plan, CorePlan) and hybrid & set(plan):
            raise ValueError(f"plan {list(plan)} runs a hybrid model, whose cache belongs to one batch's run: give "
                             "it as a tstitch.plan.Plan (run as a whole loop), not a sequence (prefix-shared)")
    reference = (len(workload.models) - 1,) * reference_steps
    order = _unique(plans, first=reference)
    switches: dict[CorePlan, list[int]] = {}
    features = sample_features(workload, order, seed=seed, num_samples=num_samples, batch_size=batch_size,
                               guidance_scale=guidance_scale, progress=progress, num_steps=reference_steps,
                               switches=switches)
    seconds = time_plans(workload, order, batch_size=min(batch_size, num_samples), repetitions=timing_repetitions,
                         seed=seed, guidance_scale=guidance_scale, progress=progress, num_steps=reference_steps)
    rows = summarize(workload, features, seconds, reference, costs=costs, resamples=resamples, seed=seed,
                     switches=switches)
    return {"seed": seed, "num_samples": num_samples, "batch_size": batch_size,
            "reference": label(reference, workload.short), "rows": rows}


def meets(row: Mapping[str, Any], tolerance: float) -> bool:
    """Whether the upper end of the plan's FID-ratio interval is at most ``tolerance``."""
    interval = row.get("fid_ratio")
    return interval is not None and interval["high"] <= tolerance
