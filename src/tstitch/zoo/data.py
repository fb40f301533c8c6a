# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The 8x8 handwritten digits that ship with scikit-learn, as tensors in [-1, 1].

Kept at their native 8x8: upsampling adds no information and costs about 4x per training and sampling
step (16 tokens at patch 2 instead of 64), which would not fit the CPU budget of the embedded family.
"""

from __future__ import annotations

import torch

NUM_CLASSES = 10
IMAGE_SIZE = 8
MAX_VALUE = 16.0  # pixel values of load_digits are integers 0..16


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: images ``(N, 1, 8, 8)`` float32 in [-1, 1] and labels ``(N,)`` int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    images = images / (MAX_VALUE / 2) - 1.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    return images, labels


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space to [0, 1] pixel space, clamped."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)
