# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Evaluation at scale: N samples per stitching schedule, over every process of a ``torchrun`` launch,
resumable, scored with FID / Inception Score / precision / recall (or the digits metric).

What makes results independent of how they were produced:

* **Per-sample randomness.** Sample ``i`` gets its initial noise (and, for stochastic schedulers, its step
  noise) from its own generator seeded from ``(seed, i)``, and the label ``i % num_classes``.
* **Fixed batches.** The samples are cut into shards of ``batch_size`` consecutive indices, and a shard is
  always sampled as one batch, whichever process takes it. So a shard's bytes do not depend on the number
  of processes, nor on which of them ran it, nor on whether the run was interrupted (on one kind of device:
  a CPU and a GPU round differently).
* **Atomic, verified files.** Every file is written to a temporary name, flushed to disk and renamed; an
  interrupted run leaves complete shards and stray temporaries (removed at the next start). A manifest
  holds the sampling settings and their hash: resuming with other settings is refused.

Layout of the output folder::

    manifest.json                        the sampling settings and their hash
    <schedule>/shards/shard-000000.npz   finished shards (removed once merged, unless keep_shards)
    <schedule>/samples.json              sampling time and the model of each step
    <schedule>/samples.npz               arr_0: uint8 (N, H, W, C) images, arr_1: int64 labels (ADM format)
    <schedule>/png/000000.png            with png=True
    <schedule>/metrics.json              the metrics and the metric settings they were computed with
    results.json, results.csv, pareto.png
    reference-*.npz                      cached reference features

Processes: every process loads the models; process 0 checks the manifest and lists the missing shards,
which are dealt out round-robin; after a barrier the process group is closed and process 0 alone merges,
scores and reports (no collective runs while it does).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .metrics import (
    DigitsFeatures,
    FeatureSpace,
    InceptionFeatures,
    Reference,
    extract,
    find_inception_weights,
    images_to_uint8,
    load_inception,
    load_reference,
    npz_batches,
    npz_shape,
    score_features,
)
from .study import Schedule, add_relative_columns, plot_pareto, three_model_allocations, timed_sample, two_model_sweep
from .utils import atomic_write, ensure_writable_dir, write_csv, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluateConfig",
    "EvaluateResult",
    "run_evaluate",
    "resolve_models",
    "build_schedules",
    "sample_noise",
    "sample_labels",
    "schedule_slug",
    "PeerError",
    "METRICS",
    "CRASH_ENV",
]

#: Format of the manifest and the shards; a change refuses to resume older folders.
FORMAT = 1
METRICS = ("auto", "digits", "inception", "none")
#: Test hook: ``shard:N`` or ``samples:N`` makes the process die half-way through writing its N-th file of
#: that kind (as a kill during a write would), with exit code :data:`CRASH_EXIT_CODE`.
CRASH_ENV = "TSTITCH_EVALUATE_CRASH"
CRASH_EXIT_CODE = 75
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PeerError(RuntimeError):
    """Raised on processes other than 0 when process 0 refused the run (it reports the reason itself)."""


@dataclass
class EvaluateConfig:
    """One ``tstitch evaluate`` run. ``None`` fields take the models' defaults (see :func:`resolve_models`).

    Models: a ``preset`` (see :mod:`tstitch.presets`) or ``models`` (embedded names like ``digits-s``,
    DiT checkpoint files or folders, hub ids), smallest first; ``models`` with a preset replace its sources.
    Schedules: ``fractions`` (the small models' shares) for one schedule, or ``sweep`` for every fraction
    0, 0.1, ..., 1 of two models, or every allocation on that grid for three.
    """

    out_dir: str | os.PathLike
    preset: str | None = None
    models: tuple[str, ...] = ()
    vae: str | None = None
    checkpoint_dir: str | None = None
    fractions: tuple[float, ...] | None = None
    sweep: bool = False
    sweep_step: float = 0.1
    num_samples: int | None = None
    num_steps: int | None = None
    guidance_scale: float | None = None
    mode: str | None = None
    scheduler: str | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    png: bool = False
    keep_shards: bool = False
    metric: str = "auto"
    reference: str | None = None
    inception_weights: str | None = None
    pr_k: int = 3
    is_splits: int = 10
    metric_batch_size: int = 250
    dist_timeout_minutes: float = 720.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (before anything is loaded)."""
        if not self.preset and not self.models:
            raise ValueError("give a preset (--preset NAME) or the models, smallest first (--models A B)")
        if self.fractions is not None and self.sweep:
            raise ValueError("give either fractions (one schedule) or a sweep, not both")
        if not 0 < self.sweep_step <= 0.5 or abs(round(1 / self.sweep_step) * self.sweep_step - 1) > 1e-9:
            raise ValueError(f"sweep_step must divide 1 (0.1, 0.125, 0.2, 0.25, 0.5), got {self.sweep_step}")
        if self.num_samples is not None and self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {self.num_samples}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.pr_k < 1 or self.is_splits < 1:
            raise ValueError(f"pr_k and is_splits must be >= 1, got {self.pr_k} and {self.is_splits}")
        if self.reference is not None and not Path(self.reference).exists():
            raise FileNotFoundError(f"reference {self.reference} not found")


@dataclass
class EvaluateResult:
    """The rows of the results table (one per schedule) and where the report was written."""

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    metric: dict[str, Any] | None
    out_dir: Path
    files: list[Path] = field(default_factory=list)


# -- per-sample randomness --------------------------------------------------------------------------------------


def _sample_seed(seed: int, index: int, stream: str) -> int:
    digest = hashlib.sha256(f"tstitch-evaluate:{stream}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """The initial noise of samples ``indices`` ``(len(indices), *shape)``: each from its own generator, so
    sample ``i`` gets the same noise in any batch, on any process."""
    return torch.stack([
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed(_sample_seed(seed, i, "noise")))
        for i in indices
    ])


def _step_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One generator per sample for the step noise of stochastic schedulers."""
    return [torch.Generator().manual_seed(_sample_seed(seed, i, "steps")) for i in indices]


def sample_labels(indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Labels ``i % num_classes``: every class equally often (within one) whatever ``N``."""
    return torch.tensor([i % num_classes for i in indices], dtype=torch.long)


# -- models -----------------------------------------------------------------------------------------------------


def resolve_models(config: EvaluateConfig, device: torch.device) -> Any:
    """The models of ``config`` as a :class:`tstitch.generate.ClassConditionalModels`: a preset through
    :func:`tstitch.presets.load_preset`, explicit models through :func:`tstitch.presets.load_models`
    (embedded names, DiT files through :func:`tstitch.checkpoints.load_dit`, hub ids)."""
    from .generate import ClassConditionalModels
    from .presets import load_models, load_preset

    dtype = DTYPES[config.dtype]
    if config.preset:
        loaded = load_preset(config.preset, device=device, dtype=dtype, checkpoint_dir=config.checkpoint_dir,
                             models=list(config.models) or None, vae=config.vae)
    else:
        loaded = load_models(list(config.models), device=device, dtype=dtype, vae=config.vae)
    if not isinstance(loaded, ClassConditionalModels):
        raise ValueError(f"{loaded.label or 'these models'}: evaluate scores class-conditional models (DiTs, the "
                         "digits family); text-to-image pipelines are not supported")
    if loaded.num_classes is None:
        raise ValueError(f"{loaded.label}: the large model has no class count; evaluate needs class labels")
    if len(set(loaded.names)) != len(loaded.names):  # two files of one name: tell them apart by position
        loaded.names = [f"{name}#{i + 1}" for i, name in enumerate(loaded.names)]
    return loaded


def _fingerprint(module: torch.nn.Module | None) -> str | None:
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


# -- schedules --------------------------------------------------------------------------------------------------


def build_schedules(names: Sequence[str], *, fractions: Sequence[float] | None, sweep: bool,
                    step: float = 0.1, default_fractions: Sequence[float] = ()) -> list[Schedule]:
    """The schedules of a run: a sweep (every fraction of two models, every allocation of three, on the
    ``step`` grid), the given ``fractions``, or ``default_fractions``."""
    names = tuple(names)
    if sweep:
        if len(names) == 2:
            return two_model_sweep(names[0], names[1], step)
        if len(names) == 3:
            return three_model_allocations(*names, step=step, include_edges=True)
        raise ValueError(f"a sweep takes two or three models, got {len(names)}")
    chosen = tuple(fractions) if fractions is not None else tuple(default_fractions)
    if len(chosen) != len(names) - 1:
        raise ValueError(f"{len(names)} models take {len(names) - 1} fraction(s) (smallest model first), "
                         f"got {len(chosen)}: {list(chosen)}")
    if any(not 0 <= f <= 1 for f in chosen) or sum(chosen) > 1 + 1e-9:
        raise ValueError(f"fractions must be in [0, 1] and sum to at most 1, got {list(chosen)}")
    return [Schedule(names, tuple(float(f) for f in chosen))]


def schedule_slug(schedule: Schedule) -> str:
    """A folder name for a schedule: every model with its share, e.g. ``digits-s-0.4_digits-xl-0.6``."""
    shares = [*schedule.fractions, round(1.0 - sum(schedule.fractions), 6)]
    parts = [f"{re.sub(r'[^A-Za-z0-9.+-]+', '-', name).strip('-') or 'model'}-{share:g}"
             for name, share in zip(schedule.models, shares, strict=True)]
    return "_".join(parts)


# -- processes --------------------------------------------------------------------------------------------------


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(device)


class _Processes:
    """This process's place in a ``torchrun`` launch (or a world of one), and the few collectives needed."""

    def __init__(self, device: str, timeout_minutes: float):
        self.owns_group = False
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = _pick_device(device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
            self.owns_group = True
            logger.info("process %d of %d (%s, %s)", self.rank, self.world, backend, self.device)

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_initialized()

    def broadcast(self, value: Any) -> Any:
        """``value`` of process 0, on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_zero(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on process 0 and hand its result to every process; its error stops every process."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = work()
            except Exception as caught:  # every process must hear of it, or the others wait forever
                error = caught
        outcome = self.broadcast(("error", f"{type(error).__name__}: {error}") if error else ("ok", result))
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise PeerError(outcome[1])
        return outcome[1]

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False


# -- files ------------------------------------------------------------------------------------------------------

_crash_counts: dict[str, int] = {}


def _crash_now(kind: str) -> bool:
    """The test hook of :data:`CRASH_ENV`: whether this write of ``kind`` is the one to die in."""
    what, _, count = os.environ.get(CRASH_ENV, "").partition(":")
    if what != kind:
        return False
    _crash_counts[kind] = _crash_counts.get(kind, 0) + 1
    return _crash_counts[kind] == int(count or 1)


def _die_mid_write(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    logger.error("%s: dying in the middle of a write, as asked", CRASH_ENV)
    os._exit(CRASH_EXIT_CODE)


def _write_bytes(path: Path, data: bytes, kind: str) -> None:
    """Write ``data`` to ``path`` atomically and durably (temporary file, fsync, rename)."""

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            if _crash_now(kind):
                handle.write(data[: len(data) // 2])
                _die_mid_write(handle)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, writer)


def _zip_entry(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed date, so that the same arrays always give the same file bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _remove_temporaries(folder: Path) -> None:
    """Remove what an interrupted write left behind (``atomic_write``'s hidden temporary files)."""
    if folder.is_dir():
        for stray in folder.glob(".*.tmp*"):
            logger.info("removing %s, left by an interrupted write", stray)
            stray.unlink(missing_ok=True)


def _shard_path(folder: Path, shard: int) -> Path:
    return folder / "shards" / f"shard-{shard:06d}.npz"


def _shard_ok(path: Path, indices: range, image_shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is a complete shard of the samples ``indices``."""
    try:
        shape, dtype = npz_shape(path, "images")
        with np.load(path) as shard:
            ok = shard["indices"].tolist() == list(indices)
        return ok and shape == (len(indices), *image_shape) and dtype == np.uint8
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logger.warning("%s is damaged (%s): it will be sampled again", path, error)
        return False


def _samples_ok(path: Path, num_samples: int, image_shape: tuple[int, ...]) -> bool:
    try:
        images, dtype = npz_shape(path, "arr_0")
        labels, _ = npz_shape(path, "arr_1")
        return images == (num_samples, *image_shape) and dtype == np.uint8 and labels == (num_samples,)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile):
        return False


# -- the run ----------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Run:
    """Settings, schedules and the work of one ``evaluate`` run (on one process)."""

    def __init__(self, config: EvaluateConfig, loaded: Any, processes: _Processes):
        self.config = config
        self.loaded = loaded
        self.processes = processes
        self.device = processes.device
        self.out = Path(config.out_dir)
        from .zoo import FAMILY

        digits = getattr(loaded.large, "_tstitch_name", None) in FAMILY
        defaults = loaded.defaults
        self.num_samples = config.num_samples or (600 if digits else 5000)
        self.batch_size = config.batch_size or (100 if digits else 32)
        self.num_steps = config.num_steps or defaults.num_steps or 50
        guidance = config.guidance_scale if config.guidance_scale is not None else defaults.guidance_scale
        self.guidance = 1.0 if guidance is None else float(guidance)
        self.mode = config.mode or defaults.mode or "diffusers"
        self.scheduler = config.scheduler or defaults.scheduler or "ddim"
        self._check_sampler()
        self.metric = config.metric if config.metric != "auto" else ("digits" if digits else "inception")
        if self.metric == "inception":
            if config.reference is None:
                raise ValueError("FID with Inception needs reference images or statistics: pass --reference "
                                 "(a folder of images, an .npz of images, or an .npz with mu and sigma)")
            find_inception_weights(config.inception_weights)  # fails now, not after hours of sampling
        if loaded.vae is None and int(loaded.latent_shape[0]) not in (1, 3):
            raise ValueError(f"latents of {loaded.latent_shape[0]} channels need a VAE to become images (--vae)")
        self.schedules = build_schedules(loaded.names, fractions=config.fractions, sweep=config.sweep,
                                         step=config.sweep_step, default_fractions=defaults.fractions)
        self.image_shape = self._image_shape()
        self.num_shards = math.ceil(self.num_samples / self.batch_size)
        self.settings = self._settings()

    # -- settings ---------------------------------------------------------------------------------------------

    def _check_sampler(self) -> None:
        from .generate import MODES, scheduler_name

        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "official":
            if self.scheduler != "ddim":
                raise ValueError(
                    f"the published DiT sampler (mode official) is supported with ddim only, not "
                    f"{self.scheduler!r}: its DDPM draws noise for the whole batch, so a sample would depend on "
                    "its batch; use mode diffusers with scheduler ddpm (per-sample step noise)")
        else:
            self.scheduler = scheduler_name(self.scheduler)

    def _image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.loaded.latent_shape[0], self.loaded.latent_shape[1], self.loaded.latent_shape[2]
        if self.loaded.vae is None:
            return (height, width, channels)
        factor = 2 ** (len(self.loaded.vae.config.block_out_channels) - 1)
        return (height * factor, width * factor, int(self.loaded.vae.config.out_channels))

    def _settings(self) -> dict[str, Any]:
        """Everything the samples depend on (the manifest); the schedules are folders of their own."""
        loaded = self.loaded
        return {
            "format": FORMAT,
            "models": [{"name": n, "weights": _fingerprint(m)} for n, m in zip(loaded.names, loaded.models,
                                                                                 strict=True)],
            "vae": None if loaded.vae is None else {"weights": _fingerprint(loaded.vae),
                                                    "latent_scale": loaded.latent_scale},
            "dtype": self.config.dtype,
            "mode": self.mode,
            "scheduler": self.scheduler,
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "seed": self.config.seed,
            "latent_shape": list(loaded.latent_shape),
            "image_shape": list(self.image_shape),
            "num_classes": loaded.num_classes,
            "labels": "index % num_classes",
            "noise": "per-sample generator, sha256(seed, index)",
        }

    @property
    def settings_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()

    def folder(self, schedule: Schedule) -> Path:
        return self.out / schedule_slug(schedule)

    def indices(self, shard: int) -> range:
        return range(shard * self.batch_size, min(self.num_samples, (shard + 1) * self.batch_size))

    # -- process 0: manifest and plan -------------------------------------------------------------------------

    def prepare(self) -> list[tuple[int, int]]:
        """Check or write the manifest, clean up after interrupted writes, and list the missing shards."""
        ensure_writable_dir(self.out)
        manifest_path = self.out / "manifest.json"
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"{manifest_path} is unreadable ({error}); remove it only if {self.out} holds "
                                 "no samples you want to keep") from error
            if manifest.get("hash") != self.settings_hash:
                raise ValueError(self._mismatch(manifest.get("settings", {}), manifest_path))
            logger.info("resuming in %s (settings match the manifest)", self.out)
        else:
            write_json(manifest_path, {"hash": self.settings_hash, "settings": self.settings,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        _remove_temporaries(self.out)
        plan = []
        for number, schedule in enumerate(self.schedules):
            folder = self.folder(schedule)
            _remove_temporaries(folder)
            _remove_temporaries(folder / "shards")
            if _samples_ok(folder / "samples.npz", self.num_samples, self.image_shape):
                continue
            for shard in range(self.num_shards):
                path = _shard_path(folder, shard)
                if not (path.is_file() and _shard_ok(path, self.indices(shard), self.image_shape)):
                    plan.append((number, shard))
        done = len(self.schedules) * self.num_shards - len(plan)
        logger.info("%d schedule(s) x %d shard(s) of %d: %d shard(s) to sample, %d already done",
                    len(self.schedules), self.num_shards, self.batch_size, len(plan), done)
        return plan

    def _mismatch(self, stored: dict[str, Any], path: Path) -> str:
        keys = sorted(set(stored) | set(self.settings))
        changed = [f"{k}: {json.dumps(stored.get(k))} then, {json.dumps(self.settings.get(k))} now"
                   for k in keys if stored.get(k) != self.settings.get(k)]
        return (f"{self.out} holds samples made with other settings (see {path}); resuming would mix them. "
                f"Use another output folder, or the same settings. Differences: " + "; ".join(changed))

    # -- every process: sampling ------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """One call of every model (and the VAE) at the batch's shape: one-off costs stay out of the timings."""
        loaded = self.loaded
        count = min(self.batch_size, self.num_samples)
        batch = 2 * count if self.guidance > 1 else count
        x = torch.randn(batch, *loaded.latent_shape, device=self.device, dtype=loaded.large.dtype)
        t = torch.full((batch,), 500, device=self.device, dtype=torch.long)
        y = torch.zeros(batch, dtype=torch.long, device=self.device)
        with torch.no_grad():
            for model in loaded.models:
                model(x, timestep=t, class_labels=y)
        self._to_images(x[:count])
        _sync(self.device)

    def sample_shard(self, schedule: Schedule, shard: int) -> None:
        loaded, indices = self.loaded, self.indices(shard)
        by_name = dict(zip(loaded.names, loaded.models, strict=True))
        models = [by_name[name] for name in schedule.models]
        noise = sample_noise(self.config.seed, indices, loaded.latent_shape).to(self.device)
        labels = sample_labels(indices, loaded.num_classes).to(self.device)
        if self.mode == "official":
            from .official import sample_official

            _sync(self.device)
            start = time.perf_counter()
            out = sample_official(models, schedule.fractions or None, noise=noise, class_labels=labels,
                                  num_steps=self.num_steps, sampler="ddim", guidance_scale=self.guidance,
                                  generator=torch.Generator(self.device).manual_seed(0))
            _sync(self.device)
            seconds, latents, per_step = time.perf_counter() - start, out.latents, out.model_per_step
        else:
            from .generate import make_scheduler

            def new_scheduler() -> Any:
                return make_scheduler(self.scheduler, loaded.scheduler_config,
                                      learned_variance=loaded.learned_variance)

            latents, seconds, per_step = timed_sample(
                models, schedule.fractions, new_scheduler, noise.to(loaded.large.dtype), labels,
                num_steps=self.num_steps, guidance_scale=self.guidance, batch_size=len(indices),
                generators=_step_generators(self.config.seed, indices),
            )
        start = time.perf_counter()
        images = self._to_images(latents)
        decode_seconds = time.perf_counter() - start
        buffer = io.BytesIO()
        np.savez(buffer, images=images, labels=labels.cpu().numpy(), indices=np.asarray(indices, dtype=np.int64),
                 seconds=np.float64(seconds), decode_seconds=np.float64(decode_seconds),
                 model_per_step=np.asarray(per_step, dtype=np.int64))
        path = _shard_path(self.folder(schedule), shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(path, buffer.getvalue(), "shard")

    @torch.no_grad()
    def _to_images(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 ``(N, H, W, C)`` images of latents (decoded by the VAE, if any)."""
        vae = self.loaded.vae
        if vae is not None:
            latents = vae.decode(latents.to(vae.dtype) / self.loaded.latent_scale).sample
            _sync(self.device)
        return images_to_uint8(latents).cpu().numpy()

    # -- process 0: merge, score, report ----------------------------------------------------------------------

    def merge(self, schedule: Schedule) -> None:
        """Shards -> ``samples.json`` and ``samples.npz`` (written last: its presence means done)."""
        folder = self.folder(schedule)
        npz = folder / "samples.npz"
        if _samples_ok(npz, self.num_samples, self.image_shape):
            return
        shards = [_shard_path(folder, shard) for shard in range(self.num_shards)]
        missing = [p.name for p, s in zip(shards, range(self.num_shards), strict=True)
                   if not (p.is_file() and _shard_ok(p, self.indices(s), self.image_shape))]
        if missing:
            raise RuntimeError(f"{folder}: shards {missing[:5]} are missing after sampling")
        seconds = decode_seconds = 0.0
        labels, per_step = [], []
        for path in shards:
            with np.load(path) as shard:
                seconds += float(shard["seconds"])
                decode_seconds += float(shard["decode_seconds"])
                labels.append(shard["labels"])
                per_step = shard["model_per_step"].tolist()
        write_json(folder / "samples.json", {
            "schedule": schedule.label, "models": list(schedule.models), "fractions": list(schedule.fractions),
            "num_samples": self.num_samples, "sampling_seconds": seconds, "decode_seconds": decode_seconds,
            "model_per_step": per_step, "settings_hash": self.settings_hash,
        })
        self._write_samples(npz, shards, np.concatenate(labels).astype(np.int64))
        if not self.config.keep_shards:
            shutil.rmtree(folder / "shards", ignore_errors=True)

    def _write_samples(self, npz: Path, shards: list[Path], labels: np.ndarray) -> None:
        """The ADM ``.npz``, streamed shard by shard (50,000 ImageNet images do not fit in memory twice)."""
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (self.num_samples, *self.image_shape)}

        def writer(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                    with archive.open(_zip_entry("arr_0.npy"), "w", force_zip64=True) as member:
                        np.lib.format.write_array_header_1_0(member, header)
                        for number, path in enumerate(shards):
                            with np.load(path) as shard:
                                member.write(np.ascontiguousarray(shard["images"]).tobytes())
                            if number == 0 and _crash_now("samples"):
                                _die_mid_write(handle)
                    with archive.open(_zip_entry("arr_1.npy"), "w") as member:
                        np.lib.format.write_array(member, labels)
                handle.flush()
                os.fsync(handle.fileno())

        atomic_write(npz, writer)

    def write_pngs(self, schedule: Schedule) -> None:
        from PIL import Image

        folder = self.folder(schedule) / "png"
        folder.mkdir(exist_ok=True)
        _remove_temporaries(folder)
        index = 0
        for batch in npz_batches(self.folder(schedule) / "samples.npz", "arr_0", 256):
            for image in batch:
                path = folder / f"{index:06d}.png"
                if not path.is_file():
                    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
                    atomic_write(path, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
                index += 1


def _metric_space(run: _Run) -> tuple[FeatureSpace, Reference, dict[str, Any]]:
    """The feature space, the reference and the metric settings (the key of each ``metrics.json``)."""
    config, device = run.config, run.device
    key: dict[str, Any] = {"metric": run.metric, "pr_k": config.pr_k, "is_splits": config.is_splits}
    if run.metric == "digits":
        from .zoo import load_classifier
        from .zoo.data import load_digits_tensors

        space = DigitsFeatures(load_classifier(device=device))
        if config.reference is None:
            digits, _ = load_digits_tensors()
            features, _ = extract(space, [images_to_uint8(digits)])
            reference = Reference(features, source="the 1,797 scikit-learn digits")
        else:
            reference = load_reference(config.reference, space, batch_size=config.metric_batch_size,
                                       cache_dir=run.out)
        key["classifier"] = _fingerprint(space.classifier)
    else:
        network = load_inception(config.inception_weights, device=device)
        space = InceptionFeatures(network)
        reference = load_reference(config.reference, space, batch_size=config.metric_batch_size, cache_dir=run.out)
        key["inception"] = _fingerprint(network)
    key["reference"] = reference.source
    if config.reference is not None:
        stat = Path(config.reference).stat()
        key["reference_file"] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return space, reference, key


def _score(run: _Run, schedule: Schedule, space: FeatureSpace, reference: Reference,
           key: dict[str, Any]) -> dict[str, float]:
    folder = run.folder(schedule)
    path = folder / "metrics.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key and stored.get("settings_hash") == run.settings_hash:
            return stored["metrics"]
    npz = folder / "samples.npz"
    features, logits = extract(space, npz_batches(npz, "arr_0", run.config.metric_batch_size))
    with np.load(npz) as stored_samples:
        labels = torch.from_numpy(stored_samples["arr_1"])
    metrics = score_features(features, logits, reference, labels=labels if space.labels_match_logits else None,
                             k=run.config.pr_k, splits=run.config.is_splits)
    write_json(path, {"key": key, "settings_hash": run.settings_hash, "metrics": metrics})
    return metrics


def _row(run: _Run, schedule: Schedule, metrics: dict[str, float] | None) -> dict[str, Any]:
    folder = run.folder(schedule)
    info = json.loads((folder / "samples.json").read_text())
    row: dict[str, Any] = {
        "schedule": schedule.label,
        "models": list(schedule.models),
        "fractions": list(schedule.fractions),
        "num_samples": run.num_samples,
        "steps": run.num_steps,
        "sampler": f"{run.mode}/{run.scheduler}",
        "guidance": run.guidance,
        "seed": run.config.seed,
        "batch_size": run.batch_size,
        "seconds_per_image": info["sampling_seconds"] / run.num_samples,
        "decode_seconds_per_image": info["decode_seconds"] / run.num_samples,
    }
    if metrics is not None:
        row["metric"] = run.metric
        row.update(metrics)
    row["samples"] = str((folder / "samples.npz").relative_to(run.out))
    row["model_per_step"] = info["model_per_step"]
    return row


def _report(run: _Run, rows: list[dict[str, Any]], metric_key: dict[str, Any] | None,
            world: int) -> list[Path]:
    alone = [r for r in rows if not any(r["fractions"])]  # the large model alone
    if alone and "fid" in alone[0]:
        for row in rows:
            add_relative_columns(row, alone[0])
    files = [
        write_json(run.out / "results.json", {
            "settings": run.settings, "metric": metric_key, "device": str(run.device), "processes": world,
            "torch_threads": torch.get_num_threads(), "rows": rows,
        }),
        write_csv(run.out / "results.csv", [{k: v for k, v in r.items() if k != "model_per_step"} for r in rows]),
    ]
    if metric_key is not None and len(rows) > 1:
        label = "digits-FID" if run.metric == "digits" else "FID"
        title = (f"{' / '.join(run.loaded.names)}: {label} vs time, {run.mode} {run.scheduler} {run.num_steps} steps, "
                 f"guidance {run.guidance:g}, {run.num_samples} samples")
        files.append(plot_pareto(rows, run.out / "pareto.png", title=title, y_label=label))
    return files


def run_evaluate(config: EvaluateConfig, *, progress: bool = True) -> EvaluateResult | None:
    """Sample and score every schedule of ``config``; on process 0 returns the results, elsewhere ``None``.

    Runs alone or under ``torchrun`` (``gloo`` on CPU, ``nccl`` on GPU); every process must see the same
    output folder (for several nodes: a shared file system).
    """
    config.validate()
    processes = _Processes(config.device, config.dist_timeout_minutes)
    try:
        loaded = resolve_models(config, processes.device)
        run = _Run(config, loaded, processes)
        plan = processes.on_zero(run.prepare)
        mine = plan[processes.rank :: processes.world]
        if mine:
            run.warm_up()
        bar = tqdm(mine, desc="sampling shards", unit="shard", disable=not (progress and processes.rank == 0))
        for number, shard in bar:
            bar.set_postfix_str(run.schedules[number].label, refresh=False)
            run.sample_shard(run.schedules[number], shard)
        processes.barrier()
    finally:
        processes.close()
    if processes.rank != 0:
        return None

    space = reference = metric_key = None
    if run.metric != "none":
        space, reference, metric_key = _metric_space(run)
    rows = []
    for schedule in tqdm(run.schedules, desc="scoring", disable=not progress):
        run.merge(schedule)
        if config.png:
            run.write_pngs(schedule)
        metrics = _score(run, schedule, space, reference, metric_key) if space is not None else None
        rows.append(_row(run, schedule, metrics))
    files = _report(run, rows, metric_key, processes.world)
    return EvaluateResult(rows, run.settings, metric_key, run.out, files)


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A readable results table (for the CLI)."""
    metric_columns = [(k, h) for k, h in (("fid", "FID"), ("inception_score", "IS"), ("precision", "prec"),
                                          ("recall", "recall"), ("accuracy", "acc")) if rows and k in rows[0]]
    width = max([len("schedule"), *(len(r["schedule"]) for r in rows)])
    lines = [f"{'schedule':<{width}} " + " ".join(f"{h:>8}" for _, h in metric_columns)
             + f" {'ms/img':>9} {'speed-up':>8}"]
    for row in rows:
        speedup = f"{row['speedup']:>7.2f}x" if "speedup" in row else f"{'':>8}"
        lines.append(f"{row['schedule']:<{width}} " + " ".join(f"{row[k]:>8.3f}" for k, _ in metric_columns)
                     + f" {1000 * row['seconds_per_image']:>9.3f} {speedup}")
    return "\n".join(lines)
