# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Writing what ``tstitch sample`` sampled: a PNG per image, the grid of the runs and ``summary.json``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..utils import atomic_write, ensure_writable_dir, write_json
from .generate import GenerateResult, RunResult
from .plots import plot_grid

__all__ = ["save_images", "MIN_PNG_SIZE"]

#: Images smaller than this (the 8x8 digits) are enlarged, pixel for pixel, in the per-image PNGs.
MIN_PNG_SIZE = 64


def save_images(result: GenerateResult, out_dir: str | Path) -> list[Path]:
    """Write ``grid.png`` (one row per run, the same noise in each column), ``sample-NNN.png`` per stitched
    image, ``large-NNN.png`` per image of the large model alone (with ``compare``) and ``summary.json``.

    Every file is written under a temporary name and renamed, so none is ever half written. One-channel
    images (the digits) are saved dark on light, as the grid shows them. Returns the paths written.
    """
    out = ensure_writable_dir(out_dir)
    runs = [result.stitched] + ([result.baseline] if result.baseline is not None else [])
    written = []
    for run, prefix in zip(runs, ("sample", "large"), strict=False):
        for index, image in enumerate(run.images):
            pil = _to_pil(image, invert=image.shape[0] == 1)
            path = out / f"{prefix}-{index:03d}.png"
            written.append(atomic_write(path, lambda tmp, p=pil: p.save(tmp, format="PNG")))
    labels = [_row_label(run) for run in runs]
    written.append(plot_grid([run.images for run in runs], labels, out / "grid.png",
                             title="same initial noise in each column"))
    written.append(write_json(out / "summary.json", result.as_dict()))
    return written


def _to_pil(image: torch.Tensor, invert: bool) -> Any:
    from PIL import Image

    picture = image.detach().float().clamp(0, 1)
    if invert:
        picture = 1.0 - picture
    array = (picture * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    side = max(pil.size)
    if side < MIN_PNG_SIZE:
        factor = math.ceil(MIN_PNG_SIZE / side)
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)
    return pil


def _row_label(run: RunResult) -> str:
    if run.plan is not None:
        return run.plan.replace(" > ", "\n")
    if len(run.model_names) == 1 or run.fractions[-1] >= 1.0:
        return f"{run.model_names[-1]} alone"
    return "\n".join(f"{name} {share:g}" for name, share in zip(run.model_names, run.fractions, strict=True))
