# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Argument checks shared by the metrics: each raises ``ValueError`` naming the argument and the value."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def finite_matrix(name: str, values: Any, *, min_rows: int = 1, width: int | None = None) -> None:
    """``values`` is ``(N >= min_rows, D)`` (``D == width`` when given) and holds no NaN or inf."""
    shape = tuple(values.shape)
    if len(shape) != 2 or shape[0] < min_rows or (width is not None and shape[1] != width):
        wanted = f"(N >= {min_rows}, {width if width is not None else 'D'})"
        raise ValueError(f"{name} must be {wanted}, got shape {shape}")
    if not bool(torch.isfinite(torch.as_tensor(values)).all()):
        raise ValueError(f"{name} hold NaN or inf values")


def uint8_images(name: str, images: Any, channels: tuple[int, ...] | None = (1, 3)) -> None:
    """``images`` is uint8 ``(N, H, W, C)`` with ``C`` in ``channels`` (any ``C`` when None)."""
    dtype = images.dtype
    if dtype not in (torch.uint8, np.uint8):
        raise ValueError(f"{name} must be uint8 images (N, H, W, C) in 0..255, got dtype {dtype}")
    shape = tuple(images.shape)
    if len(shape) != 4 or (channels is not None and shape[-1] not in channels):
        wanted = f" with C in {channels}" if channels is not None else ""
        raise ValueError(f"{name} must be (N, H, W, C){wanted}, got shape {shape}")
