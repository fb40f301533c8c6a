# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Sample-quality metrics through torchmetrics.

``FeatureFID`` computes a Frechet distance in the feature space of any extractor (torchmetrics'
``FrechetInceptionDistance`` with a custom feature module): the digits classifier gives "digits-FID" for
the embedded family; an Inception network gives the usual FID.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = ["FeatureFID", "classifier_accuracy", "iterate_batches"]


def iterate_batches(tensor: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, len(tensor), batch_size):
        yield tensor[start : start + batch_size]


class FeatureFID:
    """Frechet distance between generated images and a fixed reference set, in ``extractor``'s features.

    The reference statistics are computed once; :meth:`score` can then be called for many sets.
    ``extractor`` maps an image batch to ``(N, num_features)`` and has a ``num_features`` attribute.
    """

    def __init__(self, extractor: nn.Module, reference: torch.Tensor, batch_size: int = 1000):
        if len(reference) < 2:
            raise ValueError(f"the reference set needs at least 2 images, got {len(reference)}")
        self.batch_size = batch_size
        self.device = next(extractor.parameters()).device
        self._fid = FrechetInceptionDistance(feature=extractor, reset_real_features=False).to(self.device)
        for batch in iterate_batches(reference, batch_size):
            self._fid.update(batch.to(self.device), real=True)
        self.reference_size = len(reference)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> float:
        """Frechet distance of ``images`` (at least 2) to the reference set."""
        if len(images) < 2:
            raise ValueError(f"need at least 2 images to compute a Frechet distance, got {len(images)}")
        self._fid.reset()  # keeps the reference features (reset_real_features=False)
        for batch in iterate_batches(images, self.batch_size):
            self._fid.update(batch.to(self.device), real=False)
        return float(self._fid.compute())


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 1000) -> float:
    """Fraction of ``images`` that ``classifier.logits`` assigns to their requested ``labels``."""
    device = next(classifier.parameters()).device
    correct = 0
    for batch, target in zip(iterate_batches(images, batch_size), iterate_batches(labels, batch_size), strict=True):
        correct += (classifier.logits(batch.to(device)).argmax(1).cpu() == target.cpu()).sum().item()
    return correct / max(1, len(images))
