# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""CUDA graphs per model: each model's forward captured once per input shape and replayed.

A sampling step of a small model at a small batch is many short kernels; launching them one by one from
Python can take longer than running them. A CUDA graph launches the whole forward at once. Each model of a
stitch gets its own graphs (one per input signature: shapes, dtypes, devices and the other arguments), so
switching models replays another already-captured graph and captures nothing. The wrapper replaces the
model's ``forward`` on the instance (the model keeps its class, config and weights, so ``stitch()``
accepts it); :func:`disable_cuda_graphs` removes it.

Inputs are copied into the graph's own buffers before each replay and outputs are cloned after it, so a
caller may keep an output across calls. Calls with autograd on, with tensors off CUDA, or on a CPU-only
machine run the plain forward. Graphs replay on fixed weight addresses: moving a model (offloading) after
capture would replay on freed memory, which :func:`~tstitch.models.fastpaths.enable_offload` refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

logger = logging.getLogger(__name__)

__all__ = ["CudaGraphForward", "enable_cuda_graphs", "disable_cuda_graphs", "has_cuda_graphs"]


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


class _Captured:
    """One captured graph: its input buffers (the tensor leaves of the call) and its output."""

    def __init__(self, inner: Callable[..., Any], leaves: list[Any], spec: Any, warmup_calls: int):
        self.leaves = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = pytree.tree_unflatten(self.leaves, spec)
        device = next(leaf.device for leaf in self.leaves if isinstance(leaf, torch.Tensor))
        # Warm up on a side stream (as torch.cuda.graphs documents): lazy initialisation, autotuning and any
        # compilation happen outside the capture.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup_calls):
                inner(*args, **kwargs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = inner(*args, **kwargs)

    def replay(self, leaves: list[Any]) -> Any:
        for buffer, leaf in zip(self.leaves, leaves, strict=True):
            if isinstance(buffer, torch.Tensor):
                buffer.copy_(leaf)
        self.graph.replay()
        return pytree.tree_map(_clone, self.output)


class CudaGraphForward:
    """A model's forward through CUDA graphs, one per input signature (see the module docstring).

    ``inner`` is what gets captured: the model's own forward, or a ``torch.compile`` of it. ``captures``
    and ``replays`` count what happened (a switch between models must add no capture).
    """

    def __init__(self, original: Callable[..., Any], inner: Callable[..., Any], warmup_calls: int = 2,
                 previous: Any = None):
        self.original = original
        self.previous = previous  # the instance-level forward this one replaced (restored by disable), if any
        self.inner = inner
        self.warmup_calls = warmup_calls
        self.graphs: dict[Any, _Captured] = {}
        self.captures = 0
        self.replays = 0

    @staticmethod
    def _key(leaves: list[Any], spec: Any) -> Any | None:
        """The signature of a call, or None when it cannot run as a graph (no CUDA tensor, a CPU tensor,
        an argument that is not a plain value)."""
        parts: list[Any] = [str(spec)]
        on_cuda = False
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if leaf.device.type != "cuda" or leaf.requires_grad:
                    return None
                on_cuda = True
                parts.append((tuple(leaf.shape), leaf.dtype, leaf.device, leaf.stride()))
            elif leaf is None or isinstance(leaf, (bool, int, float, str)):
                parts.append((type(leaf).__name__, leaf))
            else:
                return None
        return tuple(parts) if on_cuda else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return self.inner(*args, **kwargs)
        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = self._key(leaves, spec)
        if key is None:
            return self.inner(*args, **kwargs)
        captured = self.graphs.get(key)
        if captured is None:
            logger.info("capturing a CUDA graph (%d so far)", len(self.graphs) + 1)
            captured = self.graphs[key] = _Captured(self.inner, leaves, spec, self.warmup_calls)
            self.captures += 1
        self.replays += 1
        return captured.replay(leaves)


def has_cuda_graphs(model: nn.Module) -> bool:
    """Whether :func:`enable_cuda_graphs` wrapped ``model``'s forward."""
    return isinstance(model.__dict__.get("forward"), CudaGraphForward)


def enable_cuda_graphs(models: Sequence[nn.Module], *, compile_options: dict[str, Any] | None = None,
                       warmup_calls: int = 2) -> list[CudaGraphForward]:
    """Run each model's forward through CUDA graphs (in place); returns the wrappers.

    ``compile_options``, when given, ``torch.compile`` each forward with them first (the graph then
    replays the compiled kernels). Models on a CPU are left alone (logged).
    """
    wrappers = []
    for model in models:
        if has_cuda_graphs(model):
            wrappers.append(model.__dict__["forward"])
            continue
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if device.type != "cuda":
            logger.info("CUDA graphs need a CUDA device; %s stays as it is on %s", type(model).__name__, device)
            continue
        original = model.forward
        inner = torch.compile(original, **compile_options) if compile_options is not None else original
        wrapper = CudaGraphForward(original, inner, warmup_calls, previous=model.__dict__.get("forward"))
        model.forward = wrapper
        wrappers.append(wrapper)
    return wrappers


def disable_cuda_graphs(models: Sequence[nn.Module]) -> None:
    """Give the models back the forward they had before (their graphs and compiled code are dropped)."""
    for model in models:
        if has_cuda_graphs(model):
            previous = model.__dict__["forward"].previous
            if previous is None:
                del model.__dict__["forward"]
            else:
                model.forward = previous
