# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch tune``: find the fastest per-step plan for your models on this machine."""

from __future__ import annotations

import argparse
import re
import time

#: ``tune()``'s argument names -> this command's flags, for the library's error messages.
FLAGS = {"budget": "--budget", "tolerance": "--tolerance", "num_steps": "--steps", "search_samples": "--search-samples",
         "search_seed": "--seed", "verify_samples": "--verify-samples", "verify_seed": "--verify-seed",
         "batch_size": "--batch-size", "guidance_scale": "--guidance", "max_segments": "--max-segments",
         "min_cost": "--min-cost", "max_cost": "--max-cost"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="search the fastest stitching plan within a time budget or an FID tolerance (default: digits)",
        description="Measures each model's step time on this device, searches per-step plans (prefixes, three "
        "or more segments, the middle model before and after the large one) with a paired quality signal on the "
        "large model's own noise, and writes plan.json, frontier.json and frontier.png under --out. With "
        "--verify-samples, the chosen plan is re-run on held-out seeds with a 95%% interval of its FID ratio "
        "to the large model alone and a measured speed-up. See docs/tune.md.",
    )
    from .checks import out_folder

    parser.add_argument("--out", required=True, type=out_folder,
                        help="a fresh output folder (existing outputs are never overwritten)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--budget", type=float, help="time budget, a fraction of the large model alone (e.g. 0.5)")
    target.add_argument("--tolerance", type=float,
                        help="largest FID ratio to the large model alone (e.g. 1.02; default 1.05 with an FID)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--models", nargs="+", metavar="NAME",
                        help="embedded models, smallest first (default: digits-s digits-b digits-xl)")
    source.add_argument("--preset", help="a class-conditional preset whose weights are present")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default: %(default)s)")
    parser.add_argument("--search-samples", type=int, default=128,
                        help="samples the search scores each plan on (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search's noise (default: %(default)s)")
    parser.add_argument("--verify-samples", type=int, default=0,
                        help="held-out samples to verify the chosen plan on (default: %(default)s, none)")
    parser.add_argument("--verify-seed", type=int, default=1000, help="held-out seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=500, help="samples per model call (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance scale (default: %(default)s)")
    parser.add_argument("--search", choices=("segments", "greedy"), default="segments",
                        help="every plan S > B > XL > B > S within the cost window, or a greedy cost descent "
                             "(default: %(default)s)")
    parser.add_argument("--max-segments", type=int, default=4,
                        help="most segments per plan, greedy search (default: %(default)s)")
    parser.add_argument("--min-cost", type=float, default=0.35,
                        help="cheapest predicted cost searched (default: %(default)s)")
    parser.add_argument("--max-cost", type=float, default=0.9,
                        help="dearest predicted cost searched, segment search (default: %(default)s)")
    parser.add_argument("--rank-by", choices=("distance", "small_fid_ratio"),
                        help="the signal plans are ranked by (default: small_fid_ratio with an FID, else distance)")
    parser.add_argument("--no-adaptive", action="store_true",
                        help="do not verify small-first adaptive plans around the chosen plan (two models, with "
                             "--verify-samples; one is chosen only when it beats the fixed plan)")
    parser.add_argument("--no-regions", action="store_true",
                        help="do not verify small-first region plans (S > H > XL, H the hybrid model at a few mask "
                             "fractions) around the chosen plan (a small and a large DiT, with --verify-samples; one "
                             "is chosen only when it beats the fixed plan; run it with tstitch sample --region)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--weights", help="folder of the embedded family's weights (default: the shipped ones)")
    parser.add_argument("--checkpoint-dir", help="folder of downloaded checkpoints, for --preset")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tune import check_arguments, tune
    from ..tune.api import _check_fresh
    from ..tune.workload import digits_workload, preset_workload

    try:
        _check_fresh(args.out)  # before loading anything
    except FileExistsError as error:  # the library says out_dir: the command's flag is --out
        raise FileExistsError(f"argument --out: {str(error).removeprefix('out_dir ')}") from None
    try:  # every check that needs no model, before loading any (the library names its arguments, not the flags)
        check_arguments(num_steps=args.steps, budget=args.budget, tolerance=args.tolerance,
                        search_samples=args.search_samples, search_seed=args.seed,
                        verify_samples=args.verify_samples, verify_seed=args.verify_seed,
                        batch_size=args.batch_size, guidance_scale=args.guidance, max_segments=args.max_segments,
                        min_cost=args.min_cost, max_cost=args.max_cost, search=args.search)
    except ValueError as error:
        raise ValueError(re.sub(r"\b[a-z_]+\b", lambda word: FLAGS.get(word.group(), word.group()),
                                str(error))) from None
    if args.preset:
        workload = preset_workload(args.preset, device=args.device, checkpoint_dir=args.checkpoint_dir)
    else:
        names = args.models or ["digits-s", "digits-b", "digits-xl"]
        workload = digits_workload(names, weights_dir=args.weights, device=args.device)
    start = time.perf_counter()
    result = tune(
        args.out, workload=workload, num_steps=args.steps, budget=args.budget, tolerance=args.tolerance,
        search_samples=args.search_samples, search_seed=args.seed, verify_samples=args.verify_samples,
        verify_seed=args.verify_seed, batch_size=args.batch_size, guidance_scale=args.guidance,
        max_segments=args.max_segments, min_cost=args.min_cost, max_cost=args.max_cost, search=args.search,
        rank_by=args.rank_by, adaptive=not args.no_adaptive, regions=not args.no_regions,
        progress=not args.no_progress,
    )
    print(format_summary(result))
    print(f"wrote {args.out}/plan.json, frontier.json, frontier.png in {time.perf_counter() - start:.0f} s")
    return 0


def format_summary(result: dict) -> str:
    """The chosen plan, the frontier per budget, and the verification, as text."""
    plan, frontier = result["chosen"], result["frontier"]
    search = frontier["search"]
    lines = [f"step cost vs {frontier['models'][-1]}: " + ", ".join(
        f"{name} {ratio:.3f}" for name, ratio in zip(frontier["models"], frontier["cost_model"]["step_ratios"],
                                                    strict=True)),
             f"search: {search['plans_scored']} plans, {search['large_model_equivalent_runs']:.1f} large-model "
             f"runs of {search['samples']} samples, {search['seconds']:.0f} s",
             f"{'budget':>7}  {'plan':<28} {'cost':>6} {'est. FID ratio':>14}"]
    for budget, row in frontier["budgets"].items():
        if row is not None:
            ratio = row["estimated_fid_ratio"]
            lines.append(f"{budget:>7}  {row['plan']:<28} {row['predicted_cost']:>6.3f} "
                         f"{'-' if ratio is None else f'{ratio:.3f}':>14}")
    lines.append(f"chosen: {plan['plan']} (predicted cost {plan['predicted_cost']:.3f}, "
                 f"{plan['predicted_speedup']:.2f}x faster)")
    for row in (plan["verification"] or {}).get("rows", []):
        lines.append(f"verified {row['plan']}: {_verified(row)}")
    adaptive = result["frontier"].get("adaptive")
    if adaptive and adaptive.get("skipped"):
        lines.append(f"adaptive plans: skipped ({adaptive['skipped']})")
    regions = result["frontier"].get("regions")
    if regions and regions.get("skipped"):
        lines.append(f"region plans: skipped ({regions['skipped']})")
    elif regions and regions.get("fixed"):
        fixed = regions["fixed"]
        lines.append(f"region plans, verified beside {fixed['plan']} (measured cost {fixed['measured_cost']:.3f} "
                     "in this timing):")
        for row in regions["candidates"]:
            lines.append(f"  {row['plan']} at mask {row['mask_fraction']:g}: {_verified(row)}")
    if plan.get("kind") == "region":
        lines.append(f"the chosen plan runs the hybrid model: {plan['run']}")
    return "\n".join(lines)


def _verified(row: dict) -> str:
    """A verification row as text: its quality, measured and predicted cost, mean switch step and verdict."""
    interval = row.get("fid_ratio")
    quality = f"FID ratio {interval['ratio']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]" if interval \
        else f"distance {row['distance']:.4f}"
    switch = f", mean switch step {row['mean_switch_step']:.1f}" if "mean_switch_step" in row else ""
    verdict = {True: ", beats the fixed plan", False: ", does not beat the fixed plan"}.get(row.get("wins"), "")
    return (f"{quality}, measured cost {row['measured_cost']:.3f} (predicted {row['predicted_cost']:.3f})"
            f"{switch}{verdict}")
