# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The evaluation's per-sample randomness and its files: atomic, verified shards and sample archives, and the
lock that keeps a second ``evaluate`` out of a folder while one is writing it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics import npz_shape
from ..utils import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["CRASH_ENV", "CRASH_EXIT_CODE", "sample_seed", "sample_noise", "step_generators", "sample_labels",
           "crash_now", "die_mid_write", "write_bytes", "zip_entry", "remove_temporaries", "shard_path", "shard_ok",
           "samples_ok", "write_samples_npz", "file_sha256", "fingerprint", "FolderLock", "SAMPLES_CHECKSUM"]

#: Test hook: ``shard:N`` or ``samples:N`` makes the process die half-way through writing its N-th file of
#: that kind (as a kill during a write would), with exit code :data:`CRASH_EXIT_CODE`.
CRASH_ENV = "TSTITCH_EVALUATE_CRASH"
CRASH_EXIT_CODE = 75
#: The field of ``samples.json`` that holds the sha256 of ``samples.npz`` (written after it).
SAMPLES_CHECKSUM = "samples_sha256"


# -- per-sample randomness --------------------------------------------------------------------------------------


def sample_seed(seed: int, index: int, stream: str) -> int:
    digest = hashlib.sha256(f"tstitch-evaluate:{stream}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """The initial noise of samples ``indices`` ``(len(indices), *shape)``: each from its own generator, so
    sample ``i`` gets the same noise in any batch, on any process."""
    return torch.stack([
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed(sample_seed(seed, i, "noise")))
        for i in indices
    ])


def step_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One generator per sample for the step noise of stochastic schedulers."""
    return [torch.Generator().manual_seed(sample_seed(seed, i, "steps")) for i in indices]


def sample_labels(indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Labels ``i % num_classes``: every class equally often (within one) whatever ``N``."""
    return torch.tensor([i % num_classes for i in indices], dtype=torch.long)


# -- files ------------------------------------------------------------------------------------------------------

_crash_counts: dict[str, int] = {}


def crash_now(kind: str) -> bool:
    """The test hook of :data:`CRASH_ENV`: whether this write of ``kind`` is the one to die in."""
    what, _, count = os.environ.get(CRASH_ENV, "").partition(":")
    if what != kind:
        return False
    _crash_counts[kind] = _crash_counts.get(kind, 0) + 1
    return _crash_counts[kind] == int(count or 1)


def die_mid_write(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    logger.error("%s: dying in the middle of a write, as asked", CRASH_ENV)
    os._exit(CRASH_EXIT_CODE)


def write_bytes(path: Path, data: bytes, kind: str) -> None:
    """Write ``data`` to ``path`` atomically and durably (temporary file, fsync, rename)."""

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            if crash_now(kind):
                handle.write(data[: len(data) // 2])
                die_mid_write(handle)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, writer)


def zip_entry(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed date, so that the same arrays always give the same file bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def remove_temporaries(folder: Path) -> None:
    """Remove what an interrupted write left behind (``atomic_write``'s hidden temporary files)."""
    if folder.is_dir():
        for stray in folder.glob(".*.tmp*"):
            logger.info("removing %s, left by an interrupted write", stray)
            stray.unlink(missing_ok=True)


def shard_path(folder: Path, shard: int) -> Path:
    return folder / "shards" / f"shard-{shard:06d}.npz"


def shard_ok(path: Path, indices: range, image_shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is a complete shard of the samples ``indices``."""
    try:
        shape, dtype = npz_shape(path, "images")
        with np.load(path) as shard:
            ok = shard["indices"].tolist() == list(indices)
        return ok and shape == (len(indices), *image_shape) and dtype == np.uint8
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logger.warning("%s is damaged (%s): it will be sampled again", path, error)
        return False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def samples_ok(path: Path, num_samples: int, image_shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is a finished schedule's ``samples.npz``: its shapes, and the sha256 that the
    ``samples.json`` beside it records (written after it), so that a file damaged on disk is found, with a
    warning, instead of being scored. (Folders of tstitch versions that recorded no checksum: shapes only.)"""
    if not path.is_file():
        return False  # not merged yet (an interrupted merge leaves only a temporary file)
    try:
        images, dtype = npz_shape(path, "arr_0")
        labels, _ = npz_shape(path, "arr_1")
        if not (images == (num_samples, *image_shape) and dtype == np.uint8 and labels == (num_samples,)):
            raise ValueError(f"arrays of {images} {dtype} and {labels}, not {(num_samples, *image_shape)} uint8 "
                             f"and ({num_samples},)")
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        logger.warning("%s is damaged (%s): its schedule is sampled and scored again", path, error)
        return False
    try:
        info = json.loads((path.parent / "samples.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False  # written after samples.npz: the merge was cut short, or the file is damaged
    recorded = info.get(SAMPLES_CHECKSUM) if isinstance(info, dict) else None
    if recorded is None:
        return isinstance(info, dict)
    actual = file_sha256(path)
    if actual != recorded:
        logger.warning("%s does not match the sha256 recorded in samples.json (%s..., now %s...): it was damaged "
                       "on disk; its schedule is sampled and scored again", path, str(recorded)[:12], actual[:12])
        return False
    return True


def write_samples_npz(npz: Path, shards: list[Path], labels: np.ndarray, num_samples: int,
                      image_shape: tuple[int, ...]) -> None:
    """The ADM ``.npz`` (``arr_0`` uint8 images, ``arr_1`` labels), streamed shard by shard (50,000 ImageNet
    images do not fit in memory twice), written atomically and flushed to disk."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (num_samples, *image_shape)}

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                with archive.open(zip_entry("arr_0.npy"), "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(member, header)
                    for number, path in enumerate(shards):
                        with np.load(path) as shard:
                            member.write(np.ascontiguousarray(shard["images"]).tobytes())
                        if number == 0 and crash_now("samples"):
                            die_mid_write(handle)
                with archive.open(zip_entry("arr_1.npy"), "w") as member:
                    np.lib.format.write_array(member, labels)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(npz, writer)


class FolderLock:
    """An exclusive lock on an evaluation folder, held by process 0 while a run writes there: a second
    ``evaluate`` on the same folder is refused at once (``ValueError``, one line) instead of mixing its shards,
    merges and reports with the first's. The lock is ``flock``'s on the folder itself (no file is written for
    it): the system drops it when its process ends, however (kill -9 included), so a folder is never left
    locked. On a file system without ``flock`` a warning says that runs there are not kept apart."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(f"another tstitch evaluate is writing to {self.folder} right now; wait for it to "
                             "finish (then rerun to resume or add to it), or choose another --out") from None
        except OSError as error:
            os.close(fd)
            logger.warning("%s cannot be locked (%s): two evaluations started there at once would not be kept "
                           "apart", self.folder, error.strerror or error)
            return
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def fingerprint(module: torch.nn.Module | None) -> str | None:
    """A short hash of a model's weights (names, shapes and rounded sums): the same weights however loaded."""
    if module is None:
        return None
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            values = tensor.detach().double()
            digest.update(f"{name}|{tuple(tensor.shape)}|{values.sum().item():.6e}|"
                          f"{values.abs().sum().item():.6e}".encode())
    return digest.hexdigest()[:16]
