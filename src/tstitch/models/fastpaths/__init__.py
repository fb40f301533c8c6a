# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Inference speed options that work together with stitching.

Each option acts on the models themselves, on the numerics settings around sampling, or (offloading) on the
stitched denoiser's :attr:`~tstitch.stitcher.StitchedDenoiser.before_call` hook, never on the schedule:
which model runs at which step stays exactly what the :class:`~tstitch.plan.Plan` says.

- :func:`compile_models`: ``torch.compile`` of each model on its own (``nn.Module.compile``, in place, so
  the model keeps its class, config and weights and ``stitch()`` accepts it). The stitched denoiser's
  dispatch stays in eager Python, so switching models runs another already-compiled graph rather than
  recompiling; :func:`compiled_graph_count` lets a caller check that.
- :func:`set_dtype`: half precision (``fp16`` / ``bf16``), meant for GPUs; :func:`cast_io` lets such a model
  take and return float32, so the latents and the scheduler stay in float32.
- :func:`to_channels_last`: the channels-last memory format, which helps convolutional U-Nets.
- :func:`enable_cuda_graphs` (:mod:`.graphs`): each model's forward captured as a CUDA graph per input
  shape and replayed (CUDA only).
- :func:`numerics`: TF32 for float32 matrix products, and which attention kernels may run.
- :func:`enable_offload` (:mod:`.offload`): keep only the model that is running on the GPU and the idle
  one(s) on the CPU, for users short on GPU memory. Each switch costs a transfer of the weights.

:class:`FastPaths` bundles them for the CLI and the benchmark harness; ``FastPaths.for_device(device)`` is
the default: everything but offloading on CUDA, nothing on a CPU.
"""

from .graphs import CudaGraphForward, disable_cuda_graphs, enable_cuda_graphs, has_cuda_graphs
from .offload import OffloadSwitch, disable_offload, enable_offload
from .options import (
    ATTENTION,
    DTYPES,
    CastingForward,
    FastPaths,
    cast_io,
    compile_models,
    compiled_graph_count,
    numerics,
    parse_dtype,
    set_dtype,
    to_channels_last,
)

__all__ = [
    "ATTENTION",
    "DTYPES",
    "CastingForward",
    "CudaGraphForward",
    "FastPaths",
    "cast_io",
    "OffloadSwitch",
    "compile_models",
    "compiled_graph_count",
    "disable_cuda_graphs",
    "disable_offload",
    "enable_cuda_graphs",
    "enable_offload",
    "has_cuda_graphs",
    "numerics",
    "parse_dtype",
    "set_dtype",
    "to_channels_last",
]
