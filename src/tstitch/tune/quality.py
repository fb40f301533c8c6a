# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The search's quality signal: how far a plan's samples are from the large model's own samples.

Every plan starts from the same noise and labels as the reference (the large model alone), so the signal
is paired: per sample, the distance between the plan's final image and the reference's final image in a
feature space (the metric's features: the digits classifier's 64-d layer on the embedded family), averaged
and divided by the mean distance between *unpaired* reference samples (so 0 is "the same images" and 1 is
"as different as two random samples"). A small-sample paired FID ratio is computed alongside when real
reference statistics are given; it is noisier, and used only to read a tolerance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .engine import PrefixSampler
from .stats import frechet_distance, gaussian_statistics

logger = logging.getLogger(__name__)

__all__ = ["PlanScore", "PairedSignal", "flat_features"]

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def flat_features(latents: torch.Tensor) -> torch.Tensor:
    """The default feature space when no metric is given: the flattened final latents."""
    return latents.flatten(1).float()


@dataclass
class PlanScore:
    sequence: tuple[int, ...]
    distance: float
    fid_ratio: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"sequence": list(self.sequence), "distance": self.distance, "fid_ratio": self.fid_ratio}


class PairedSignal:
    """Scores plans against the large model alone at ``reference_steps`` steps, on ``sampler``'s noise.

    Args:
        sampler: the shared noise, labels and models (the large model last).
        features: maps final latents to features ``(N, D)``.
        real_statistics: mean and covariance of real data's features, for the FID ratio (optional).
        reference_steps: the step count of the reference run.
    """

    def __init__(self, sampler: PrefixSampler, features: FeatureFn = flat_features, *,
                 real_statistics: tuple[torch.Tensor, torch.Tensor] | None = None, reference_steps: int = 20):
        if reference_steps < 1:
            raise ValueError(f"reference_steps must be >= 1, got {reference_steps}")
        self.sampler = sampler
        self.features = features
        self.real_statistics = real_statistics
        self.large = len(sampler.models) - 1
        self.reference_sequence = (self.large,) * reference_steps
        self.reference = self.features_of(self.reference_sequence)
        shuffled = self.reference.roll(1, dims=0)
        self.scale = float((self.reference - shuffled).norm(dim=1).mean()) or 1.0
        self.reference_fid = None
        if real_statistics is not None:
            self.reference_fid = frechet_distance(*gaussian_statistics(self.reference), *real_statistics)
        self.scores: dict[tuple[int, ...], PlanScore] = {}

    @torch.no_grad()
    def features_of(self, sequence: Sequence[int]) -> torch.Tensor:
        return self.features(self.sampler.run(sequence)).double().cpu()

    def score(self, sequence: Sequence[int]) -> PlanScore:
        """The plan's signal (computed once per plan; later calls return the stored score)."""
        sequence = tuple(sequence)
        if sequence not in self.scores:
            features = self.features_of(sequence)
            distance = float((features - self.reference).norm(dim=1).mean()) / self.scale
            fid_ratio = None
            if self.real_statistics is not None:
                fid = frechet_distance(*gaussian_statistics(features), *self.real_statistics)
                fid_ratio = fid / self.reference_fid
            self.scores[sequence] = PlanScore(sequence, distance, fid_ratio)
            logger.debug("plan %s: distance %.4f, fid ratio %s", sequence, distance, fid_ratio)
        return self.scores[sequence]
