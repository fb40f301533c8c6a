# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Inference speed options that work together with stitching.

Each option acts on the models themselves (or, for offloading, on the stitched denoiser's
:attr:`~tstitch.stitcher.StitchedDenoiser.before_call` hook), never on the schedule: which model runs at
which step stays exactly what the :class:`~tstitch.plan.Plan` says.

- :func:`compile_models`: ``torch.compile`` of each model on its own (``nn.Module.compile``, in place, so
  the model keeps its class, config and weights and ``stitch()`` accepts it). The stitched denoiser's
  dispatch stays in eager Python, so switching models runs another already-compiled graph rather than
  recompiling; :func:`compiled_graph_count` lets a caller check that.
- :func:`set_dtype`: half precision (``fp16`` / ``bf16``), meant for GPUs.
- :func:`to_channels_last`: the channels-last memory format, which helps convolutional U-Nets.
- :func:`enable_offload`: keep only the model that is running on the GPU and the idle one(s) on the CPU,
  for users short on GPU memory. Each switch costs a transfer of the weights (see :class:`OffloadSwitch`).

:class:`FastPaths` bundles the model options for the CLI and the benchmark harness.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..sampling.timing import Stopwatch
from ..stitcher import StitchedDenoiser, get_stitch

logger = logging.getLogger(__name__)

__all__ = [
    "DTYPES",
    "FastPaths",
    "OffloadSwitch",
    "compile_models",
    "compiled_graph_count",
    "disable_offload",
    "enable_offload",
    "parse_dtype",
    "set_dtype",
    "to_channels_last",
]

#: Accepted names of the precision option.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"fp16"``, ``"bf16"``, ``"fp32"`` (or a ``torch.dtype``, or None) as a ``torch.dtype``."""
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; use one of fp32, fp16, bf16") from None


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def compile_models(
    models: Sequence[nn.Module],
    *,
    mode: str | None = None,
    backend: str = "inductor",
    dynamic: bool = False,
    fullgraph: bool = False,
) -> list[nn.Module]:
    """Compile each model in place with ``nn.Module.compile``; returns the same modules.

    Compilation happens at each model's first call (time it apart from sampling: the benchmark harness
    reports the first warm-up pass minus the second). ``dynamic=False`` compiles for the exact shapes of
    the first call, which is what a sampling loop repeats.
    """
    for model in models:
        model.compile(mode=mode, backend=backend, dynamic=dynamic, fullgraph=fullgraph)
    return list(models)


def compiled_graph_count() -> int:
    """How many graphs ``torch.compile`` has compiled in this process so far (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def set_dtype(models: Sequence[nn.Module], dtype: str | torch.dtype) -> list[nn.Module]:
    """Cast the models' weights to ``dtype`` in place (``fp16`` / ``bf16`` are meant for GPUs)."""
    dtype = parse_dtype(dtype)
    for model in models:
        if dtype in (torch.float16, torch.bfloat16) and _device_of(model).type == "cpu":
            logger.warning("half precision on a CPU is supported but rarely faster; it is meant for GPUs")
        model.to(dtype=dtype)
    return list(models)


def to_channels_last(models: Sequence[nn.Module]) -> list[nn.Module]:
    """Store the models' 4-d weights channels-last, in place (helps convolutional U-Nets)."""
    for model in models:
        model.to(memory_format=torch.channels_last)
    return list(models)


@dataclass(frozen=True)
class FastPaths:
    """The speed options applied to the models before sampling (all off by default)."""

    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    dtype: str | None = None
    channels_last: bool = False
    offload: bool = False

    def __post_init__(self) -> None:
        parse_dtype(self.dtype)  # fail early on a bad name

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return parse_dtype(self.dtype)

    def apply(self, models: Sequence[nn.Module]) -> list[nn.Module]:
        """Precision, then memory format, then compilation (last: it specialises on the first two).

        Offloading is not applied here: it needs the stitched denoiser (:func:`enable_offload`).
        """
        models = list(models)
        if self.dtype is not None:
            set_dtype(models, self.dtype)
        if self.channels_last:
            to_channels_last(models)
        if self.compile:
            compile_models(models, mode=self.compile_mode, backend=self.compile_backend)
        return models

    def as_dict(self) -> dict[str, Any]:
        return {
            "compile": self.compile,
            "compile_mode": self.compile_mode,
            "compile_backend": self.compile_backend if self.compile else None,
            "dtype": str(self.torch_dtype or torch.float32).replace("torch.", ""),
            "channels_last": self.channels_last,
            "offload": self.offload,
        }

    def __str__(self) -> str:
        parts = []
        if self.compile:
            parts.append(f"compile({self.compile_backend}{', ' + self.compile_mode if self.compile_mode else ''})")
        if self.dtype is not None:
            parts.append(str(self.torch_dtype).replace("torch.", ""))
        if self.channels_last:
            parts.append("channels_last")
        if self.offload:
            parts.append("offload")
        return " + ".join(parts) or "none"


class OffloadSwitch:
    """Keeps one model of a stitched denoiser on ``device`` and the others on ``offload_device``.

    Installed as the denoiser's ``before_call`` hook: before a model runs, the model that ran before it
    (if another) goes to ``offload_device`` and this one comes to ``device``. At rest, the last model to
    run stays on ``device`` (the large model, after a run that ends with it). ``seconds`` and ``swaps``
    count the time spent moving weights (with a CUDA synchronisation before each move, so the time is the
    transfer's, not that of queued kernels).
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device, offload_device: torch.device,
                 resident: int):
        self.models = list(models)
        self.device = device
        self.offload_device = offload_device
        self.resident = resident
        self.seconds = 0.0
        self.swaps = 0

    def __call__(self, index: int) -> None:
        if index == self.resident:
            return
        with Stopwatch(self.device) as watch:
            self.models[self.resident].to(self.offload_device)  # first out, then in: never both on the device
            self.models[index].to(self.device)
        self.seconds += watch.seconds
        self.swaps += 1
        self.resident = index

    def park(self, index: int | None = None) -> None:
        """Put the models at rest: ``index`` (default the large, last one) on the device, the others off."""
        index = len(self.models) - 1 if index is None else index
        for i, model in enumerate(self.models):
            if i != index:
                model.to(self.offload_device)
        self.models[index].to(self.device)
        self.resident = index


def _stitched_denoiser(target: Any) -> StitchedDenoiser:
    try:
        return get_stitch(target)
    except ValueError:
        name = type(target).__name__
        raise ValueError(f"{name} is not stitched: call tstitch.stitch() before enable_offload()") from None


def enable_offload(
    target: Any,
    device: str | torch.device | None = None,
    offload_device: str | torch.device = "cpu",
) -> OffloadSwitch:
    """Offload the idle models of a stitched pipeline (or :class:`StitchedDenoiser`) to ``offload_device``.

    ``device`` is where models run (default: where the large model is now). Call it after
    ``tstitch.stitch()``; re-stitching makes a new denoiser without the hook. The pipeline's other
    components (VAE, text encoders) stay where they are, so the pipeline keeps seeing its execution device.
    Returns the installed :class:`OffloadSwitch`, whose ``seconds`` say what the transfers cost.
    """
    denoiser = _stitched_denoiser(target)
    device = torch.device(device) if device is not None else _device_of(denoiser.large)
    offload_device = torch.device(offload_device)
    if device == offload_device:
        logger.warning("offloading from %s to %s moves nothing", device, offload_device)
    switch = OffloadSwitch(list(denoiser.models), device, offload_device, resident=len(denoiser.models) - 1)
    switch.park()
    denoiser.before_call = switch
    return switch


def disable_offload(target: Any) -> None:
    """Remove the offload hook and bring every model of the stitch back onto the device."""
    denoiser = _stitched_denoiser(target)
    switch = denoiser.before_call
    denoiser.before_call = None
    if isinstance(switch, OffloadSwitch):
        for model in switch.models:
            model.to(switch.device)
