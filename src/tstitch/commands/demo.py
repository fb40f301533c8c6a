# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch demo``: the T-Stitch study on the embedded digits family."""

from __future__ import annotations

import argparse
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the T-Stitch study on the embedded digits models (offline, CPU)",
        description="Samples the embedded digits family at every fraction 0, 0.1, ..., 1 of the small model "
        "(and a few S -> B -> XL allocations) from the same noise, and writes results.json/.csv, pareto.png, "
        "grid.png and similarity.png with measured digits-FID, accuracy and seconds per image.",
    )
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps: under a minute on a CPU")
    parser.add_argument("--samples", type=int, help="images per schedule (default 600, quick 300)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 20, quick 10)")
    parser.add_argument("--guidance", type=float, nargs="+", metavar="SCALE",
                        help="guidance scales to sweep; the large model's best is used (default 1.0 1.5 2.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and labels (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--weights", help="folder of the family's weights (default: the shipped ones)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.demo import DemoConfig, format_table, run_demo

    overrides = {"seed": args.seed, "device": args.device, "weights_dir": args.weights}
    if args.samples is not None:
        overrides["num_samples"] = args.samples
    if args.steps is not None:
        overrides["num_steps"] = args.steps
    if args.guidance:
        overrides["guidance_scales"] = tuple(args.guidance)
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    start = time.perf_counter()
    results = run_demo(args.out, config, progress=not args.no_progress)
    print(format_table(results))
    print(f"wrote {args.out}/results.json, results.csv, pareto.png, grid.png, similarity.png "
          f"in {time.perf_counter() - start:.0f} s on {results['device']}")
    return 0
