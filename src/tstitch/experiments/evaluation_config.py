# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The settings of one ``tstitch evaluate`` run, checked before anything is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..caching import cache_settings, parse_cache_option, parse_cache_spec
from ..models.presets import OFFICIAL_MODES, PRESETS
from ..plan import Plan
from .sample_plans import check_plan

__all__ = ["EvaluateConfig", "METRICS", "DTYPES", "MAX_SCHEDULES", "schedule_count"]

METRICS = ("auto", "digits", "inception", "none")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: A sweep with more schedules than this is refused unless ``max_schedules=None`` (``--many-schedules``).
MAX_SCHEDULES = 100


def schedule_count(num_models: int, *, sweep: bool, step: float) -> int:
    """How many schedules a run has: 1, or the sweep's grid (``n + 1`` for two models, every allocation
    ``(n + 1)(n + 2) / 2`` for three, ``n = 1 / step``)."""
    if not sweep:
        return 1
    n = round(1 / step)
    return n + 1 if num_models == 2 else (n + 1) * (n + 2) // 2


@dataclass
class EvaluateConfig:
    """One ``tstitch evaluate`` run. ``None`` fields take the models' defaults (see :func:`resolve_models`).

    Models: a ``preset`` (see :mod:`tstitch.models.presets`) or ``models`` (embedded names like ``digits-s``,
    DiT checkpoint files or folders, hub ids), smallest first; ``models`` with a preset replace its sources.
    Schedules: ``fractions`` (the small models' shares) for one schedule, or ``sweep`` for every fraction
    0, 0.1, ..., 1 of two models, or every allocation on that grid for three.
    """

    out_dir: str | Path
    preset: str | None = None
    models: tuple[str, ...] = ()
    vae: str | None = None
    checkpoint_dir: str | None = None
    fractions: tuple[float, ...] | None = None
    #: One schedule given as a :class:`~tstitch.plan.Plan` (e.g. ``tstitch tune``'s plan.json, or an adaptive plan)
    #: instead of fractions, or a per-step plan's text over the models' short names (``S8 > XL12``), read once the
    #: models are loaded.
    plan: Plan | str | None = None
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
    threads: int | None = None
    max_schedules: int | None = MAX_SCHEDULES
    #: ``--cache`` values (``SPEC`` for the large model, ``MODEL=SPEC``): part of the settings and their hash.
    cache: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (before anything is loaded)."""
        if not self.preset and not self.models:
            raise ValueError("give a preset (--preset NAME) or the models, smallest first (--models A B)")
        if self.fractions is not None and self.sweep:
            raise ValueError("give either fractions (one schedule) or a sweep, not both")
        if self.plan is not None:
            if self.sweep:
                raise ValueError(f"give either a plan (one schedule) or a sweep, not both (plan {self.plan})")
            if not isinstance(self.plan, str):
                check_plan(self.plan, self.fractions, self.num_steps)
            if self.fractions is not None:
                raise ValueError(f"give either a plan or fractions, not both (plan {self.plan})")
        if (not math.isfinite(self.sweep_step) or not 0 < self.sweep_step <= 0.5
                or abs(round(1 / self.sweep_step) * self.sweep_step - 1) > 1e-9):
            raise ValueError(f"sweep_step must divide 1 (0.1, 0.125, 0.2, 0.25, 0.5), got {self.sweep_step}")
        if self.fractions is not None and any(not math.isfinite(f) or not 0 <= f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be in [0, 1], got {list(self.fractions)}")
        if self.sweep and self.max_schedules is not None:
            count = self.expected_models()
            if count in (2, 3) and schedule_count(count, sweep=True, step=self.sweep_step) > self.max_schedules:
                raise ValueError(
                    f"a sweep with step {self.sweep_step:g} over {count} models is "
                    f"{schedule_count(count, sweep=True, step=self.sweep_step):,} schedules of "
                    f"{self.num_samples or 'the default number of'} samples each, more than {self.max_schedules}; "
                    "take a larger step, or allow it (--many-schedules)")
        if self.cache:
            for value in self.cache:  # the specs now; the model names once the models are loaded
                parse_cache_spec(value.split("=", 1)[-1])
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.num_samples is not None and self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {self.num_samples}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.guidance_scale is not None and not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be finite and >= 0, got {self.guidance_scale}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.pr_k < 1 or self.is_splits < 1:
            raise ValueError(f"pr_k and is_splits must be >= 1, got {self.pr_k} and {self.is_splits}")
        if self.reference is not None and not Path(self.reference).exists():
            raise FileNotFoundError(f"reference {self.reference} not found")

    def expected_models(self) -> int | None:
        """The number of models, when it is known before loading (the models given, or the preset's)."""
        if self.models:
            return len(self.models)

        preset = PRESETS.get(self.preset) if self.preset else None
        return None if preset is None else len(preset.models)


def eval_cache(values: tuple[str, ...], model_names: list[str], mode: str) -> dict[str, str]:
    """``tstitch evaluate``'s ``--cache`` values as ``{model name: spec}`` (empty without caches)."""
    return cache_settings(parse_cache_option(values, model_names), model_names, mode in OFFICIAL_MODES)
