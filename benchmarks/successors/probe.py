# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The probe behind the study's adaptive thresholds: the x0-change signal along digits-s's and digits-xl's own
trajectories, on the probe seed (21; the study's held-out seed is 22).

    PYTHONPATH=src python3 benchmarks/successors/probe.py --samples 300
    PYTHONPATH=src python3 benchmarks/successors/probe.py --samples 300 --models digits-unet-s digits-unet

Prints, per step, the quantiles (10/50/90%) of ``||x0_k - x0_{k-1}|| / ||x0_{k-1}||`` per sample (the signal of
``tstitch.adaptive``, from the scheduler's ``pred_original_sample``), for each model alone.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch

from tstitch import Plan, StitchedDenoiser, sample
from tstitch.experiments.evaluation_files import sample_labels, sample_noise
from tstitch.tune.workload import digits_workload


def x0_change(denoised: list[torch.Tensor]) -> torch.Tensor:
    """``(steps, samples)``: the relative change of each sample's x0 prediction from the step before (step 0:
    NaN)."""
    out = [torch.full((len(denoised[0]),), float("nan"))]
    for before, now in zip(denoised, denoised[1:], strict=False):
        out.append((now - before).flatten(1).norm(dim=1) / before.flatten(1).norm(dim=1))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", nargs=2, default=["digits-s", "digits-xl"], metavar=("SMALL", "LARGE"),
                        help="the pair (the U-Nets: digits-unet-s digits-unet)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workload = digits_workload(tuple(args.models))
    indices = list(range(args.samples))
    noise = sample_noise(args.seed, indices, workload.sample_shape)
    labels = sample_labels(indices, workload.num_classes)
    for name, fraction in ((args.models[0], 1.0), (args.models[1], 0.0)):
        denoised: list[torch.Tensor] = []

        def keep(state: dict[str, Any], into: list[torch.Tensor] = denoised) -> None:
            into.append(state["denoised"].clone())

        sample(StitchedDenoiser(workload.models, Plan.coerce(fraction, 2)), None, copy.deepcopy(workload.scheduler),
               noise=noise, class_labels=labels, num_inference_steps=args.steps, callback=keep)
        change = x0_change(denoised)
        print(f"{name}: x0-change per step, quantiles 10/50/90%")
        for k, row in enumerate(change):
            if k:
                q = torch.quantile(row, torch.tensor([0.1, 0.5, 0.9])).tolist()
                print(f"  step {k:2d}: {q[0]:.4f} {q[1]:.4f} {q[2]:.4f}")


if __name__ == "__main__":
    main()
