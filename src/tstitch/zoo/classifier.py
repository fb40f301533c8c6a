# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""A small CNN classifier of the 8x8 digits; its penultimate features define "digits-FID"."""

from __future__ import annotations

import torch
from torch import nn


class DigitsClassifier(nn.Module):
    """Three 3x3 convolutions and two linear layers; ``features()`` is the 64-d penultimate layer.

    ``forward`` returns the features too (``num_features`` = 64), so the module plugs into torchmetrics'
    ``FrechetInceptionDistance(feature=...)`` as a custom feature extractor. Use :meth:`logits` to classify.
    Inputs are images ``(N, 1, 8, 8)`` in [-1, 1].
    """

    num_features = 64

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, self.num_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float().clamp(-1.0, 1.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
