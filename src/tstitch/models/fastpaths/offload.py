# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Offloading the idle model(s) of a stitched denoiser to the CPU (for users short on GPU memory)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...sampling.timing import Stopwatch
from ...stitcher import StitchedDenoiser, get_stitch
from .graphs import has_cuda_graphs

logger = logging.getLogger(__name__)

__all__ = ["OffloadSwitch", "enable_offload", "disable_offload"]


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


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
    Models with CUDA graphs are refused: a graph replays on the weights' old addresses, which a move frees.
    Returns the installed :class:`OffloadSwitch`, whose ``seconds`` say what the transfers cost.
    """
    denoiser = _stitched_denoiser(target)
    graphed = [i for i, model in enumerate(denoiser.models) if has_cuda_graphs(model)]
    if graphed:
        raise ValueError(f"models {graphed} of the stitch have CUDA graphs, which replay on fixed weight addresses: "
                         "offloading moves the weights; call disable_cuda_graphs() first (or FastPaths(cuda_graphs="
                         "False))")
    device = torch.device(device) if device is not None else _device_of(denoiser.large)
    offload_device = torch.device(offload_device)
    if device == offload_device:
        logger.warning("offloading from %s to %s moves nothing", device, offload_device)
    switch = OffloadSwitch(list(denoiser.models), device, offload_device, resident=len(denoiser.models) - 1)
    switch.park()
    denoiser.before_call[:] = [c for c in denoiser.before_call if not isinstance(c, OffloadSwitch)] + [switch]
    return switch


def disable_offload(target: Any) -> None:
    """Remove the offload hook and bring every model of the stitch back onto the device."""
    denoiser = _stitched_denoiser(target)
    for switch in [c for c in denoiser.before_call if isinstance(c, OffloadSwitch)]:
        denoiser.before_call.remove(switch)
        for model in switch.models:
            model.to(switch.device)
