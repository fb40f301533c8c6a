# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""FID (:class:`FeatureFID`), Inception Score, improved precision and recall, and classifier accuracy."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from ._checks import finite_matrix, positive_int

logger = logging.getLogger(__name__)


def iterate_batches(tensor: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of ``tensor`` of ``batch_size`` rows (the last may be shorter)."""
    batch_size = positive_int("batch_size", batch_size)  # checked now, not on the first next()
    return (tensor[start : start + batch_size] for start in range(0, len(tensor), batch_size))


class _Precomputed(nn.Module):
    """The identity, standing in for torchmetrics' feature network: we hand it features we computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _device_of(module: nn.Module | None) -> torch.device:
    if module is None:
        return torch.device("cpu")
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _checked_statistics(mean: Any, cov: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference ``(mean, covariance)`` as float64, refused unless finite and a covariance: ``(D, D)``,
    symmetric and positive semi-definite up to round-off."""
    mean = torch.as_tensor(np.asarray(mean), dtype=torch.float64)
    cov = torch.as_tensor(np.asarray(cov), dtype=torch.float64)
    if mean.ndim != 1 or len(mean) < 1:
        raise ValueError(f"the reference mean must be a vector (D,), got shape {tuple(mean.shape)}")
    if cov.shape != (len(mean), len(mean)):
        raise ValueError(f"covariance shape {tuple(cov.shape)} does not match mean of length {len(mean)}")
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise ValueError("the reference mean or covariance holds NaN or inf values")
    scale = float(cov.abs().max())
    if float((cov - cov.T).abs().max()) > 1e-6 * scale:
        raise ValueError("the reference covariance is not symmetric")
    lowest = float(torch.linalg.eigvalsh(cov).min())
    if lowest < -1e-6 * scale:
        raise ValueError(f"the reference covariance is not positive semi-definite (eigenvalue {lowest:.3g})")
    return mean, cov


class FeatureFID:
    """Frechet distance between generated images and a fixed reference, in ``extractor``'s features.

    The reference is given once, as exactly one of: ``reference`` images (run through ``extractor``),
    their ``features`` ``(N, D)``, or ``statistics`` ``(mean, covariance)``. :meth:`score` (images) and
    :meth:`score_features` (features) can then be called for many sets. ``extractor`` maps an image batch
    to ``(N, D)`` features; it is only needed for :meth:`score` and for ``reference`` images. The
    statistics and the distance are torchmetrics' ``FrechetInceptionDistance`` (float64).
    """

    def __init__(
        self,
        extractor: nn.Module | None = None,
        reference: torch.Tensor | None = None,
        batch_size: int = 1000,
        *,
        features: torch.Tensor | None = None,
        statistics: tuple[Any, Any] | None = None,
    ):
        given = [name for name, value in (("reference", reference), ("features", features),
                                          ("statistics", statistics)) if value is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of reference, features, statistics (got {given or 'none'})")
        if reference is not None and extractor is None:
            raise ValueError("reference images need an extractor")
        self.extractor = extractor
        self.batch_size = positive_int("batch_size", batch_size)
        self.device = _device_of(extractor)
        if reference is not None:
            if len(reference) < 2:
                raise ValueError(f"the reference set needs at least 2 images, got {len(reference)}")
            features = self.features(reference)
        if features is not None:
            finite_matrix("reference features", features, min_rows=2)
            self._fid = self._metric(features.shape[1])
            for batch in iterate_batches(features, batch_size):
                self._fid.update(batch.to(self.device), real=True)
            self.reference_size = len(features)
        else:
            mean, cov = _checked_statistics(*statistics)
            self._fid = self._metric(len(mean))
            # torchmetrics keeps sums; these sums of n = 2 samples reproduce the given mean and covariance.
            n = 2
            self._fid.real_features_sum = (n * mean).to(self.device)
            self._fid.real_features_cov_sum = ((n - 1) * cov + n * torch.outer(mean, mean)).to(self.device)
            self._fid.real_features_num_samples = torch.tensor(n, device=self.device)
            self.reference_size = None
        self._reference_trace = float(self.reference_statistics()[1].trace())

    def _metric(self, num_features: int) -> FrechetInceptionDistance:
        # sync_on_compute=False: under torch.distributed only one process scores; no collective may start.
        return FrechetInceptionDistance(feature=_Precomputed(num_features), reset_real_features=False,
                                        sync_on_compute=False).to(self.device)

    @property
    def num_features(self) -> int:
        return int(self._fid.real_features_sum.shape[0])

    def reference_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference mean and covariance (float64), e.g. to store them."""
        n = self._fid.real_features_num_samples
        mean = self._fid.real_features_sum / n
        cov = (self._fid.real_features_cov_sum - n * torch.outer(mean, mean)) / (n - 1)
        return mean.cpu(), cov.cpu()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``extractor``'s features of ``images``, in batches."""
        if self.extractor is None:
            raise ValueError("this FeatureFID has no extractor: score features with score_features()")
        if images.is_floating_point() and not bool(torch.isfinite(images).all()):
            raise ValueError("images hold NaN or inf values (the sampler diverged?)")
        return torch.cat([self.extractor(batch.to(self.device)) for batch in iterate_batches(images, self.batch_size)])

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> float:
        """Frechet distance of ``images`` (at least 2) to the reference set."""
        if len(images) < 2:
            raise ValueError(f"need at least 2 images to compute a Frechet distance, got {len(images)}")
        return self.score_features(self.features(images))

    @torch.no_grad()
    def score_features(self, features: torch.Tensor) -> float:
        """Frechet distance of a set given by its features ``(N >= 2, D)`` to the reference set."""
        if features.ndim != 2 or len(features) < 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features must be (N >= 2, {self.num_features}) (at least 2 samples, the reference's "
                             f"width), got shape {tuple(features.shape)}")
        finite_matrix("features", features, min_rows=2)
        self._fid.reset()  # keeps the reference (reset_real_features=False)
        for batch in iterate_batches(features, self.batch_size):
            self._fid.update(batch.to(self.device), real=False)
        fid = float(self._fid.compute())
        # Two traces minus twice the trace of a matrix square root: near equal sets leave round-off of either sign.
        # Negatives within that round-off are 0; larger ones mean the covariances are numerically broken.
        tolerance = 1e-6 * (self._reference_trace + float(features.double().var(dim=0).sum())) + 1e-9
        if fid < -tolerance:
            raise ValueError(f"the Frechet distance came out negative ({fid:.3g}): the covariances are numerically "
                             "broken (nearly singular or not positive semi-definite)")
        return max(fid, 0.0)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose highest logit is the requested label."""
    finite_matrix("logits", logits)
    if tuple(labels.shape) != (len(logits),):
        raise ValueError(f"labels must be one per row of logits ({len(logits)},), got shape {tuple(labels.shape)}")
    return (logits.argmax(1).cpu() == labels.cpu()).float().mean().item()


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 1000) -> float:
    """Fraction of ``images`` that ``classifier.logits`` assigns to their requested ``labels``."""
    if len(images) < 1 or tuple(labels.shape) != (len(images),):
        raise ValueError(f"need at least one image and one label per image, got {len(images)} images and labels "
                         f"of shape {tuple(labels.shape)}")
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise ValueError("images hold NaN or inf values (the sampler diverged?)")
    batches = iterate_batches(images, batch_size)
    device = _device_of(classifier)
    logits = [classifier.logits(batch.to(device)).cpu() for batch in batches]
    return accuracy_from_logits(torch.cat(logits), labels)


@torch.no_grad()
def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score (mean and standard deviation over ``splits``) of a set given by its logits.

    torchmetrics' ``InceptionScore`` shuffles the set before splitting; the shuffle is seeded here so the
    score is a function of the set.
    """
    splits = positive_int("splits", splits)
    if len(logits) < splits:
        raise ValueError(f"splits={splits} needs at least {splits} samples, got {len(logits)}")
    finite_matrix("logits", logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features in buffer"
        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits, sync_on_compute=False)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # std() of a single split
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else 0.0


def _knn_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance of every row to its k-th nearest other row."""
    radii = [torch.cdist(chunk, features).kthvalue(k + 1, dim=1).values  # +1: each row is its own nearest
             for chunk in iterate_batches(features, batch_size)]
    return torch.cat(radii)


def _inside(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Fraction of ``points`` inside at least one ball ``(centers[j], radii[j])`` (boundary included)."""
    inside = sum(int((torch.cdist(chunk, centers) <= radii[None, :]).any(dim=1).sum())
                 for chunk in iterate_batches(points, batch_size))
    return inside / len(points)


@torch.no_grad()
def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch_size: int = 5000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) of ``fake`` against ``real`` features.

    Each set's manifold is the union of balls around its points, of radius the distance to the point's
    ``k``-th nearest neighbour in the same set. Precision: the share of generated points inside the real
    manifold; recall: the share of real points inside the generated manifold.
    """
    k = positive_int("k", k)
    positive_int("batch_size", batch_size)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) of one width, got {tuple(real.shape)} and {tuple(fake.shape)}")
    finite_matrix("real features", real)
    finite_matrix("generated features", fake)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {len(real)} real and {len(fake)} generated")
    fake = fake.to(real.device, real.dtype)
    precision = _inside(fake, real, _knn_radii(real, k, batch_size), batch_size)
    recall = _inside(real, fake, _knn_radii(fake, k, batch_size), batch_size)
    return precision, recall


