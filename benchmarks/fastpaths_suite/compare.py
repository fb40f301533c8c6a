# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The fast paths against the fp32 eager baseline, in one run: speed, achieved TFLOP/s, output difference,
peak memory (with and without offloading the idle model).

Each *variant* is a :class:`~tstitch.models.fastpaths.FastPaths` applied to its own copy of the case's
models (the first variant is the baseline). Every repetition runs every variant at every fraction with
stitched sampling (:func:`tstitch.experiments.batches.sample_batches`, the loop `tstitch sample` uses), the fractions in
an order rotated by one each repetition and the variants of a fraction back to back, their order reversed
every other repetition, so that a busy or warming machine hits all of them alike. Figures are ratios within
a repetition (median, min, max). Every run is checked against the plan, step by step.

FLOP are counted once per model with ``torch.utils.flop_counter`` (2 per multiply-add) on the eager fp32
model, for one image (and its unconditional twin under guidance).
"""

from __future__ import annotations

import copy
import gc
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tstitch.bench.cases import BenchCase
from tstitch.bench.report import paired, stats
from tstitch.experiments.batches import sample_batches
from tstitch.models.fastpaths import (
    FastPaths,
    compiled_graph_count,
    disable_cuda_graphs,
    enable_offload,
    has_cuda_graphs,
)
from tstitch.plan import Plan
from tstitch.sampling import num_classes_of, sample
from tstitch.sampling.timing import synchronize, timed
from tstitch.stitcher import StitchedDenoiser

logger = logging.getLogger(__name__)

__all__ = ["Variant", "BF16_DENSE_PEAK_TFLOPS", "bf16_peak_tflops", "forward_flops", "latent_difference",
           "run_variants"]

#: Dense bf16 tensor-core peaks (TFLOP/s, 2 FLOP per multiply-add) by a part of the device name, most
#: specific first: NVIDIA's datasheets (H100 SXM and H200 989.4, H100 PCIe 756.5, A100 312).
BF16_DENSE_PEAK_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIe"), 756.5),
    (("H100",), 989.4),
    (("H200",), 989.4),
    (("A100",), 312.0),
]


@dataclass(frozen=True)
class Variant:
    """A named set of fast paths (the first variant of a run is the baseline)."""

    name: str
    fast: FastPaths


def bf16_peak_tflops(device: torch.device | str) -> float | None:
    """The dense bf16 peak of a CUDA device (:data:`BF16_DENSE_PEAK_TFLOPS`), or None if unknown / not CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for parts, peak in BF16_DENSE_PEAK_TFLOPS if all(p in name for p in parts)), None)


def forward_flops(model: nn.Module, batch: int, labels: bool = True) -> int:
    """FLOP of one forward of ``model`` at ``batch`` (2 per multiply-add, ``torch.utils.flop_counter``)."""
    config = model.config
    device = next(model.parameters()).device
    x = torch.zeros(batch, config.in_channels, config.sample_size, config.sample_size, device=device,
                    dtype=next(model.parameters()).dtype)
    t = torch.full((batch,), 500, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device) if labels else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, timestep=t, class_labels=y)
    return int(counter.get_total_flops())


def latent_difference(latents: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Max and mean absolute difference of two latent batches (in float32), and the reference's mean |x|."""
    diff = (latents.float().cpu() - reference.float().cpu()).abs()
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "reference_mean_abs": float(reference.float().abs().mean())}


def _weights_on_cuda(models: Sequence[nn.Module]) -> int:
    return sum(t.numel() * t.element_size() for m in models for t in (*m.parameters(), *m.buffers())
               if t.device.type == "cuda")


class _VariantRunner:
    """One variant's models (its own copies unless it is the plain baseline) and its runs."""

    def __init__(self, variant: Variant, case: BenchCase, noise: torch.Tensor, labels: torch.Tensor, copy_models: bool):
        self.variant = variant
        self.case = case
        models = [case.small, case.large]
        self.models = [copy.deepcopy(m) for m in models] if copy_models else models
        variant.fast.apply(self.models)
        self.dtype = next(self.models[-1].parameters()).dtype
        self.noise = noise.to(variant.fast.input_dtype(self.dtype))
        self.labels = labels
        self.device = noise.device

    def run(self, fraction: float, steps: int) -> tuple[float, torch.Tensor, list[int]]:
        with self.variant.fast.context():
            latents, seconds, per_step = sample_batches(
                self.models, [fraction], self.case.make_scheduler, self.noise, self.labels, num_steps=steps,
                guidance_scale=self.case.guidance_scale, batch_size=self.case.num_images)
        expected = Plan.from_small_fractions(fraction).assignment(steps)
        if per_step != expected:
            raise RuntimeError(f"{self.variant.name} r={fraction:g}: models per step {per_step}, the plan says "
                               f"{expected}")
        return seconds, latents, per_step

    def peak_memory(self, fraction: float, offload: bool) -> dict[str, Any]:
        """Peak CUDA memory of this variant's run at ``fraction`` (the other variants' weights taken out)."""
        denoiser = StitchedDenoiser(self.models, Plan.from_small_fractions(fraction))
        switch = enable_offload(denoiser, self.device) if offload else None
        synchronize(self.device)
        gc.collect()
        torch.cuda.empty_cache()
        others = torch.cuda.memory_allocated(self.device) - _weights_on_cuda(self.models)
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with self.variant.fast.context():
                seconds, _ = timed(lambda: sample(
                    denoiser, None, self.case.make_scheduler(), noise=self.noise, class_labels=self.labels,
                    num_inference_steps=self.case.num_steps, guidance_scale=self.case.guidance_scale), self.device)
        finally:
            if switch is not None:
                switch.park()
                for model in self.models:
                    model.to(self.device)
        result = {"peak_bytes": torch.cuda.max_memory_allocated(self.device) - others, "seconds": seconds,
                  "offload": offload, "process_reserved_bytes": torch.cuda.memory_reserved(self.device)}
        if switch is not None:
            result["transfer_seconds"] = switch.seconds
        return result


def _flops_per_step(case: BenchCase) -> list[int]:
    """FLOP of one sampling step of each model for the case's batch (doubled under guidance)."""
    batch = case.num_images * (2 if case.guidance_scale > 1 else 1)
    has_labels = num_classes_of(case.large) is not None
    return [forward_flops(m, 1, has_labels) * batch for m in (case.small, case.large)]


def run_variants(
    case: BenchCase,
    variants: Sequence[Variant],
    *,
    seed: int = 0,
    quality_fraction: float = 0.4,
    memory: bool = True,
    budget_seconds: float | None = None,
    warmup_steps: int = 2,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Time every variant at every fraction of ``case`` (see the module docstring); returns the results.

    ``checkpoint`` receives the results after each repetition. ``budget_seconds``: no repetition starts that
    would, at the pace of the last one, end after that many seconds from the start (the runs done are kept).
    """
    if len(variants) < 2 or len({v.name for v in variants}) != len(variants):
        raise ValueError(f"give at least two variants with distinct names, got {[v.name for v in variants]}")
    if not 0.0 <= quality_fraction <= 1.0:
        raise ValueError(f"quality_fraction must be in [0, 1], got {quality_fraction}")
    started = time.perf_counter()
    device = next(case.large.parameters()).device
    fractions = tuple(sorted({*case.all_fractions, quality_fraction}))
    generator = torch.Generator().manual_seed(seed)
    config = case.large.config
    noise = torch.randn(case.num_images, config.in_channels, config.sample_size, config.sample_size,
                        generator=generator).to(device)
    classes = num_classes_of(case.large) or 1
    labels = (torch.arange(case.num_images) % classes).to(device)
    flops = _flops_per_step(case)

    runners: list[_VariantRunner] = []
    warmup: dict[str, list[float]] = {}
    for i, variant in enumerate(variants):
        logger.info(f"{case.name}: preparing {variant.name} ({variant.fast})")
        runner = _VariantRunner(variant, case, noise, labels, copy_models=i > 0 or variant.fast.enabled)
        graphs = compiled_graph_count()
        passes = 2 if variant.fast.compile or variant.fast.cuda_graphs else 1
        warmup[variant.name] = [runner.run(0.5, warmup_steps)[0] for _ in range(passes)]
        warmup[variant.name + ":graphs"] = [compiled_graph_count() - graphs]
        runners.append(runner)

    seconds: dict[str, dict[float, list[float]]] = {v.name: {r: [] for r in fractions} for v in variants}
    quality: dict[str, torch.Tensor] = {}
    graphs_before = compiled_graph_count()
    result: dict[str, Any] = {}

    def results_so_far(done: int) -> dict[str, Any]:
        return _results(case, variants, fractions, seconds, quality, flops, warmup, quality_fraction, device,
                        done, graphs_before)

    rep_seconds = 0.0
    for rep in range(case.repetitions):
        elapsed = time.perf_counter() - started
        if rep and budget_seconds is not None and elapsed + rep_seconds > budget_seconds:
            logger.warning(f"{case.name}: stopping after {rep} repetitions: another would pass the "
                           f"{budget_seconds:.0f} s budget")
            break
        rep_start = time.perf_counter()
        shift = rep % len(fractions)
        for r in (*fractions[shift:], *fractions[:shift]):
            for runner in (runners if rep % 2 == 0 else runners[::-1]):
                run_seconds, latents, _ = runner.run(r, case.num_steps)
                seconds[runner.variant.name][r].append(run_seconds)
                if rep == 0 and r == quality_fraction:
                    quality[runner.variant.name] = latents.float().cpu()
        rep_seconds = time.perf_counter() - rep_start
        logger.info(f"{case.name}: repetition {rep + 1}/{case.repetitions} done ({rep_seconds:.0f} s)")
        result = results_so_far(rep + 1)
        if checkpoint is not None:
            checkpoint(result)
    if memory and device.type == "cuda":
        result["memory"] = _memory(runners, quality_fraction)
        if checkpoint is not None:
            checkpoint(result)
    return result


def _memory(runners: Sequence[_VariantRunner], fraction: float) -> dict[str, Any]:
    """Peak memory of each variant with both models resident, then with the idle one offloaded (graphed
    variants drop their CUDA graphs first, which offloading cannot keep: they run eager at their dtype)."""
    out: dict[str, Any] = {"fraction": fraction, "method": "torch.cuda.max_memory_allocated during one run, minus "
                           "what the other variants hold; a CUDA graph's activations live in its private pool, "
                           "captured before: they are in process_reserved_bytes (all variants), not in the peak"}
    for runner in runners:
        name = runner.variant.name
        out[name] = {"resident": runner.peak_memory(fraction, offload=False)}
    for runner in runners:
        name = runner.variant.name
        note = None
        if any(has_cuda_graphs(m) for m in runner.models):
            disable_cuda_graphs(runner.models)
            note = "CUDA graphs and compilation dropped for offloading (eager at the variant's dtype)"
        out[name]["offloaded"] = {**runner.peak_memory(fraction, offload=True), "note": note}
    return out


def _results(case: BenchCase, variants: Sequence[Variant], fractions: Sequence[float],
             seconds: dict[str, dict[float, list[float]]], quality: dict[str, torch.Tensor], flops: list[int],
             warmup: dict[str, list[float]], quality_fraction: float, device: torch.device, done: int,
             graphs_before: int) -> dict[str, Any]:
    base = variants[0].name
    peak = bf16_peak_tflops(device)
    rows = []
    for r in fractions:
        small_steps = Plan.from_small_fractions(r).steps_per_model(case.num_steps)[0]
        run_flops = small_steps * flops[0] + (case.num_steps - small_steps) * flops[1]
        row: dict[str, Any] = {"fraction": r, "small_steps": small_steps, "flop": run_flops, "variants": {}}
        for v in variants:
            values = seconds[v.name][r]
            median = statistics.median(values)
            row["variants"][v.name] = {
                "seconds": list(values), **stats(values),
                "speedup_vs_baseline": paired(seconds[base][r], values),
                "speedup_vs_r0": paired(seconds[v.name][0.0], values),
                "tflops": run_flops / median / 1e12,
                "fraction_of_bf16_peak": run_flops / median / 1e12 / peak if peak else None,
            }
        rows.append(row)
    result: dict[str, Any] = {
        "name": case.name, "description": case.description,
        "small": {"name": case.small_name, "parameters": sum(p.numel() for p in case.small.parameters()),
                  "flop_per_step": flops[0]},
        "large": {"name": case.large_name, "parameters": sum(p.numel() for p in case.large.parameters()),
                  "flop_per_step": flops[1]},
        "num_steps": case.num_steps, "num_images": case.num_images, "guidance_scale": case.guidance_scale,
        "scheduler": type(case.make_scheduler()).__name__,
        "variants": [{"name": v.name, "label": str(v.fast), "fast_paths": v.fast.as_dict()} for v in variants],
        "baseline": base,
        "repetitions": done, "repetitions_planned": case.repetitions,
        "bf16_dense_peak_tflops": peak,
        "warmup_seconds": {k: v for k, v in warmup.items() if not k.endswith(":graphs")},
        "compile": {v.name: {"compile_seconds": warmup[v.name][0] - warmup[v.name][1],
                             "graphs_compiled": warmup[v.name + ":graphs"][0]}
                    for v in variants if len(warmup[v.name]) > 1},
        "graphs_compiled_during_timing": compiled_graph_count() - graphs_before,
        "rows": rows,
    }
    if base in quality:
        result["quality"] = {"fraction": quality_fraction, "versus": base,
                             **{name: latent_difference(latents, quality[base])
                                for name, latents in quality.items() if name != base}}
    return result
