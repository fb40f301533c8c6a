# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch demo``: the T-Stitch study on the embedded digits family."""

from __future__ import annotations

import argparse
import time

from .checks import SEED, Unique, add_overwrite, device, existing_folder, integer, out_folder, real

#: The files the demo can write into --out: the results, and each section's figures (the DiT family's
#: pareto.png, grid.png, similarity.png; the U-Net pair's pareto-unet.png, ...).
OUTPUTS = ("results.json", "results.csv", "pareto.png", "grid.png", "similarity.png",
           "pareto-unet.png", "grid-unet.png", "similarity-unet.png")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the T-Stitch study on the embedded digits models (offline, CPU)",
        description="Samples the embedded digits models at every fraction 0, 0.1, ..., 1 of the small model "
        "(and a few S -> B -> XL allocations) from the same noise, in sections: the DiT family, then the U-Net "
        "pair when its weights are in the zoo. Writes results.json/.csv and per section pareto.png, grid.png "
        "and similarity.png (pareto-unet.png, ... for the U-Net pair) with digits-FID ratios with 95% "
        "intervals, accuracy, and seconds per image from interleaved repetitions.",
    )
    parser.add_argument("--out", default="outputs/demo", type=out_folder, help="output folder (default: %(default)s)")
    add_overwrite(parser)
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps: under a minute on a CPU")
    parser.add_argument("--samples", type=integer(2, 1797),
                        help="images per schedule, in [2, 1797] (the digits set) (default 600, quick 200)")
    parser.add_argument("--steps", type=integer(1, 1000), help="DDIM steps, in [1, 1000] (default 20, quick 10)")
    parser.add_argument("--guidance", type=real(1, 100), nargs="+", metavar="SCALE", action=Unique,
                        help="guidance scales in [1, 100] to sweep; the large model's best is used "
                        "(default 1.0 1.5 2.0)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the noise and labels (default: %(default)s)")
    parser.add_argument("--device", default="cpu", type=device(), help="torch device (default: %(default)s)")
    parser.add_argument("--weights", type=existing_folder,
                        help="folder of the family's weights (default: the shipped ones)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.demo import DemoConfig, format_table, run_demo
    from ..outputs import OutputFolder

    overrides = {"seed": args.seed, "device": args.device, "weights_dir": args.weights}
    if args.samples is not None:
        overrides["num_samples"] = args.samples
    if args.steps is not None:
        overrides["num_steps"] = args.steps
    if args.guidance:
        overrides["guidance_scales"] = tuple(args.guidance)
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    config.validate()
    folder = OutputFolder(args.out, "demo", names=OUTPUTS, overwrite=args.overwrite)
    folder.check()
    start = time.perf_counter()
    folder.begin()
    args.on_interrupt = f"{args.out} may hold figures of an earlier run; run the command again"
    results = run_demo(args.out, config, progress=not args.no_progress)
    args.on_interrupt = None
    others = folder.finish([folder.path / name for name in results["files"]])
    print(format_table(results))
    print(f"wrote {args.out}/{', '.join(results['files'])} in {time.perf_counter() - start:.0f} s on "
          f"{results['device']}")
    if others:
        print(f"note: {args.out} also holds {', '.join(others)}, not from this run")
    return 0
