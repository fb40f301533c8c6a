# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Sample-quality metrics: FID, Inception Score, precision and recall, in any feature space.

* :class:`FeatureFID`: a Frechet distance through torchmetrics' ``FrechetInceptionDistance`` (which keeps
  the statistics and computes the distance). The reference is a set of images, their features, or a
  precomputed mean and covariance (the ADM reference batches store them as ``mu`` / ``sigma``). The digits
  classifier gives "digits-FID" for the embedded family; :class:`InceptionV3Features` the usual FID.
* :func:`inception_score`: torchmetrics' ``InceptionScore`` on a classifier's logits.
* :func:`precision_recall`: improved precision and recall (Kynkaanniemi et al., 2019): k-nearest-neighbour
  balls around each feature vector estimate the manifolds of the real and the generated sets.
* :class:`InceptionV3Features`: the Inception-v3 network of FID (the TensorFlow graph of 2015-12-05, as
  ported to PyTorch by pytorch-fid / torch-fidelity), written here so that no torchvision is needed. Its
  weights come from a local file (:func:`load_inception`); nothing is downloaded.
* Feature spaces (:class:`DigitsFeatures`, :class:`InceptionFeatures`) turn generated uint8 NHWC images
  into features and logits; :class:`Reference` and :func:`load_reference` hold the real side;
  :func:`score_features` computes every metric of one generated set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureFID",
    "classifier_accuracy",
    "accuracy_from_logits",
    "iterate_batches",
    "inception_score",
    "precision_recall",
    "InceptionV3Features",
    "load_inception",
    "find_inception_weights",
    "resize_like_tensorflow",
    "FeatureSpace",
    "DigitsFeatures",
    "InceptionFeatures",
    "Reference",
    "load_reference",
    "npz_batches",
    "npz_shape",
    "extract",
    "score_features",
    "images_to_uint8",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
]

#: Environment variable naming the local Inception weights file.
INCEPTION_WEIGHTS_ENV = "TSTITCH_INCEPTION_WEIGHTS"
#: The FID Inception weights (pytorch-fid's name; torch-fidelity ships the same network as
#: ``weights-inception-2015-12-05-6726825d.pth``).
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)


def iterate_batches(tensor: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, len(tensor), batch_size):
        yield tensor[start : start + batch_size]


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
        self.batch_size = batch_size
        self.device = _device_of(extractor)
        if reference is not None:
            if len(reference) < 2:
                raise ValueError(f"the reference set needs at least 2 images, got {len(reference)}")
            features = self.features(reference)
        if features is not None:
            if features.ndim != 2 or len(features) < 2:
                raise ValueError(f"reference features must be (N >= 2, D), got shape {tuple(features.shape)}")
            self._fid = self._metric(features.shape[1])
            for batch in iterate_batches(features, batch_size):
                self._fid.update(batch.to(self.device), real=True)
            self.reference_size = len(features)
        else:
            mean = torch.as_tensor(np.asarray(statistics[0]), dtype=torch.float64).reshape(-1)
            cov = torch.as_tensor(np.asarray(statistics[1]), dtype=torch.float64)
            if cov.shape != (len(mean), len(mean)):
                raise ValueError(f"covariance shape {tuple(cov.shape)} does not match mean of length {len(mean)}")
            self._fid = self._metric(len(mean))
            # torchmetrics keeps sums; these sums of n = 2 samples reproduce the given mean and covariance.
            n = 2
            self._fid.real_features_sum = (n * mean).to(self.device)
            self._fid.real_features_cov_sum = ((n - 1) * cov + n * torch.outer(mean, mean)).to(self.device)
            self._fid.real_features_num_samples = torch.tensor(n, device=self.device)
            self.reference_size = None

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
        if len(features) < 2:
            raise ValueError(f"need at least 2 images to compute a Frechet distance, got {len(features)}")
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features of shape {tuple(features.shape)} for a reference of {self.num_features}")
        self._fid.reset()  # keeps the reference (reset_real_features=False)
        for batch in iterate_batches(features, self.batch_size):
            self._fid.update(batch.to(self.device), real=False)
        return float(self._fid.compute())


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose highest logit is the requested label."""
    return (logits.argmax(1).cpu() == labels.cpu()).float().mean().item() if len(logits) else 0.0


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 1000) -> float:
    """Fraction of ``images`` that ``classifier.logits`` assigns to their requested ``labels``."""
    device = _device_of(classifier)
    logits = [classifier.logits(batch.to(device)).cpu() for batch in iterate_batches(images, batch_size)]
    return accuracy_from_logits(torch.cat(logits), labels) if logits else 0.0


@torch.no_grad()
def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score (mean and standard deviation over ``splits``) of a set given by its logits.

    torchmetrics' ``InceptionScore`` shuffles the set before splitting; the shuffle is seeded here so the
    score is a function of the set.
    """
    if len(logits) < 1:
        raise ValueError("need at least one sample for an Inception Score")
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
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) of one width, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {len(real)} real and {len(fake)} generated")
    fake = fake.to(real.device, real.dtype)
    precision = _inside(fake, real, _knn_radii(real, k, batch_size), batch_size)
    recall = _inside(real, fake, _knn_radii(fake, k, batch_size), batch_size)
    return precision, recall


# -- the FID Inception network ---------------------------------------------------------------------------------


def resize_like_tensorflow(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` as TensorFlow 1's ``resize_bilinear`` (no half-pixel centres).

    Output pixel ``o`` samples the input at ``o * in / out``, which is what the FID graph does (and what
    ``F.interpolate`` does not).
    """
    out = images
    for axis, (length, target) in enumerate(zip(images.shape[-2:], size, strict=True)):
        if length == target:
            continue
        source = torch.arange(target, dtype=torch.float64) * (length / target)
        low = source.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        weight = (source - low).to(images.dtype).to(images.device)
        dim = out.ndim - 2 + axis
        shape = [1] * out.ndim
        shape[dim] = target
        weight = weight.reshape(shape)
        out = out.index_select(dim, low.to(images.device)) * (1 - weight) + \
            out.index_select(dim, high.to(images.device)) * weight
    return out


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: Inception's basic unit."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the average.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):  # 35 x 35 grid: 1x1, 5x5, double 3x3, pooled 1x1
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class _ReduceB(nn.Module):  # 35 -> 17 grid reduction
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _MixedC(nn.Module):  # 17 x 17 grid: factorised 7x7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for i in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{i}")(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_avg_pool(x)),
        ], 1)


class _ReduceD(nn.Module):  # 17 -> 8 grid reduction
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):  # 8 x 8 grid: expanded 3x3 branches; the last block max-pools (as the FID graph)
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3Features(nn.Module):
    """The Inception-v3 of FID: uint8 images in, 2048-d pool features and 1008 unbiased logits out.

    Module names follow the published PyTorch port, so the file ``pt_inception-2015-12-05-6726825d.pth``
    (pytorch-fid) or ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity) loads as it is (see
    :func:`load_inception`). Input: ``(N, 3, H, W)`` uint8 (or float in 0..255), resized to 299 x 299 as
    TensorFlow 1 does and scaled to ``(x - 128) / 128``. Built randomly initialised; call :func:`load_inception`
    for the real network.
    """

    num_features = 2048
    num_logits = 1008
    input_size = 299

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReduceB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _ReduceD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)
        self.fc = nn.Linear(2048, self.num_logits)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionV3Features:
        return super().train(False)  # batch norm always uses its running statistics

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pool features (N, 2048), unbiased logits (N, 1008))`` of ``images``."""
        x = resize_like_tensorflow(images.float(), (self.input_size, self.input_size))
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool = x.mean(dim=(2, 3))
        return pool, pool @ self.fc.weight.T  # logits without the bias, as Inception Score uses them


def _weights_help() -> str:
    return (f"set {INCEPTION_WEIGHTS_ENV} or pass --inception-weights: the file {INCEPTION_WEIGHTS_FILE} "
            f"(download it on a machine with internet access from {INCEPTION_WEIGHTS_URLS[0]} or, the same "
            f"network, {INCEPTION_WEIGHTS_URLS[1]})")


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path``, else ``$TSTITCH_INCEPTION_WEIGHTS``; ``FileNotFoundError`` saying
    where to get it when neither names an existing file."""
    path = path or os.environ.get(INCEPTION_WEIGHTS_ENV)
    if not path:
        raise FileNotFoundError(f"no Inception weights given for FID / Inception Score: {_weights_help()}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"Inception weights {path} not found: {_weights_help()}")
    return Path(path)


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionV3Features:
    """The FID Inception network with its weights from ``path`` (default: ``$TSTITCH_INCEPTION_WEIGHTS``).

    Raises ``FileNotFoundError`` saying where to get the file when none is given or it is missing, and
    ``ValueError`` when the file does not hold this network.
    """
    path = find_inception_weights(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling errors have no common base class
            raise ValueError(f"cannot read Inception weights {path}: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    model = InceptionV3Features()
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that do not fit
        raise ValueError(f"{path} is not the FID Inception network ({error}); {_weights_help()}") from error
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path} is not the FID Inception network: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}; {_weights_help()}")
    return model.to(device)


# -- feature spaces -----------------------------------------------------------------------------------------------


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] ``(N, C, H, W)`` to uint8 ``(N, H, W, C)``: ``clamp(127.5 x + 128)`` truncated, as the
    DiT / ADM sampling scripts store them."""
    return (127.5 * images.float() + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class FeatureSpace(Protocol):
    """Turns generated images (uint8 ``(N, H, W, C)``) into features ``(N, D)`` and logits (or None)."""

    name: str
    device: torch.device
    labels_match_logits: bool

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class DigitsFeatures:
    """The demo's digits metric: the digits classifier's 64-d features and its 10 logits."""

    name = "digits"
    labels_match_logits = True  # logit j is digit j: accuracy of the requested labels is meaningful

    def __init__(self, classifier: nn.Module):
        self.classifier = classifier
        self.device = _device_of(classifier)

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        features = self.classifier.features(x)
        return features, self.classifier.head(features)


class InceptionFeatures:
    """FID Inception pool features and unbiased logits (grey images are repeated to three channels)."""

    name = "inception"
    labels_match_logits = False  # 1008 Inception classes, not the generator's labels

    def __init__(self, network: nn.Module):
        self.network = network
        self.device = _device_of(network)

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(self.device).permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        features, logits = self.network(x)
        return features.float(), logits.float()


def extract(space: FeatureSpace,
            batches: Iterable[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features and logits of every batch of uint8 NHWC images, concatenated on the CPU."""
    features, logits = [], []
    for batch in batches:
        f, lg = space.extract(torch.as_tensor(np.array(batch)))  # a writable copy
        features.append(f.cpu())
        if lg is not None:
            logits.append(lg.cpu())
    if not features:
        raise ValueError("no images to extract features from")
    return torch.cat(features), (torch.cat(logits) if logits else None)


# -- the real side --------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """The real images' side of the metrics: features (for precision/recall, and FID when no statistics are
    given) and/or a precomputed mean and covariance (FID)."""

    features: torch.Tensor | None = None
    mean: np.ndarray | None = None
    cov: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.features is None and (self.mean is None or self.cov is None):
            raise ValueError(f"reference {self.source!r} has neither features nor a mean and covariance")

    def fid(self, batch_size: int = 1000) -> FeatureFID:
        if self.mean is not None and self.cov is not None:
            return FeatureFID(statistics=(self.mean, self.cov), batch_size=batch_size)
        return FeatureFID(features=self.features, batch_size=batch_size)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _folder_batches(folder: Path, batch_size: int) -> Iterator[np.ndarray]:
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"reference folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    shape = None
    for start in range(0, len(files), batch_size):
        batch = []
        for file in files[start : start + batch_size]:
            with Image.open(file) as image:
                array = np.asarray(image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB"))
            array = array[..., None] if array.ndim == 2 else array
            if shape is None:
                shape = array.shape
            elif array.shape != shape:
                raise ValueError(f"reference images must all have one size: {file} is {array.shape}, "
                                 f"{files[0]} is {shape}")
            batch.append(array)
        yield np.stack(batch)


@contextlib.contextmanager
def _npy_member(path: str | os.PathLike, key: str) -> Iterator[tuple[Any, tuple[int, ...], np.dtype]]:
    """The stream of array ``key`` of an ``.npz``, past its header, with the array's shape and dtype."""
    with zipfile.ZipFile(path) as archive:
        if f"{key}.npy" not in archive.namelist():
            raise ValueError(f"{path} has no array {key!r} (it has {', '.join(archive.namelist())})")
        with archive.open(f"{key}.npy") as stream:
            major, _ = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(stream)
            if fortran or dtype.hasobject:
                raise ValueError(f"{path}:{key} is not a plain C-ordered array")
            yield stream, shape, dtype


def npz_shape(path: str | os.PathLike, key: str = "arr_0") -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array ``key`` of an ``.npz``, read from its header only."""
    with _npy_member(path, key) as (_, shape, dtype):
        return shape, dtype


def npz_batches(path: str | os.PathLike, key: str = "arr_0", batch_size: int = 500) -> Iterator[np.ndarray]:
    """Batches of an array in an ``.npz`` without loading it whole (ADM sample files are large)."""
    with _npy_member(path, key) as (stream, shape, dtype):
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            count = min(batch_size, shape[0] - start)
            data = stream.read(row * count)
            if len(data) != row * count:
                raise ValueError(f"{path}:{key} is truncated")
            yield np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])


def load_reference(source: str | os.PathLike, space: FeatureSpace, *, batch_size: int = 250,
                   cache_dir: str | os.PathLike | None = None) -> Reference:
    """The reference of ``source``: a folder of images, an ``.npz`` of uint8 NHWC images (``arr_0``), or an
    ``.npz`` with precomputed ``mu`` and ``sigma`` (both, as in the ADM reference batches: the statistics give
    FID, the images precision and recall).

    Features of reference images are cached in ``cache_dir`` (keyed by the file's path, size, time and the
    feature space), so a sweep computes them once.
    """
    from .utils import atomic_write

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"reference {source} not found")
    cache = None
    if cache_dir is not None:
        import hashlib

        stat = source.stat()
        key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{space.name}".encode())
        cache = Path(cache_dir) / f"reference-{space.name}-{key.hexdigest()[:16]}.npz"
        if cache.is_file():
            with np.load(cache) as stored:
                features = torch.from_numpy(stored["features"]) if "features" in stored else None
                mean = stored["mu"] if "mu" in stored else None
                cov = stored["sigma"] if "sigma" in stored else None
            logger.info("reference features from cache %s", cache)
            return Reference(features, mean, cov, source=str(source))

    mean = cov = features = None
    if source.is_dir():
        features, _ = extract(space, _folder_batches(source, batch_size))
    elif source.suffix == ".npz":
        with np.load(source) as stored:
            names = set(stored.files)
            if {"mu", "sigma"} <= names:
                mean, cov = stored["mu"].astype(np.float64), stored["sigma"].astype(np.float64)
        if "arr_0" in names:
            logger.info("computing %s features of the reference images in %s", space.name, source)
            features, _ = extract(space, npz_batches(source, "arr_0", batch_size))
        if features is None and mean is None:
            raise ValueError(f"reference {source} has neither images (arr_0) nor statistics (mu, sigma); "
                             f"it has {', '.join(sorted(names))}")
    else:
        raise ValueError(f"reference {source} must be a folder of images or an .npz file")
    reference = Reference(features, mean, cov, source=str(source))
    if cache is not None:
        arrays = {"features": features.numpy()} if features is not None else {}
        if mean is not None:
            arrays.update(mu=mean, sigma=cov)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(cache, write)
    return reference


@torch.no_grad()
def score_features(features: torch.Tensor, logits: torch.Tensor | None, reference: Reference, *,
                   labels: torch.Tensor | None = None, k: int = 3, splits: int = 10) -> dict[str, float]:
    """FID, Inception Score (from ``logits``), precision and recall (with reference features) and, when
    ``labels`` are given (only where the logits have one column per requested label), accuracy."""
    metrics: dict[str, float] = {"fid": reference.fid().score_features(features)}
    if logits is not None:
        metrics["inception_score"], metrics["inception_score_std"] = inception_score(logits, splits)
        if labels is not None:
            metrics["accuracy"] = accuracy_from_logits(logits, labels)
    if reference.features is not None and min(len(reference.features), len(features)) > k:
        metrics["precision"], metrics["recall"] = precision_recall(reference.features, features, k)
    return metrics
