# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Peak memory of stitched runs, the stitching dispatch cost, and what the numbers were measured on."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..models.fastpaths import has_cuda_graphs
from ..plan import Plan
from ..sampling.timing import synchronize
from ..stitcher import StitchedDenoiser
from .runners import Runner

__all__ = ["weight_bytes", "measure_memory", "dispatch_overhead", "machine_info"]


# -- memory ------------------------------------------------------------------------------------------------------


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


class _RSS:
    """Peak resident memory of this process during a block, on Linux (``/proc/self``).

    Before the block, ``malloc_trim(0)`` hands the heap's free pages back to the system (so that a buffer
    reused from an earlier run counts again when it is touched) and ``clear_refs`` resets the high-water
    mark to the current resident set. The allocator's settings are left alone: timings are not disturbed.
    """

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/self/clear_refs")
        self._libc = None
        with contextlib.suppress(OSError):
            self._libc = ctypes.CDLL("libc.so.6")

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"no {key} in /proc/self/status")

    def peak_delta(self, fn: Callable[[], Any]) -> int:
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        before = self._status("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        fn()
        return self._status("VmHWM") - before


def measure_memory(runner: Runner) -> dict[str, Any]:
    """Peak memory of the large model alone, of a stitched run and (when on) of an offloaded stitched run.

    On CUDA each peak is measured whole: ``torch.cuda.max_memory_allocated`` over the run, with the small
    model moved to the CPU for the runs that do not hold it on the GPU. On CPU it is the weights the run
    holds (counted from the tensors) plus the rise of the resident set over the run (measured). One step
    of each model is enough: the peak of a run is that of its largest step.
    """
    device, case = runner.device, runner.case
    steps = 2
    small_bytes = weight_bytes(case.small)
    configs = {"large_alone": "plain@0", "stitched": "stitched@0.5"}
    if runner.offload_fraction is not None:
        configs["offloaded"] = "offload@0.5"
    result: dict[str, Any] = {"steps": steps, "small_weight_bytes": small_bytes,
                              "large_weight_bytes": weight_bytes(case.large)}
    if device.type == "cuda":
        result["method"] = ("torch.cuda.max_memory_allocated() over the run: weights, activations and the "
                            "pipeline's stand-in VAE; the small model waits on the CPU in the runs that do not "
                            "keep it on the GPU")
        if has_cuda_graphs(case.small):  # its graphs replay on the weights' addresses: it cannot move
            result["method"] += " (not here: the small model has CUDA graphs, so it stays on the GPU in every run)"
        for label, config in configs.items():
            away = [] if label == "stitched" or has_cuda_graphs(case.small) else [case.small]
            for model in away:
                model.to("cpu")
            synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            runner.run(config, steps)
            synchronize(device)
            result[label] = {"config": config, "peak_bytes": torch.cuda.max_memory_allocated(device)}
            for model in away:
                model.to(device)
    else:
        rss = _RSS()
        if not rss.available:
            return {"method": "unavailable (no /proc/self/clear_refs)"}
        result["method"] = ("weights held (counted from the tensors) + rise of the resident set over the run "
                            "(VmHWM after clear_refs minus VmRSS before, the heap's free pages handed back with "
                            "malloc_trim first)")
        for label, config in configs.items():
            held = weight_bytes(case.large) + (small_bytes if label == "stitched" else 0)
            rise = rss.peak_delta(lambda config=config: runner.run(config, steps))
            result[label] = {"config": config, "weight_bytes": held, "rss_rise_bytes": rise, "peak_bytes": held + rise}
    extra = result["stitched"]["peak_bytes"] - result["large_alone"]["peak_bytes"]
    result["stitched_minus_large_bytes"] = extra
    result["beyond_small_weights_bytes"] = extra - small_bytes
    return result



class _Nop(nn.Module):
    def forward(self, sample: torch.Tensor, timestep: Any = None, class_labels: Any = None) -> torch.Tensor:
        return sample


class _NullScheduler:
    """Just enough of a scheduler for the stitched denoiser to count steps on."""

    order = 1
    config: dict[str, Any] = {}

    def __init__(self, num_steps: int):
        self.num_inference_steps = num_steps
        self.timesteps = list(range(num_steps))

    def set_timesteps(self, num_steps: int) -> None:
        self.num_inference_steps = num_steps

    def step(self) -> None:
        return None


def dispatch_overhead(calls: int = 2000, repeats: int = 5) -> dict[str, float]:
    """Microseconds per step that stitching adds: a do-nothing model called through a bound
    :class:`StitchedDenoiser` (with its counted scheduler step) against the same model called directly."""
    x = torch.zeros(1)

    def loop(model: Callable[..., Any], scheduler: _NullScheduler) -> float:
        best = math.inf
        for _ in range(repeats):
            scheduler.set_timesteps(calls)
            start = time.perf_counter()
            for t in range(calls):
                model(x, timestep=t)
                scheduler.step()
            best = min(best, time.perf_counter() - start)
        return best / calls * 1e6

    small, large = _Nop(), _Nop()
    direct = loop(large, _NullScheduler(calls))
    scheduler = _NullScheduler(calls)
    denoiser = StitchedDenoiser([small, large], Plan.from_small_fractions(0.4)).bind(scheduler)
    try:
        stitched = loop(denoiser, scheduler)
    finally:
        denoiser.unbind()
    return {"direct_us_per_step": direct, "stitched_us_per_step": stitched, "overhead_us_per_step": stitched - direct}


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on."""
    import diffusers

    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["label"] = f"{info['gpu']}, torch {torch.__version__} (CUDA {torch.version.cuda})"
    else:
        info["label"] = (f"{cpu} ({info['usable_cpus']} CPUs), {info['torch_threads']} torch threads, "
                         f"torch {torch.__version__}")
    return info


