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
  holds the sampling settings and their hash: resuming with other settings is refused. ``samples.json``
  records the sha256 of ``samples.npz``: a file damaged on disk is found on resume (a warning) and its
  schedule sampled and scored again, never scored as it is.
* **One run at a time.** Process 0 holds a lock on the folder (``flock`` on the folder itself, dropped by the
  system when the process ends, even by kill -9): a second ``evaluate`` on the same folder is refused.

Layout of the output folder::

    manifest.json                        the sampling settings and their hash
    <schedule>/shards/shard-000000.npz   finished shards (removed once merged, unless keep_shards)
    <schedule>/samples.json              sampling time, the model of each step, the sha256 of samples.npz
    <schedule>/samples.npz               arr_0: uint8 (N, H, W, C) images, arr_1: int64 labels (ADM format)
    <schedule>/png/000000.png            with png=True
    <schedule>/metrics.json              the metrics and the metric settings they were computed with
    <schedule>/features.npy              the samples' features in the metric's space (for the FID intervals)
    results.json, results.csv, pareto.png
    reference-*.npz                      cached reference features

Processes: every process loads the models; process 0 checks the manifest and lists the missing shards,
which are dealt out round-robin; after a barrier the process group is closed and process 0 alone merges,
scores and reports (no collective runs while it does).

One cohesive thing, kept whole over 400 lines: :class:`EvaluationRun` is one run's settings and every step that
depends on them (manifest, shards, merge), with its driver; what stands apart is already in
:mod:`~tstitch.experiments.evaluation_config`, :mod:`~tstitch.experiments.evaluation_files`,
:mod:`~tstitch.experiments.evaluation_report` and :mod:`~tstitch.experiments.processes`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..metrics import find_inception_weights, images_to_uint8, npz_batches
from ..models.families import official_sampler
from ..models.loaded import MODES, OFFICIAL_MODES, ClassConditionalModels
from ..models.loading import load_models, load_preset
from ..planfile import plan_to_dict
from ..sampling import Stopwatch, scheduler_factory, scheduler_name
from ..sampling.timing import warm_up
from ..utils import atomic_write, ensure_writable_dir, write_json
from .batches import sample_batches
from .evaluation_config import DTYPES, MAX_SCHEDULES, METRICS, EvaluateConfig, eval_cache, schedule_count
from .evaluation_files import (
    CRASH_ENV,
    SAMPLES_CHECKSUM,
    FolderLock,
    file_sha256,
    fingerprint,
    remove_temporaries,
    sample_labels,
    sample_noise,
    sample_seed,
    samples_ok,
    shard_ok,
    shard_path,
    step_generators,
    write_bytes,
    write_samples_npz,
)
from .evaluation_report import (
    FEATURES_FILE,
    add_fid_intervals,
    earlier_rows,
    format_rows,
    metric_space,
    result_row,
    score_schedule,
    write_report,
)
from .processes import PeerError, Processes
from .sample_plans import check_plan, named_plan
from .study import Allocation, build_schedules, schedule_slug

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
    "format_rows",
    "METRICS",
    "CRASH_ENV",
    "MAX_SCHEDULES",
    "schedule_count",
]

#: Format of the manifest and the shards; a change refuses to resume older folders.
FORMAT = 1
#: Models with fewer parameters than this run on one CPU thread unless ``threads`` says otherwise.
TINY = 10_000_000


@dataclass
class EvaluateResult:
    """The rows of the results table (one per schedule) and where the report was written."""

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    metric: dict[str, Any] | None
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    #: schedules in ``rows`` that an earlier run sampled into the same folder with the same settings
    earlier: list[str] = field(default_factory=list)

# -- models -----------------------------------------------------------------------------------------------------


def resolve_models(config: EvaluateConfig, device: torch.device) -> Any:
    """The models of ``config`` as a :class:`tstitch.models.loaded.ClassConditionalModels`: a preset through
    :func:`tstitch.models.presets.load_preset`, explicit models through :func:`tstitch.models.presets.load_models`
    (embedded names, DiT files through :func:`tstitch.checkpoints.load_dit`, hub ids)."""
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


# -- the run ----------------------------------------------------------------------------------------------------


class EvaluationRun:
    """Settings, schedules and the work of one ``evaluate`` run (on one process)."""

    def __init__(self, config: EvaluateConfig, loaded: Any, processes: Processes):
        if isinstance(config.plan, str):  # a per-step plan's text, over the models' short names
            config = dataclasses.replace(config, plan=named_plan(config.plan, loaded.names))
            check_plan(config.plan, config.fractions, config.num_steps)
        self.config = config
        self.loaded = loaded
        self.processes = processes
        self.device = processes.device
        self.out = Path(config.out_dir)
        digits = loaded.family == "digits"
        defaults = loaded.defaults
        self.num_samples = config.num_samples or (600 if digits else 5000)
        self.batch_size = config.batch_size or (100 if digits else 32)
        plan_steps = config.plan.num_steps if config.plan is not None else None
        self.num_steps = config.num_steps or plan_steps or defaults.num_steps or 50
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
        count = schedule_count(len(loaded.names), sweep=config.sweep, step=config.sweep_step)
        if config.max_schedules is not None and count > config.max_schedules:
            raise ValueError(f"a sweep with step {config.sweep_step:g} over {len(loaded.names)} models is {count:,} "
                             f"schedules, more than {config.max_schedules}; take a larger step, or allow it "
                             "(--many-schedules)")
        self.schedules = build_schedules(loaded.names, fractions=config.fractions, sweep=config.sweep,
                                         step=config.sweep_step, default_fractions=defaults.fractions,
                                         plan=config.plan)
        self.image_shape = self._image_shape()
        self.num_shards = math.ceil(self.num_samples / self.batch_size)
        self.cache = eval_cache(config.cache, loaded.names, self.mode)  # {model name: spec}
        self.settings = self._settings() | ({"cache": self.cache} if self.cache else {})
        #: whether prepare found each schedule folder's samples.npz finished (and matching its checksum): merge
        #: need not read and hash it again
        self.finished: dict[Path, bool] = {}

    # -- settings ---------------------------------------------------------------------------------------------

    def _check_sampler(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        plan = self.config.plan
        if self.mode in OFFICIAL_MODES and plan is not None and plan.adaptive is not None:
            raise ValueError(f"--plan {plan}: an adaptive plan runs in the bare loop, not the published DiT sampler "
                             f"(mode {self.mode!r}): use --mode diffusers")
        if self.mode in OFFICIAL_MODES and plan is not None and plan.is_sequence:
            raise ValueError(f"a per-step plan ({plan}) runs in the bare loop, not the published DiT sampler "
                             f"(mode {self.mode!r}): use --mode diffusers")
        if self.mode in OFFICIAL_MODES:
            official_sampler(self.loaded.family, self.mode)  # ValueError for a mode the family has not
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
            "models": [{"name": n, "weights": fingerprint(m)} for n, m in zip(loaded.names, loaded.models,
                                                                                 strict=True)],
            "vae": None if loaded.vae is None else {"weights": fingerprint(loaded.vae),
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

    def folder(self, schedule: Allocation) -> Path:
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
                if not isinstance(manifest, dict):
                    raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
            except (OSError, ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
                raise ValueError(f"{manifest_path} is unreadable ({error}); remove it only if {self.out} holds "
                                 "no samples you want to keep") from error
            if manifest.get("hash") != self.settings_hash:
                raise ValueError(self._mismatch(manifest.get("settings", {}), manifest_path))
            logger.info("resuming in %s (settings match the manifest)", self.out)
        else:
            write_json(manifest_path, {"hash": self.settings_hash, "settings": self.settings,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        remove_temporaries(self.out)
        plan = []
        for number, schedule in enumerate(self.schedules):
            folder = self.folder(schedule)
            remove_temporaries(folder)
            remove_temporaries(folder / "shards")
            self._drop_unreadable_metrics(folder)
            self.finished[folder] = samples_ok(folder / "samples.npz", self.num_samples, self.image_shape)
            if self.finished[folder]:
                continue
            for shard in range(self.num_shards):
                path = shard_path(folder, shard)
                if not (path.is_file() and shard_ok(path, self.indices(shard), self.image_shape)):
                    plan.append((number, shard))
        done = len(self.schedules) * self.num_shards - len(plan)
        logger.info("%d schedule(s) x %d shard(s) of %d: %d shard(s) to sample, %d already done",
                    len(self.schedules), self.num_shards, self.batch_size, len(plan), done)
        return plan

    @staticmethod
    def _drop_unreadable_metrics(folder: Path) -> None:
        """A ``metrics.json`` damaged on disk is removed (with a warning): the metrics are computed again."""
        path = folder / "metrics.json"
        if not path.is_file():
            return
        try:
            json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as error:
            logger.warning("%s is unreadable (%s): the schedule's metrics are computed again", path, error)
            path.unlink()

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
        def one_call_each() -> None:
            with torch.no_grad():
                for model in loaded.models:
                    loaded.call(model, x, t, y)
                self._to_images(x[:count])

        warm_up(one_call_each, self.device)

    def sample_shard(self, schedule: Allocation, shard: int) -> None:
        loaded, indices = self.loaded, self.indices(shard)
        adaptive = schedule.plan is not None and schedule.plan.adaptive is not None
        switch_steps: list[int] = []  # an adaptive plan's, per sample
        by_name = dict(zip(loaded.names, loaded.models, strict=True))
        models = [by_name[name] for name in schedule.models]
        noise = sample_noise(self.config.seed, indices, loaded.latent_shape).to(self.device)
        labels = sample_labels(indices, loaded.num_classes).to(self.device)
        if self.mode in ("official", "official-zeros"):
            sampler = official_sampler(loaded.family, self.mode)
            with Stopwatch(self.device) as watch:
                out = sampler(models, schedule.plan or schedule.small_fractions or None, noise=noise,
                              class_labels=labels,
                              num_steps=self.num_steps, sampler="ddim", guidance_scale=self.guidance,
                              # one stream per shard, from the run's seed and the shard's first sample: the
                              # published samplers draw their step noise (and LDM's random contexts) for the batch
                              generator=torch.Generator(self.device).manual_seed(
                                  sample_seed(self.config.seed, indices[0], "official-steps")))
            seconds, latents, per_step = watch.seconds, out.latents, out.record.model_per_step()
        else:
            new_scheduler = scheduler_factory(self.scheduler, loaded.scheduler_config,
                                              learned_variance=loaded.learned_variance)
            latents, seconds, per_step = sample_batches(
                models, schedule.runs_plan, new_scheduler, noise.to(loaded.large.dtype), labels,
                num_steps=self.num_steps, guidance_scale=self.guidance, batch_size=len(indices),
                generators=step_generators(self.config.seed, indices),
                cache={schedule.models.index(n): spec for n, spec in self.cache.items() if n in schedule.models},
                switch_steps=switch_steps,
            )
        start = time.perf_counter()
        images = self._to_images(latents)
        decode_seconds = time.perf_counter() - start
        buffer = io.BytesIO()
        np.savez(buffer, images=images, labels=labels.cpu().numpy(), indices=np.asarray(indices, dtype=np.int64),
                 seconds=np.float64(seconds), decode_seconds=np.float64(decode_seconds),
                 model_per_step=np.asarray(per_step, dtype=np.int64),
                 switch_steps=np.asarray(switch_steps if adaptive else [], dtype=np.int64))
        path = shard_path(self.folder(schedule), shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, buffer.getvalue(), "shard")

    @torch.no_grad()
    def _to_images(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 ``(N, H, W, C)`` images of latents (decoded by the VAE, if any)."""
        vae = self.loaded.vae
        if vae is not None:
            with Stopwatch(self.device):  # synchronised: the decode time is measured around this
                latents = vae.decode(latents.to(vae.dtype) / self.loaded.latent_scale).sample
        return images_to_uint8(latents).cpu().numpy()

    # -- process 0: merge, score, report ----------------------------------------------------------------------

    def merge(self, schedule: Allocation) -> None:
        """Shards -> ``samples.npz`` and ``samples.json`` (written last, with the sha256 of ``samples.npz``: a
        ``samples.npz`` that matches it means done). A new ``samples.npz`` drops the schedule's earlier
        metrics and features: they are computed again from it."""
        folder = self.folder(schedule)
        npz = folder / "samples.npz"
        finished = self.finished.get(folder)
        if finished is None:
            finished = samples_ok(npz, self.num_samples, self.image_shape)
        if finished:
            return
        shards = [shard_path(folder, shard) for shard in range(self.num_shards)]
        missing = [p.name for p, s in zip(shards, range(self.num_shards), strict=True)
                   if not (p.is_file() and shard_ok(p, self.indices(s), self.image_shape))]
        if missing:
            raise RuntimeError(f"{folder}: shards {missing[:5]} are missing after sampling")
        seconds = decode_seconds = 0.0
        labels, per_step, switch_steps = [], [], []
        for path in shards:
            with np.load(path) as shard:
                seconds += float(shard["seconds"])
                decode_seconds += float(shard["decode_seconds"])
                labels.append(shard["labels"])
                per_step = shard["model_per_step"].tolist()
                switch_steps += shard["switch_steps"].tolist() if "switch_steps" in shard else []
        for derived in ("metrics.json", FEATURES_FILE):
            (folder / derived).unlink(missing_ok=True)
        write_samples_npz(npz, shards, np.concatenate(labels).astype(np.int64), self.num_samples, self.image_shape)
        write_json(folder / "samples.json", {
            "schedule": schedule.label, "models": list(schedule.models), "fractions": list(schedule.small_fractions),
            "plan": None if schedule.plan is None else plan_to_dict(schedule.plan),
            "num_samples": self.num_samples, "sampling_seconds": seconds, "decode_seconds": decode_seconds,
            "model_per_step": per_step,
            **({"switch_steps": switch_steps} if schedule.plan is not None and schedule.plan.adaptive else {}),
            "settings_hash": self.settings_hash, SAMPLES_CHECKSUM: file_sha256(npz),
        })
        if not self.config.keep_shards:
            shutil.rmtree(folder / "shards", ignore_errors=True)

    def write_pngs(self, schedule: Allocation) -> None:
        from PIL import Image

        folder = self.folder(schedule) / "png"
        folder.mkdir(exist_ok=True)
        remove_temporaries(folder)
        index = 0
        for batch in npz_batches(self.folder(schedule) / "samples.npz", "arr_0", 256):
            for image in batch:
                path = folder / f"{index:06d}.png"
                if not path.is_file():
                    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
                    atomic_write(path, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
                index += 1


def run_evaluate(config: EvaluateConfig, *, progress: bool = True) -> EvaluateResult | None:
    """Sample and score every schedule of ``config``; on process 0 returns the results, elsewhere ``None``.

    Runs alone or under ``torchrun`` (``gloo`` on CPU, ``nccl`` on GPU); every process must see the same
    output folder (for several nodes: a shared file system).
    """
    config.validate()
    processes = Processes(config.device, config.dist_timeout_minutes)
    lock = FolderLock(config.out_dir)  # process 0 holds it from before the models load until the report is written
    try:
        return _sample_and_score(config, processes, lock, progress=progress)
    finally:
        lock.release()


def _sample_and_score(config: EvaluateConfig, processes: Processes, lock: FolderLock, *,
                      progress: bool) -> EvaluateResult | None:
    try:
        processes.on_zero(lock.acquire)  # a second evaluate on the folder is refused here, before any work
        loaded = resolve_models(config, processes.device)
        threads = config.threads
        if threads is None and processes.device.type == "cpu" and sum(
                p.numel() for p in loaded.large.parameters()) < TINY:
            threads = 1  # tiny models gain nothing from threads, and lose much on a busy machine
        if threads:
            torch.set_num_threads(threads)
            logger.info("%d CPU thread(s) for torch", threads)
        run = EvaluationRun(config, loaded, processes)
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
        space, reference, metric_key = metric_space(run)
    rows = []
    for schedule in tqdm(run.schedules, desc="scoring", disable=not progress):
        run.merge(schedule)
        if config.png:
            run.write_pngs(schedule)
        metrics = score_schedule(run, schedule, space, reference, metric_key) if space is not None else None
        rows.append(result_row(run, schedule, metrics))
    earlier = earlier_rows(run, space, reference, metric_key)
    if earlier:  # the folder's table keeps every schedule sampled there with these settings
        logger.info("results also list %d schedule(s) sampled earlier in %s with the same settings",
                    len(earlier), run.out)
        rows = sorted(rows + earlier, key=lambda row: (len(row["models"]), row["fractions"]))
    if reference is not None:
        add_fid_intervals(run, rows, reference)
    files = write_report(run, rows, metric_key, processes.world, earlier=[row["schedule"] for row in earlier])
    return EvaluateResult(rows, run.settings, metric_key, run.out, files, [row["schedule"] for row in earlier])


