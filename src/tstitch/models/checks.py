# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Checks of loaded weights and loading options: each raises ``ValueError`` naming what is wrong."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..sampling.checks import check_device

__all__ = ["check_finite_weights", "check_float_tensors", "check_dtype", "check_device"]


def _finite(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds no NaN or inf. A NaN or inf makes the float32 sum non-finite, and the sum is
    about 30x faster than ``isfinite().all()`` on the CPU; a non-finite sum (or an overflow) is confirmed
    element by element."""
    with torch.no_grad():
        if bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
            return True
        return bool(torch.isfinite(tensor).all())


def check_finite_weights(model: torch.nn.Module, where: str) -> None:
    """``ValueError`` naming the tensors of ``model`` that hold NaN or inf (silent black images otherwise)."""
    bad = [name for name, tensor in (*model.named_parameters(), *model.named_buffers())
           if tensor.is_floating_point() and tensor.device.type != "meta" and not _finite(tensor)]
    if bad:
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise ValueError(f"{where}: non-finite weights (NaN or inf) in {', '.join(bad[:4])}{more}; the checkpoint "
                         "is damaged (a diverged training run or a bad conversion)")


def check_float_tensors(sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse weights that are not floating point (int32 or bool tensors would be cast silently into the
    model's float parameters), naming the first tensors and their dtypes."""
    wrong = [f"{key} is {str(value.dtype).replace('torch.', '')}" for key, value in sd.items()
             if not (value.is_floating_point() or value.is_complex())]
    if wrong:
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise ValueError(f"{where}: model weights are floating-point tensors, but {', '.join(wrong[:3])}{more} "
                         "(a file of another kind, or a corrupt one?)")


def check_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """``dtype`` as a floating-point ``torch.dtype`` (float32, float16, bfloat16, float64)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point torch.dtype (torch.float32, torch.float16, "
                         f"torch.bfloat16), got {dtype!r}")
    return dtype
