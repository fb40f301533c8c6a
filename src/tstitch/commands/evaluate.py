# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch evaluate``: N samples per schedule over every process of a torchrun launch, resumable, scored."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..experiments.evaluate import METRICS
    from ..models.families import embedded_models
    from ..models.loaded import MODES
    from ..models.presets import PRESETS
    from ..sampling.schedulers import SCHEDULERS

    parser = subparsers.add_parser(
        "evaluate",
        help="sample N images per stitching schedule (resumable, torchrun-ready) and score them",
        description="Samples N images for one schedule or a sweep (every fraction 0, 0.1, ..., 1 of two models; "
        "every allocation on that grid for three), alone or under `torchrun --nproc_per_node K -m tstitch.cli "
        "evaluate ...` (gloo on CPU, nccl on GPU). Writes per schedule an ADM-style samples.npz (arr_0 uint8 "
        "NHWC images, arr_1 labels), then results.csv/.json with FID, Inception Score, precision, recall and "
        "seconds per image, and pareto.png. Run the same command again to resume an interrupted run.",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--preset", help="a named model set of a class-conditional family: "
                        + ", ".join(name for name, preset in PRESETS.items() if preset.kind == "class"))
    models.add_argument("--models", "--model", nargs="+", default=[], metavar="MODEL",
                        help=f"models smallest first: embedded names ({embedded_models()[0]}), DiT files or folders, "
                        "hub ids; "
                        "with --preset, they replace its sources")
    models.add_argument("--vae", help="VAE folder or hub id for latent models (default: the preset's / sd-vae-ft-ema)")
    models.add_argument("--checkpoint-dir", help="folder of downloaded checkpoint files (dit_s_256.pt, ...)")
    models.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="model precision (default: %(default)s)")

    what = parser.add_argument_group("schedules and sampling")
    choice = what.add_mutually_exclusive_group()
    choice.add_argument("--fractions", type=float, nargs="+", metavar="F",
                        help="one schedule: the share of each small model, smallest first (default: the preset's)")
    choice.add_argument("--sweep", action="store_true",
                        help="every fraction 0, 0.1, ..., 1 (two models) or every allocation (three models)")
    what.add_argument("--sweep-step", type=float, default=0.1, help="grid step of --sweep (default: %(default)s)")
    what.add_argument("--samples", type=int, dest="num_samples",
                      help="images per schedule (default: 600 for the digits family, 5000 otherwise)")
    what.add_argument("--steps", type=int, dest="num_steps", help="sampling steps (default: the preset's)")
    what.add_argument("--guidance", type=float, dest="guidance_scale",
                      help="classifier-free guidance scale (default: the preset's)")
    what.add_argument("--mode", choices=MODES,
                      help="diffusers schedulers through tstitch.sample, or the published DiT sampler (DDIM)")
    what.add_argument("--scheduler", help=f"diffusers scheduler name ({', '.join(SCHEDULERS)}; default: the "
                      "preset's)")
    what.add_argument("--batch-size", type=int,
                      help="images per batch and per shard, per process (default: 100 digits, 32 otherwise); "
                      "part of the settings: a resume must use the same")
    what.add_argument("--seed", type=int, default=0, help="seed of every sample's noise (default: %(default)s)")
    what.add_argument("--device", default="auto",
                      help="auto (cuda:LOCAL_RANK when CUDA is there, else cpu), cpu, cuda (default: %(default)s)")

    scoring = parser.add_argument_group("metrics")
    scoring.add_argument("--metric", default="auto", choices=METRICS,
                         help="auto: the digits metric for the embedded family, Inception otherwise")
    scoring.add_argument("--reference",
                         help="real images: a folder, an .npz of uint8 NHWC images (arr_0), or an .npz with mu "
                         "and sigma (ADM reference batches); default for digits: the digits data set")
    scoring.add_argument("--inception-weights",
                         help="local pt_inception-2015-12-05-6726825d.pth (default: $TSTITCH_INCEPTION_WEIGHTS)")
    scoring.add_argument("--pr-k", type=int, default=3, help="k of precision/recall (default: %(default)s)")
    scoring.add_argument("--is-splits", type=int, default=10, help="Inception Score splits (default: %(default)s)")

    output = parser.add_argument_group("output")
    output.add_argument("--out", default="outputs/evaluate", help="output folder (default: %(default)s)")
    output.add_argument("--png", action="store_true", help="also write every sample as a PNG file")
    output.add_argument("--keep-shards", action="store_true", help="keep the shard files after merging")
    output.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.evaluate import EvaluateConfig, PeerError, format_rows, run_evaluate

    rank = int(os.environ.get("RANK", 0))
    if rank != 0:  # one voice: the other processes only warn
        logging.getLogger().setLevel(logging.WARNING)
    config = EvaluateConfig(
        out_dir=args.out, preset=args.preset, models=tuple(args.models), vae=args.vae,
        checkpoint_dir=args.checkpoint_dir, fractions=tuple(args.fractions) if args.fractions else None,
        sweep=args.sweep, sweep_step=args.sweep_step, num_samples=args.num_samples, num_steps=args.num_steps,
        guidance_scale=args.guidance_scale, mode=args.mode, scheduler=args.scheduler, batch_size=args.batch_size,
        seed=args.seed, device=args.device, dtype=args.dtype, png=args.png, keep_shards=args.keep_shards,
        metric=args.metric, reference=args.reference, inception_weights=args.inception_weights, pr_k=args.pr_k,
        is_splits=args.is_splits,
    )
    start = time.perf_counter()
    try:
        result = run_evaluate(config, progress=not args.no_progress)
    except PeerError:
        return 2  # process 0 reports the reason
    if result is None:
        return 0
    print(format_rows(result.rows))
    settings = result.settings
    print(f"{len(result.rows)} schedule(s) x {settings['num_samples']} samples, {settings['mode']}/"
          f"{settings['scheduler']} {settings['num_steps']} steps, guidance {settings['guidance_scale']:g}; "
          f"wrote {', '.join(str(p) for p in result.files)} in {time.perf_counter() - start:.0f} s",
          file=sys.stdout)
    return 0
