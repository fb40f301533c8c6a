# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Feature spaces (generated uint8 images -> features and logits), the reference set, and the whole score."""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..utils import atomic_write
from ._checks import finite_matrix, positive_int, uint8_images
from .scores import FeatureFID, _checked_statistics, _device_of, accuracy_from_logits, inception_score, precision_recall

logger = logging.getLogger(__name__)

def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] ``(N, C, H, W)`` to uint8 ``(N, H, W, C)``: ``clamp(127.5 x + 128)`` truncated, as the
    DiT / ADM sampling scripts store them."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images hold NaN or inf values (the sampler diverged?); they would be scored as black")
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
        uint8_images("digits images", images, channels=(1,))
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
        uint8_images("Inception images", images, channels=(1, 3))
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
        uint8_images("images", batch, channels=None)
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
        if self.features is not None:
            finite_matrix(f"features of reference {self.source!r}", self.features, min_rows=2)
        if self.mean is not None or self.cov is not None:
            try:
                mean, _ = _checked_statistics(self.mean, self.cov)
            except ValueError as error:
                raise ValueError(f"reference {self.source!r}: {error}") from error
            if self.features is not None and self.features.shape[1] != len(mean):
                raise ValueError(f"reference {self.source!r}: features of width {self.features.shape[1]} but "
                                 f"statistics of width {len(mean)}")

    def fid(self, batch_size: int = 1000) -> FeatureFID:
        if self.mean is not None and self.cov is not None:
            return FeatureFID(statistics=(self.mean, self.cov), batch_size=batch_size)
        return FeatureFID(features=self.features, batch_size=batch_size)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
GREY_MODES = ("L", "1", "LA", "La")
WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")  # PIL modes of more than 8 bits per channel


def _folder_batches(folder: Path, batch_size: int) -> Iterator[np.ndarray]:
    """Batches of the images of ``folder`` (uint8 ``(N, H, W, C)``), after checking every file's header."""
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"reference folder {folder} must hold at least 2 images ({', '.join(IMAGE_SUFFIXES)}), "
                         f"found {len(files)}")
    # Every file's header first (cheap), so a bad file fails before hours of feature extraction.
    shape = None
    for file in files:
        with Image.open(file) as image:
            if image.mode in WIDE_MODES:  # 16-bit or float pixels: converting to 8 bits would clip them
                raise ValueError(f"reference image {file} has {image.mode!r} pixels, not 8-bit: save the "
                                 "reference as 8-bit (uint8) images")
            size = (image.height, image.width, 1 if image.mode in GREY_MODES else 3)
        if shape is None:
            shape = size
        elif size != shape:
            raise ValueError(f"reference images must all have one size: {file} is {size}, {files[0]} is {shape}")
    return _read_images(files, batch_size)


def _read_images(files: list[Path], batch_size: int) -> Iterator[np.ndarray]:
    from PIL import Image

    for start in range(0, len(files), batch_size):
        batch = []
        for file in files[start : start + batch_size]:
            with Image.open(file) as image:
                array = np.asarray(image.convert("L" if image.mode in GREY_MODES else "RGB"))
            batch.append(array[..., None] if array.ndim == 2 else array)
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
    batch_size = positive_int("batch_size", batch_size)
    npz_shape(path, key)  # a missing file or array fails now, not on the first next()
    return _npz_stream(path, key, batch_size)


def _npz_stream(path: str | os.PathLike, key: str, batch_size: int) -> Iterator[np.ndarray]:
    with _npy_member(path, key) as (stream, shape, dtype):
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            count = min(batch_size, shape[0] - start)
            data = stream.read(row * count)
            if len(data) != row * count:
                raise ValueError(f"{path}:{key} is truncated")
            yield np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])


def _check_npz_images(path: Path, batch_size: int) -> None:
    """``arr_0`` of ``path`` holds at least 2 uint8 images ``(N, H, W, C)``, C 1 or 3 (read from its header)."""
    shape, dtype = npz_shape(path, "arr_0")
    if dtype != np.uint8:
        first = next(npz_batches(path, "arr_0", batch_size), None)
        found = f" in [{first.min()}, {first.max()}] (first {len(first)})" if first is not None and first.size else ""
        raise ValueError(f"reference {path}: arr_0 must hold uint8 images in 0..255, found dtype {dtype}{found}; "
                         "convert it first, e.g. (x * 255).round().clip(0, 255).astype(np.uint8) for images in [0, 1]")
    if len(shape) != 4 or shape[-1] not in (1, 3) or shape[0] < 2:
        raise ValueError(f"reference {path}: arr_0 must be images (N >= 2, H, W, C) with C 1 or 3, "
                         f"found shape {shape}")


def load_reference(source: str | os.PathLike, space: FeatureSpace, *, batch_size: int = 250,
                   cache_dir: str | os.PathLike | None = None) -> Reference:
    """The reference of ``source``: a folder of images, an ``.npz`` of uint8 NHWC images (``arr_0``), or an
    ``.npz`` with precomputed ``mu`` and ``sigma`` (both, as in the ADM reference batches: the statistics give
    FID, the images precision and recall).

    Features of reference images are cached in ``cache_dir`` (keyed by the file's path, size, time and the
    feature space), so a sweep computes them once.
    """
    batch_size = positive_int("batch_size", batch_size)
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"reference {source} not found")
    if not (source.is_dir() or source.suffix == ".npz"):
        raise ValueError(f"reference {source} must be a folder of images or an .npz file")
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
    else:
        try:
            with np.load(source) as stored:
                names = set(stored.files)
                if {"mu", "sigma"} <= names:
                    mean, cov = stored["mu"].astype(np.float64), stored["sigma"].astype(np.float64)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"reference {source} is not a readable .npz file ({error})") from error
        if "arr_0" not in names and mean is None:
            raise ValueError(f"reference {source} has neither images (arr_0) nor statistics (mu, sigma); "
                             f"it has {', '.join(sorted(names)) or 'no arrays'}")
        if mean is not None:
            Reference(mean=mean, cov=cov, source=str(source))  # refuses broken statistics before any extraction
        if "arr_0" in names:
            _check_npz_images(source, batch_size)
            logger.info("computing %s features of the reference images in %s", space.name, source)
            features, _ = extract(space, npz_batches(source, "arr_0", batch_size))
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
    k, splits = positive_int("k", k), positive_int("splits", splits)
    finite_matrix("features", features, min_rows=2)
    if logits is not None:
        finite_matrix("logits", logits, min_rows=len(features))
        if len(logits) != len(features):
            raise ValueError(f"logits must have one row per feature row ({len(features)}), got {len(logits)}")
    if labels is not None and (logits is None or tuple(labels.shape) != (len(features),)):
        raise ValueError(f"labels need logits and one label per sample ({len(features)},), got shape "
                         f"{tuple(labels.shape)}")
    metrics: dict[str, float] = {"fid": reference.fid().score_features(features)}
    if logits is not None:
        # Too few samples leave a metric out (logged) rather than fail after sampling: each of the splits needs
        # a sample (with one sample per split the score is 1 whatever the images), precision/recall k + 1.
        if len(logits) >= splits:
            metrics["inception_score"], metrics["inception_score_std"] = inception_score(logits, splits)
        else:
            logger.warning("no Inception Score: %d samples for %d splits", len(logits), splits)
        if labels is not None:
            metrics["accuracy"] = accuracy_from_logits(logits, labels)
    if reference.features is not None:
        if min(len(reference.features), len(features)) > k:
            metrics["precision"], metrics["recall"] = precision_recall(reference.features, features, k)
        else:
            logger.warning("no precision/recall: k=%d needs more than %d samples per set, got %d real and %d "
                           "generated", k, k, len(reference.features), len(features))
    return metrics

