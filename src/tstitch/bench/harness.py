# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The timing harness behind ``tstitch bench``: stitched sampling held against what it promises.

T-Stitch promises that sampling at fraction ``r`` of the small model takes ``(1 - r) * T_large + r * T_small``
and that the machinery on top of the models costs nothing. For each *case* (a small and a large model, a
scheduler, a step count, a batch) the harness times complete sampling runs of several *configurations*:

- ``stitched@r``: stitched sampling at each fraction ``r`` (``tstitch.sample`` for class-conditional
  models, through :func:`tstitch.study.timed_sample`; a stitched diffusers pipeline for text-conditional
  U-Nets);
- ``plain@r``: the same loop calling the models directly, model ``plan[i]`` at step ``i``, the same number
  of times (``plain@0`` is the large model alone and ``plain@1`` the small model alone: the single-model
  runs);
- ``pipeline`` and ``pipeline-stitched@0``: the user's unstitched diffusers pipeline and the same pipeline
  stitched at fraction 0 (for text-conditional cases ``plain@r`` already runs through the pipeline, so
  ``plain@0`` *is* the unstitched pipeline);
- ``offload@r`` (on CUDA, when asked): stitched sampling with the idle model offloaded to the CPU;
- with an adaptive plan, ``adaptive`` (stitched sampling with it, each sample switching model at its own
  step) and ``together@k`` (the fixed plan of the same models with every sample switching at step ``k``, the
  rounded mean of the switch steps of a full adaptive run in the warm-up): the same model work for the batch,
  so ``adaptive / together@k`` is the cost of switching per sample (target at most 1.03).

After an untimed warm-up pass, every repetition runs every configuration once, in an order that reverses
from one repetition to the next, so that a machine that speeds up or slows down hits all configurations
alike. Every figure is a ratio of runs made in the same repetition (the median over repetitions, with its
min and max), so it holds on a busy machine:

- overhead: ``stitched@r / plain@r`` (target at most 1.01);
- linearity: ``stitched@r / ((1 - r) * plain@0 + r * plain@1)`` (target 0.98 to 1.02);
- no tax: ``pipeline-stitched@0 / pipeline`` (target at most 1.01);
- speed-up: ``plain@0 / stitched@r`` beside the ideal ``1 / ((1 - r) + r * T_small / T_large)``;
- peak memory: the large model alone against a stitched run, whose difference should be the small
  model's weights plus little else.

The harness also checks that every stitched run used the models of the plan, step by step, and that its
output equals the plain loop's; an adaptive run, that each sample ran on one model before its switch step and
on the other from it on, and that the models called at each step are those its samples' switch steps say.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adaptive import switch_bounds
from ..models.fastpaths import FastPaths, compiled_graph_count
from ..sampling.timing import warm_up
from ..utils import ensure_writable_dir, write_json
from .cases import BenchCase, build_case
from .memory import dispatch_overhead, machine_info, measure_memory, weight_bytes
from .report import TARGETS, adaptive_row, cache_rows, case_rows, paired, plan_row, plot_times, stats, summary_of
from .runners import ConfigRun, Runner, make_runner

logger = logging.getLogger(__name__)

__all__ = ["BenchSettings", "run_case", "run_bench", "interleaved"]


# -- the harness ---------------------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """How to run the harness (the cases carry their own steps, images and repetitions)."""

    seed: int = 0
    fast: FastPaths = field(default_factory=FastPaths)
    memory: bool = True
    offload_fraction: float = 0.4
    warmup_steps: int = 1
    dispatch_calls: int = 2000
    #: Caches for ``cached@r`` runs beside ``stitched@r``: ``{model index: config}`` (0 small, 1 large).
    cache: dict[int, Any] | None = None


def interleaved(groups: Sequence[Sequence[str]], repetitions: int) -> Iterator[tuple[int, str]]:
    """Every configuration once per repetition: the members of a group back to back, their order reversed
    every other repetition, and the groups in an order rotated by one at each repetition."""
    for rep in range(repetitions):
        shift = rep % len(groups)
        for group in [*groups[shift:], *groups[:shift]]:
            for config in (group if rep % 2 == 0 else list(reversed(group))):
                yield rep, config


def _check_plan(runner: Runner, config: str, run: ConfigRun, steps: int) -> None:
    if run.per_step is None or "@" not in config:
        return
    expected = runner.plan(runner.schedule(config), steps)
    if run.per_step != expected:
        raise RuntimeError(f"{runner.case.name} {config}: models per step {run.per_step}, the plan says {expected}")


def _check_adaptive(runner: Runner, run: ConfigRun, steps: int) -> None:
    """An adaptive run: each sample on the rule's first model before its switch step and on the other from it
    on, within the rule's bounds, and at each step the models called are those of its samples' switch steps."""
    rule, record = runner.case.plan.adaptive, run.record
    switches = None if record is None else record.switch_steps
    if switches is None or len(switches) != runner.case.num_images:
        raise RuntimeError(f"{runner.case.name} adaptive: switch steps {switches} recorded for "
                           f"{runner.case.num_images} samples")
    start, end = rule.start_model, rule.end_model
    low, high = switch_bounds(rule, steps)
    per_sample = [[start] * switch + [end] * (steps - switch) for switch in switches]
    called = [sorted({model for step, model in record.calls if step == k}) for k in range(steps)]
    expected = [sorted({start if k < switch else end for switch in switches}) for k in range(steps)]
    if (record.switch_models != (start, end) or record.model_per_step_per_sample() != per_sample
            or called != expected or not all(low <= switch <= high for switch in switches)):
        raise RuntimeError(f"{runner.case.name} adaptive: switch steps {switches} (the rule allows {low}..{high}), "
                           f"models called per step {called}, the switch steps say {expected}")


def run_case(case: BenchCase, settings: BenchSettings,
             checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Time one case (warm-up, interleaved repetitions, memory); returns its results dictionary.

    ``checkpoint``, if given, receives the results so far after each repetition (for a run cut short).
    """
    case.validate()
    with settings.fast.context():  # TF32 and the attention kernels, for the whole case
        return _run_case(case, settings, checkpoint)


def _run_case(case: BenchCase, settings: BenchSettings,
              checkpoint: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    settings.fast.apply([case.small, case.large])
    device = next(case.large.parameters()).device
    offload = settings.offload_fraction if settings.fast.offload and device.type == "cuda" else None
    if settings.fast.offload and offload is None:
        logger.info(f"{case.name}: offloading needs a CUDA device; skipped on {device.type}")
    runner = make_runner(case, settings.seed, offload)
    runner.cache = settings.cache or {}

    # Warm-up: one configuration of each kind; with compilation twice, the difference being compile time. An
    # adaptive plan also runs once in full: its switch steps give together@k.
    def one_of_each() -> None:
        for config in runner.warmup_configs():
            runner.run(config, settings.warmup_steps)
        if case.adaptive:
            _check_adaptive(runner, runner.measure_switches(), case.num_steps)

    passes = warm_up(one_of_each, device, passes=2 if settings.fast.compile else 1)
    graphs_before = compiled_graph_count() if settings.fast.compile else None
    groups = runner.groups()
    configs = [config for group in groups for config in group]

    seconds: dict[str, list[float]] = {config: [] for config in configs}
    offload_seconds: list[float] = []
    first_latents: dict[str, torch.Tensor] = {}
    adaptive_switches: list[list[int]] = []  # each timed adaptive run's switch steps

    def results_so_far() -> dict[str, Any]:
        result = _case_result(case, runner, seconds, first_latents)
        if case.adaptive:
            result["adaptive"] = adaptive_row(case, seconds, runner.switch_steps, runner.together_step,
                                              adaptive_switches)
        result["warmup_seconds"] = passes
        if graphs_before is not None:
            result["compile"] = {"compile_seconds": passes[0] - passes[1],
                                 "graphs_compiled_during_timing": compiled_graph_count() - graphs_before,
                                 "method": "first warm-up pass minus the second, identical one"}
        if runner.cache:
            result["cache"] = cache_rows(runner.cache, ["small", "large"], case.all_fractions, seconds, case.num_images)
        if offload is not None:
            key, stitched = f"offload@{offload:g}", f"stitched@{offload:g}"
            result["offload"] = {
                "fraction": offload,
                "seconds_per_image": statistics.median(seconds[key]) / case.num_images,
                "ratio_vs_stitched": paired(seconds[key], seconds[stitched]) if stitched in seconds else None,
                "transfer_seconds_per_run": stats(offload_seconds),
            }
        return result

    logger.info(f"{case.name}: {len(configs)} configurations x {case.repetitions} repetitions")
    done, rep_start = 0, time.perf_counter()
    for rep, config in interleaved(groups, case.repetitions):
        run = runner.run(config)
        _check_plan(runner, config, run, case.num_steps)
        if config == "adaptive":
            _check_adaptive(runner, run, case.num_steps)
            adaptive_switches.append(list(run.record.switch_steps))
        seconds[config].append(run.seconds)
        if run.offload_seconds is not None:
            offload_seconds.append(run.offload_seconds)
        if rep == 0 and run.latents is not None:
            first_latents[config] = run.latents
        done += 1
        if done % len(configs) == 0:
            logger.info(f"{case.name}: repetition {rep + 1}/{case.repetitions} done "
                        f"({time.perf_counter() - rep_start:.0f} s)")
            rep_start = time.perf_counter()
            if checkpoint is not None and rep + 1 < case.repetitions:
                checkpoint(results_so_far())
    result = results_so_far()
    if settings.memory:
        logger.info(f"{case.name}: peak memory")
        result["memory"] = measure_memory(runner)
    return result


def _case_result(case: BenchCase, runner: Runner, seconds: dict[str, list[float]],
                 first_latents: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The results of a case from the seconds of its runs (complete repetitions)."""
    # The stitched runs must compute what the plain loop computes.
    diffs = {
        r: float((first_latents[f"stitched@{r:g}"].float() - first_latents[f"plain@{r:g}"].float()).abs().max())
        for r in case.all_fractions if f"stitched@{r:g}" in first_latents and f"plain@{r:g}" in first_latents
    }
    result: dict[str, Any] = {
        "name": case.name,
        "description": case.description,
        "conditioning": case.conditioning,
        "small": {"name": case.small_name, "parameters": sum(p.numel() for p in case.small.parameters()),
                  "weight_bytes": weight_bytes(case.small)},
        "large": {"name": case.large_name, "parameters": sum(p.numel() for p in case.large.parameters()),
                  "weight_bytes": weight_bytes(case.large)},
        "num_steps": case.num_steps,
        "num_images": case.num_images,
        "guidance_scale": case.guidance_scale,
        "scheduler": type(case.make_scheduler()).__name__,
        "dtype": str(runner.dtype).replace("torch.", ""),
        "repetitions": len(seconds["plain@0"]),
        "repetitions_planned": case.repetitions,
        "order": "each repetition runs every configuration once: plain@r and stitched@r back to back (their "
                 "order alternating), the pipeline pair back to back, the groups rotated by one each repetition",
        "runs": {config: {"seconds": list(values), **stats(values)} for config, values in seconds.items()},
        "rows": case_rows(case, seconds, diffs),
    }
    if case.plan is not None and not case.adaptive:
        diff = None
        if "stitched@plan" in first_latents and "plain@plan" in first_latents:
            diff = float((first_latents["stitched@plan"].float() - first_latents["plain@plan"].float()).abs().max())
        result["plan"] = plan_row(case, seconds, diff, result["rows"])
    no_tax_base = "pipeline" if "pipeline" in seconds else "plain@0"
    no_tax_stitched = "pipeline-stitched@0" if "pipeline" in seconds else "stitched@0"
    result["no_tax"] = {
        "baseline": no_tax_base if no_tax_base == "pipeline" else "plain@0 (the unstitched pipeline)",
        "stitched": no_tax_stitched,
        "ratio": paired(seconds[no_tax_stitched], seconds[no_tax_base]),
        "baseline_seconds_per_image": statistics.median(seconds[no_tax_base]) / case.num_images,
    }
    return result



def run_bench(
    cases: Sequence[BenchCase | tuple[str, dict[str, Any]]],
    out_dir: str | Path | None = None,
    settings: BenchSettings | None = None,
    *,
    device: torch.device | str = "cpu",
    preset: str | None = None,
) -> dict[str, Any]:
    """Run the harness over ``cases`` (ready :class:`BenchCase` objects, or ``(name, options)`` built on
    ``device`` one at a time so that only one pair is in memory) and write ``bench.json`` and ``bench.png``
    into ``out_dir`` (when given), after each repetition (``"complete": false`` until the end), so that a run
    cut short keeps what it measured. Returns the results dictionary."""
    settings = settings or BenchSettings()
    out = ensure_writable_dir(out_dir) if out_dir is not None else None
    started = time.perf_counter()
    machine = machine_info(device)
    results: dict[str, Any] = {
        "machine": machine,
        "preset": preset,
        "fast_paths": settings.fast.as_dict(),
        "fast_paths_label": str(settings.fast),
        "targets": dict(TARGETS),
        "dispatch": dispatch_overhead(settings.dispatch_calls),
        "cases": [],
        "complete": False,
    }
    finished: list[dict[str, Any]] = []

    def save(partial: dict[str, Any] | None = None) -> None:
        results["cases"] = finished + ([partial] if partial is not None else [])
        results["summary"] = summary_of(results["cases"])
        machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        results["wall_seconds"] = time.perf_counter() - started
        results["complete"] = partial is None and len(finished) == len(cases)
        if out is not None:
            write_json(out / "bench.json", results)
            plot_times(results, out / "bench.png")

    for entry in cases:
        if isinstance(entry, BenchCase):
            case = entry
        else:
            name, options = entry
            logger.info(f"{name}: building the models")
            case = build_case(name, device, settings.seed, **options)
        logger.info(f"{case.name}: {case.small_name} -> {case.large_name}, {case.num_steps} steps, "
                    f"{case.num_images} images, guidance {case.guidance_scale:g}")
        finished.append(run_case(case, settings, checkpoint=save))
        del case
        gc.collect()
        save()
    return results


