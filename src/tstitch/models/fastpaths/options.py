# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The model options of the fast path and :class:`FastPaths`, which bundles them with the numerics settings
(TF32, attention kernels) and CUDA graphs; see :mod:`tstitch.models.fastpaths`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .graphs import enable_cuda_graphs

logger = logging.getLogger(__name__)

__all__ = [
    "ATTENTION",
    "DTYPES",
    "CastingForward",
    "FastPaths",
    "cast_io",
    "compile_models",
    "compiled_graph_count",
    "numerics",
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


class CastingForward:
    """A model's forward that computes at ``dtype`` and answers in the caller's: floating-point inputs are
    cast to ``dtype`` and floating-point outputs back to the dtype of the first floating-point input. So a
    bf16 model in a float32 sampling loop keeps the latents and the scheduler's arithmetic in float32."""

    #: read by the sampling loop: the model takes latents of any floating dtype
    casts_io = True

    def __init__(self, forward: Any, dtype: torch.dtype):
        self.forward = forward
        self.dtype = dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves = pytree.tree_leaves((args, kwargs))
        caller = next((t.dtype for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()), None)

        def to_model(t: Any) -> Any:
            return t.to(self.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        def to_caller(t: Any) -> Any:
            return t.to(caller) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        args, kwargs = pytree.tree_map(to_model, (args, kwargs))
        output = self.forward(*args, **kwargs)
        return output if caller is None or caller == self.dtype else pytree.tree_map(to_caller, output)


def cast_io(models: Sequence[nn.Module]) -> list[nn.Module]:
    """Give each model a :class:`CastingForward` at its own dtype, in place (after :func:`set_dtype`)."""
    for model in models:
        if not isinstance(model.__dict__.get("forward"), CastingForward):
            model.forward = CastingForward(model.forward, next(model.parameters()).dtype)
    return list(models)


def to_channels_last(models: Sequence[nn.Module]) -> list[nn.Module]:
    """Store the models' 4-d weights channels-last, in place (helps convolutional U-Nets)."""
    for model in models:
        model.to(memory_format=torch.channels_last)
    return list(models)


#: The attention option: which ``scaled_dot_product_attention`` kernels may run. ``"auto"``: torch's own
#: choice; ``"flash"``: the fused kernels only (flash, cuDNN, memory-efficient; no unfused fallback, so an
#: unsupported shape or dtype fails instead of silently running slowly); ``"math"``: the unfused reference.
ATTENTION = ("auto", "flash", "math")


def _attention_backends(name: str) -> list[Any] | None:
    from torch.nn.attention import SDPBackend

    if name == "flash":
        fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        cudnn = getattr(SDPBackend, "CUDNN_ATTENTION", None)
        return fused + ([cudnn] if cudnn is not None else [])
    if name == "math":
        return [SDPBackend.MATH]
    return None


@contextlib.contextmanager
def numerics(tf32: bool = False, attention: str = "auto") -> Iterator[None]:
    """Within the block: TF32 for float32 matrix products and convolutions on CUDA (``tf32``), and the
    attention kernels allowed (``attention``, one of :data:`ATTENTION`). Both are restored afterwards."""
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    backends = _attention_backends(attention)
    try:
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        with contextlib.ExitStack() as stack:
            if backends is not None:
                from torch.nn.attention import sdpa_kernel

                stack.enter_context(sdpa_kernel(backends))
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@dataclass(frozen=True)
class FastPaths:
    """The speed options (all off by default; :meth:`for_device` gives the default of a device).

    Model options (:meth:`apply`): ``dtype`` (half precision; with ``cast_io``, the default, the models take
    and return the caller's dtype, so latents and scheduler stay float32), ``channels_last``, ``compile``
    (each model on its own), ``cuda_graphs`` (each model's forward captured per input shape; CUDA only).
    Numerics (:meth:`context`, around sampling): ``tf32`` and ``attention``. ``offload`` is applied to a
    stitched denoiser by :func:`~tstitch.models.fastpaths.enable_offload` and excludes ``cuda_graphs``.
    None changes which model runs at which step.
    """

    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    dtype: str | None = None
    channels_last: bool = False
    offload: bool = False
    cuda_graphs: bool = False
    tf32: bool = False
    attention: str = "auto"
    cast_io: bool = True

    def __post_init__(self) -> None:  # fail early on a bad value
        parse_dtype(self.dtype)
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if self.offload and self.cuda_graphs:
            raise ValueError("offload and cuda_graphs exclude each other: a CUDA graph replays on fixed weight "
                             "addresses, which offloading moves")

    @classmethod
    def for_device(cls, device: str | torch.device, **overrides: Any) -> FastPaths:
        """The default on ``device``: on CUDA bf16, ``torch.compile``, CUDA graphs, TF32 and the fused attention
        kernels; elsewhere nothing (fp32 eager, so CPU outputs stay bit-identical). ``overrides`` switch single
        options (``FastPaths.for_device("cuda", cuda_graphs=False)``)."""
        if torch.device(device).type == "cuda":
            base = cls(compile=True, dtype="bf16", cuda_graphs=True, tf32=True, attention="flash")
        else:
            base = cls()
        if overrides.get("offload"):
            overrides.setdefault("cuda_graphs", False)
        return replace(base, **overrides)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return parse_dtype(self.dtype)

    @property
    def enabled(self) -> bool:
        """Whether any option is on."""
        return self != FastPaths()

    def _compile_options(self) -> dict[str, Any]:
        return {"mode": self.compile_mode, "backend": self.compile_backend, "dynamic": False}

    def apply(self, models: Sequence[nn.Module]) -> list[nn.Module]:
        """Precision, then memory format, then compilation and CUDA graphs (last: they specialise on the
        first two). With both ``compile`` and ``cuda_graphs`` on a CUDA model, the graph captures the
        compiled forward; ``cuda_graphs`` on a CPU model is skipped (logged) and ``compile`` then applies
        as usual.
        """
        models = list(models)
        if self.dtype is not None:
            set_dtype(models, self.dtype)
            if self.cast_io and self.torch_dtype != torch.float32:
                cast_io(models)
        if self.channels_last:
            to_channels_last(models)
        graphed: list[nn.Module] = []
        if self.cuda_graphs:
            cuda = [m for m in models if _device_of(m).type == "cuda"]
            enable_cuda_graphs(cuda, compile_options=self._compile_options() if self.compile else None)
            graphed = cuda
            if len(cuda) < len(models):
                logger.info("CUDA graphs skipped for %d model(s) not on a CUDA device", len(models) - len(cuda))
        if self.compile:
            compile_models([m for m in models if not any(m is g for g in graphed)], mode=self.compile_mode,
                           backend=self.compile_backend)
        return models

    def input_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The dtype to give the models' inputs (the latents) in: float32 with ``cast_io``, else theirs."""
        return torch.float32 if self.cast_io and self.dtype is not None else model_dtype

    def context(self) -> contextlib.AbstractContextManager[None]:
        """The numerics settings (:func:`numerics`) to sample within."""
        return numerics(self.tf32, self.attention)

    def as_dict(self) -> dict[str, Any]:
        return {
            "compile": self.compile,
            "compile_mode": self.compile_mode,
            "compile_backend": self.compile_backend if self.compile else None,
            "dtype": str(self.torch_dtype or torch.float32).replace("torch.", ""),
            "channels_last": self.channels_last,
            "offload": self.offload,
            "cuda_graphs": self.cuda_graphs,
            "tf32": self.tf32,
            "attention": self.attention,
            "cast_io": self.cast_io,
        }

    def __str__(self) -> str:
        parts = []
        if self.compile:
            parts.append(f"compile({self.compile_backend}{', ' + self.compile_mode if self.compile_mode else ''})")
        if self.dtype is not None:
            parts.append(str(self.torch_dtype).replace("torch.", "")
                         + (" (float32 latents)" if self.cast_io and self.torch_dtype != torch.float32 else ""))
        if self.channels_last:
            parts.append("channels_last")
        if self.cuda_graphs:
            parts.append("cuda_graphs")
        if self.tf32:
            parts.append("tf32")
        if self.attention != "auto":
            parts.append(f"{self.attention} attention")
        if self.offload:
            parts.append("offload")
        return " + ".join(parts) or "none"
