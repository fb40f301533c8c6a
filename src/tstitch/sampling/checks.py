# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Checks of what the samplers are given, run before any model call.

Each raises ``ValueError`` naming the argument, the value it got and what is allowed, so that a bad request
never turns into silent garbage (pure noise, black images, the null class) or a raw ``IndexError`` deep in a
model. :func:`tstitch.sample`, :func:`~tstitch.experiments.batches.sample_batches` and
:func:`~tstitch.sampling.official.sample_official` call them; the command line may call them too.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = [
    "check_guidance_scale",
    "check_num_steps",
    "check_positive_int",
    "check_class_labels",
    "check_noise",
    "check_device",
    "check_generator",
    "check_scheduler_object",
]


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return torch.is_tensor(value) and value.ndim == 0 and not value.is_floating_point() and not value.is_complex()


def check_guidance_scale(value: Any, name: str = "guidance_scale") -> float:
    """``value`` as a finite float ``>= 0`` (guidance is on above 1); NaN, inf and negatives are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number >= 0 (guidance is on above 1), got {value!r}")
    scale = float(value)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (guidance is on above 1), got {value!r}")
    return scale


def check_positive_int(value: Any, name: str, maximum: int | None = None) -> int:
    """``value`` as an int in ``[1, maximum]``; bools, floats (2.5 and 3.0 alike) and strings are refused."""
    allowed = f"an integer in [1, {maximum}]" if maximum is not None else "an integer >= 1"
    if not _is_int(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    number = int(value)
    if number < 1 or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {allowed}, got {number}")
    return number


def check_num_steps(value: Any, scheduler: Any = None, name: str = "num_inference_steps") -> int:
    """A step count: an int ``>= 1``, at most the scheduler's ``num_train_timesteps`` when it has one."""
    config = getattr(scheduler, "config", None) or {}
    maximum = config.get("num_train_timesteps") if hasattr(config, "get") else None
    return check_positive_int(value, name, int(maximum) if maximum else None)


def check_class_labels(
    labels: Any, batch: int, num_classes: int | None, device: torch.device | str = "cpu", name: str = "class_labels"
) -> torch.Tensor | None:
    """The labels as a long tensor of length ``batch`` on ``device`` (None stays None).

    Every label must be an integer in ``[0, num_classes - 1]``: the null class ``num_classes`` (used by
    guidance) is refused, as are negative labels, fractional ones (1.7), booleans and a wrong count.
    """
    if labels is None:
        return None
    try:
        tensor = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be integers, got {labels!r} ({error})") from None
    if tensor.is_floating_point() and not torch.is_tensor(labels):
        tensor = torch.as_tensor(labels, dtype=torch.float64)  # 1.7 reported as given, not as float32
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name} must be integers, got dtype {tensor.dtype}")
    if tensor.ndim > 1:
        raise ValueError(f"{name} must be one label per sample (1-D), got shape {tuple(tensor.shape)}")
    tensor = tensor.reshape(-1)
    if tensor.numel() != batch:
        raise ValueError(f"got {tensor.numel()} class labels for a batch of {batch} ({name})")
    if tensor.is_floating_point():
        bad = [v for v in tensor.tolist() if not math.isfinite(v) or v != int(v)]
        if bad:
            raise ValueError(f"{name} must be whole numbers, got [{', '.join(f'{v:g}' for v in bad[:8])}]")
    top = f"{num_classes - 1}" if num_classes is not None else "the model's class count - 1"
    values = tensor.long()
    bad = [int(v) for v in values.tolist() if v < 0 or (num_classes is not None and v >= num_classes)]
    if bad:
        null = f" ({num_classes} is the null class, used by guidance)" if num_classes is not None else ""
        raise ValueError(f"{name} must be in [0, {top}], got {bad[:8]}{null}")
    return values.to(device)


def check_noise(
    noise: Any,
    *,
    channels: int | None = None,
    size: int | None = None,
    dtype: torch.dtype | None = None,
    name: str = "noise",
) -> torch.Tensor:
    """``noise`` is a finite floating tensor ``(batch >= 1, channels, size, size)`` of ``dtype``
    (each of ``channels``, ``size`` and ``dtype`` checked when given)."""
    if not torch.is_tensor(noise):
        raise ValueError(f"{name} must be a torch tensor (batch, channels, height, width), got {type(noise).__name__}")
    shape = tuple(noise.shape)
    if noise.ndim != 4:
        raise ValueError(f"{name} must be (batch, channels, height, width), got shape {shape}")
    if shape[0] < 1:
        raise ValueError(f"{name} must hold at least one sample, got shape {shape}")
    if not noise.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {noise.dtype}")
    if dtype is not None and noise.dtype != dtype:
        raise ValueError(f"{name} has dtype {noise.dtype} but the model's is {dtype}: pass noise.to({dtype})")
    if channels is not None and shape[1] != channels:
        raise ValueError(f"{name} has {shape[1]} channels (shape {shape}); the model takes {channels}")
    if size is not None and shape[2:] != (size, size):
        raise ValueError(f"{name} is {shape[2]}x{shape[3]} (shape {shape}); the model samples {size}x{size} latents")
    if noise.device.type != "meta" and not bool(torch.isfinite(noise).all()):
        raise ValueError(f"{name} holds NaN or inf values")
    return noise


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine (``cuda`` without a GPU is refused)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"{name} {device!r} is not a device name (cpu, cuda, cuda:1, mps, ...): {error}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {device!r} is not available: this machine has no usable CUDA GPU "
                             "(torch.cuda.is_available() is False); use 'cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"{name} {device!r} does not exist: this machine has {count} CUDA device(s)")
    elif resolved.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{name} {device!r} is not available on this machine; use 'cpu'")
    elif resolved.type not in ("cpu", "meta"):
        available = getattr(getattr(torch, resolved.type, None), "is_available", None)
        if available is None or not available():
            raise ValueError(f"{name} {device!r} is not available on this machine; use 'cpu'")
    return resolved


def check_generator(generator: Any, batch: int, name: str = "generator") -> None:
    """``generator`` is None, a ``torch.Generator``, or one ``torch.Generator`` per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError(f"{name} must be one torch.Generator per sample ({batch}), got {len(generator)} "
                             f"items of types {sorted({type(g).__name__ for g in generator})}")
        return
    raise ValueError(f"{name} must be a torch.Generator (not a seed: torch.Generator().manual_seed(seed)), "
                     f"a list of them or None, got {generator!r}")


def check_scheduler_object(scheduler: Any, name: str = "scheduler") -> None:
    """``scheduler`` is a diffusers scheduler object (a name or a class is refused, saying how to build one)."""
    if isinstance(scheduler, type) or not (hasattr(scheduler, "set_timesteps") and hasattr(scheduler, "step")):
        raise ValueError(f"{name} must be a diffusers scheduler object, got {scheduler!r}; build one with "
                         "tstitch.sampling.make_scheduler(name, noise_schedule)")
