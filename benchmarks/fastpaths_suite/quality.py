# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The fast paths' quality guard on the embedded digits family: digits-FID and classifier accuracy of
stitched sampling at one fraction with and without each fast path, beside the metric's own seed-to-seed
spread (the baseline at a second seed), and the latent difference from the baseline at the same seed."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch

from tstitch.experiments.batches import sample_batches
from tstitch.metrics import FeatureFID, classifier_accuracy
from tstitch.plan import Plan
from tstitch.sampling import scheduler_factory
from tstitch.zoo import load_classifier, load_family, scheduler_config
from tstitch.zoo.data import load_digits_tensors

from .compare import Variant, latent_difference

logger = logging.getLogger(__name__)

__all__ = ["digits_quality"]


def digits_quality(
    variants: Sequence[Variant],
    *,
    device: torch.device | str = "cpu",
    num_samples: int = 1000,
    fraction: float = 0.4,
    num_steps: int = 20,
    guidance_scale: float = 1.5,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, Any]:
    """digits-s -> digits-xl at ``fraction``, ``num_samples`` images per variant (the first variant is the
    baseline, also run at ``seed + 1`` for the seed-to-seed spread of the metric); returns the rows."""
    if not 2 <= num_samples <= 1797:
        raise ValueError(f"num_samples must be in [2, 1797] (the size of the digits set), got {num_samples}")
    if len(variants) < 2:
        raise ValueError(f"give a baseline and at least one variant, got {[v.name for v in variants]}")
    device = torch.device(device)
    family = load_family(["digits-s", "digits-xl"], device=device)
    base_models = [family["digits-s"], family["digits-xl"]]
    classifier = load_classifier(device=device)
    reference, _ = load_digits_tensors()
    metric = FeatureFID(classifier, reference.to(device))
    make_scheduler = scheduler_factory("ddim", {**scheduler_config(), "set_alpha_to_one": False})
    labels = (torch.arange(num_samples) % 10).to(device)
    expected = Plan.from_small_fractions(fraction).assignment(num_steps)

    rows, first_latents = [], None
    for index, variant in enumerate(variants):
        models = [copy.deepcopy(m) for m in base_models] if variant.fast.enabled else base_models
        variant.fast.apply(models)
        dtype = variant.fast.input_dtype(next(models[-1].parameters()).dtype)
        for run_seed in ([seed, seed + 1] if index == 0 else [seed]):
            noise = torch.randn(num_samples, 1, 8, 8, generator=torch.Generator().manual_seed(run_seed)).to(device)
            with variant.fast.context():
                latents, seconds, per_step = sample_batches(
                    models, [fraction], make_scheduler, noise.to(dtype), labels, num_steps=num_steps,
                    guidance_scale=guidance_scale, batch_size=batch_size)
            if per_step != expected:
                raise RuntimeError(f"{variant.name}: models per step {per_step}, the plan says {expected}")
            images = latents.float().clamp(-1, 1)
            row = {"variant": variant.name, "label": str(variant.fast), "seed": run_seed,
                   "fid": metric.score(images), "accuracy": classifier_accuracy(classifier, images, labels),
                   "seconds": seconds}
            if first_latents is None:
                first_latents = latents
            elif run_seed == seed:
                row["latents_vs_baseline"] = latent_difference(latents, first_latents)
            logger.info(f"{variant.name} seed {run_seed}: digits-FID {row['fid']:.3f}")
            rows.append(row)
    base = rows[0]["fid"]
    for row in rows:
        row["fid_vs_baseline"] = row["fid"] / base
    return {"fraction": fraction, "num_samples": num_samples, "num_steps": num_steps,
            "guidance_scale": guidance_scale, "device": str(device), "rows": rows,
            "note": "the baseline at a second seed gives the metric's seed-to-seed spread"}
