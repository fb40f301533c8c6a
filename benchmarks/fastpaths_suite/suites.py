# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Named settings of the fast-path comparison (:mod:`fastpaths_suite.compare`) and the run over them that
writes its files after every repetition."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tstitch.bench.cases import build_case
from tstitch.bench.memory import machine_info
from tstitch.models.fastpaths import FastPaths
from tstitch.utils import ensure_writable_dir

from .compare import Variant, run_variants
from .report import save_results

logger = logging.getLogger(__name__)

__all__ = ["FAST_SUITES", "QUALITY_VARIANTS", "VARIANT_SETS", "run_fast_bench"]

#: Variant sets: the baseline first. "gpu": fp32 eager against the CUDA default
#: (``FastPaths.for_device("cuda")``); "cpu": each option that exists on a CPU alone and together.
VARIANT_SETS: dict[str, list[Variant]] = {
    "gpu": [Variant("fp32-eager", FastPaths()), Variant("fast", FastPaths.for_device("cuda"))],
    "cpu": [
        Variant("fp32-eager", FastPaths()),
        Variant("bf16", FastPaths(dtype="bf16")),
        Variant("compile", FastPaths(compile=True)),
        Variant("bf16+compile", FastPaths(dtype="bf16", compile=True)),
    ],
}

#: The variants of each set that the digits quality guard compares (the baseline first).
QUALITY_VARIANTS: dict[str, list[str]] = {"gpu": ["fp32-eager", "fast"], "cpu": ["fp32-eager", "bf16"]}

#: Named settings: device, variant set, and the cases with their options. "gpu-paper" is the paper's
#: DiT-S -> DiT-XL table setting (8 images, 100 DDIM steps, guidance 1.5, fractions 0, 0.2, ..., 1, three
#: repetitions); "cpu" the digits family and a reduced DiT shape (DiT-S/2 -> DiT-B/2 at 16x16 latents).
FAST_SUITES: dict[str, dict[str, Any]] = {
    "gpu-paper": {"device": "cuda", "variants": "gpu", "cases": [
        ("dit-s-xl", dict(num_steps=100, num_images=8, guidance_scale=1.5, repetitions=3)),
    ]},
    "cpu": {"device": "cpu", "variants": "cpu", "cases": [
        ("digits", dict(num_steps=10, num_images=64, repetitions=5)),
        ("dit-s-b-16", dict(num_steps=8, num_images=1, guidance_scale=1.5, repetitions=3)),
    ]},
}


def run_fast_bench(
    cases: Sequence[tuple[str, dict[str, Any]]],
    variants: Sequence[Variant],
    out_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    memory: bool = True,
    budget_seconds: float | None = None,
) -> dict[str, Any]:
    """Run :func:`~fastpaths_suite.compare.run_variants` over ``cases`` (built on ``device`` one at a time)
    and write ``fastpaths.json``, ``.png`` and ``.md`` into ``out_dir`` after every repetition
    (``"complete": false`` until the end). ``budget_seconds`` is shared by the cases, from the start."""
    out = ensure_writable_dir(out_dir)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine_info(device), "cases": [], "complete": False,
                               "variants": [{"name": v.name, "label": str(v.fast)} for v in variants]}
    finished: list[dict[str, Any]] = []

    def save(partial: dict[str, Any] | None = None) -> None:
        results["cases"] = finished + ([partial] if partial else [])
        results["wall_seconds"] = time.perf_counter() - started
        save_results(results, out)

    for name, options in cases:
        logger.info(f"{name}: building the models")
        case = build_case(name, device, seed, **options)
        left = None if budget_seconds is None else budget_seconds - (time.perf_counter() - started)
        finished.append(run_variants(case, variants, seed=seed, memory=memory, budget_seconds=left,
                                     checkpoint=save))
        del case
        gc.collect()
        save()
    results["complete"] = True
    save()
    return results
