# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch evaluate``: N samples per schedule over every process of a torchrun launch, resumable, scored."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from ..models.presets import MODES, PRESETS
from ..names import EMBEDDED_MODELS, MAX_SCHEDULES, METRICS, SCHEDULER_NAMES, scheduler_name
from .checks import (
    SEED,
    add_overwrite,
    cache_option,
    device,
    existing_file,
    existing_folder,
    existing_path,
    integer,
    one_of,
    out_folder,
    plan_option,
    real,
)

#: The report files evaluate writes at the top of --out (the schedules' folders are its own, checked by the
#: settings manifest).
OUTPUTS = ("results.json", "results.csv", "pareto.png")


def register(subparsers: argparse._SubParsersAction) -> None:
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
    class_presets = [name for name, preset in PRESETS.items() if preset.kind == "class"]
    models.add_argument("--preset", type=one_of("class-conditional preset", class_presets),
                        help="a named model set of a class-conditional family: " + ", ".join(class_presets))
    models.add_argument("--models", "--model", nargs="+", default=[], metavar="MODEL",
                        help=f"models smallest first: embedded names ({EMBEDDED_MODELS[0]}), DiT files or folders, "
                        "hub ids; "
                        "with --preset, they replace its sources")
    models.add_argument("--vae", help="VAE folder or hub id for latent models (default: the preset's / sd-vae-ft-ema)")
    models.add_argument("--checkpoint-dir", type=existing_folder,
                        help="folder of downloaded checkpoint files (dit_s_256.pt, ...)")
    models.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="model precision (default: %(default)s)")

    what = parser.add_argument_group("schedules and sampling")
    choice = what.add_mutually_exclusive_group()
    choice.add_argument("--fractions", type=real(0, 1), nargs="+", metavar="F",
                        help="one schedule: the share of each small model, smallest first (default: the preset's)")
    choice.add_argument("--plan", type=plan_option, metavar="PLAN",
                        help="one schedule: a plan file (tstitch.save_plan's JSON, or the folder of `tstitch tune "
                        "--out`), a per-step plan with the models' short names ('S8 > XL12'), or an adaptive plan "
                        "('adaptive(small-first, x0-change>0.15, 0.2..0.6)', each sample switching at its own step, "
                        "recorded in samples.json); a per-step plan sets --steps")
    choice.add_argument("--sweep", action="store_true",
                        help="every fraction 0, 0.1, ..., 1 (two models) or every allocation (three models)")
    what.add_argument("--sweep-step", type=real(0, 0.5, low_open=True),
                      help="grid step of --sweep, dividing 1: 0.1, 0.125, 0.2, 0.25, 0.5 (default: 0.1)")
    what.add_argument("--many-schedules", action="store_true",
                      help=f"allow a sweep of more than {MAX_SCHEDULES} schedules (a small --sweep-step)")
    what.add_argument("--samples", type=integer(2, 10_000_000), dest="num_samples",
                      help="images per schedule (default: 600 for the digits family, 5000 otherwise)")
    what.add_argument("--steps", type=integer(1, 1000), dest="num_steps",
                      help="sampling steps, in [1, 1000] (default: the preset's)")
    what.add_argument("--guidance", type=real(0, 100), dest="guidance_scale",
                      help="classifier-free guidance scale, in [0, 100] (default: the preset's)")
    what.add_argument("--mode", choices=MODES,
                      help="diffusers schedulers through tstitch.sample, or the published DiT sampler (DDIM)")
    what.add_argument("--scheduler", type=one_of("scheduler", SCHEDULER_NAMES, scheduler_name),
                      help=f"diffusers scheduler name ({', '.join(SCHEDULER_NAMES)}; default: the "
                      "preset's)")
    what.add_argument("--cache", action="append", type=cache_option, metavar="[MODEL=]SPEC",
                      help="feature caching, repeatable: SPEC for the large model, MODEL=SPEC for one model "
                      "(first-block:THRESHOLD, taylorseer:INTERVAL[:WARMUP[:ORDER]], deepcache:INTERVAL; "
                      "docs/caching.md); part of the settings")
    what.add_argument("--batch-size", type=integer(1, 100_000),
                      help="images per batch and per shard, per process (default: 100 digits, 32 otherwise); "
                      "part of the settings: a resume must use the same")
    what.add_argument("--seed", type=SEED, default=0, help="seed of every sample's noise (default: %(default)s)")
    what.add_argument("--device", default="auto", type=device(allow_auto=True),
                      help="auto (cuda:LOCAL_RANK when CUDA is there, else cpu), cpu, cuda (default: %(default)s)")
    what.add_argument("--threads", type=integer(1, 1024),
                      help="CPU threads for torch per process (default: 1 for models under 10M parameters on a "
                      "CPU, where threads only add overhead and stall on a busy machine; torch's own otherwise)")

    scoring = parser.add_argument_group("metrics")
    scoring.add_argument("--metric", default="auto", choices=METRICS,
                         help="auto: the digits metric for the embedded family, Inception otherwise")
    scoring.add_argument("--reference", type=existing_path,
                         help="real images: a folder, an .npz of uint8 NHWC images (arr_0), or an .npz with mu "
                         "and sigma (ADM reference batches); default for digits: the digits data set")
    scoring.add_argument("--inception-weights", type=existing_file,
                         help="local pt_inception-2015-12-05-6726825d.pth (default: $TSTITCH_INCEPTION_WEIGHTS)")
    scoring.add_argument("--pr-k", type=integer(1, 1000), default=3,
                         help="k of precision/recall (default: %(default)s)")
    scoring.add_argument("--is-splits", type=integer(1, 1000), default=10,
                         help="Inception Score splits (default: %(default)s)")

    output = parser.add_argument_group("output")
    output.add_argument("--out", default="outputs/evaluate", type=out_folder,
                        help="output folder (default: %(default)s); the same folder resumes a run")
    add_overwrite(output)
    output.add_argument("--png", action="store_true", help="also write every sample as a PNG file")
    output.add_argument("--keep-shards", action="store_true", help="keep the shard files after merging")
    output.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.sweep_step is not None and not args.sweep:
        raise ValueError("--sweep-step applies to --sweep")
    if args.many_schedules and not args.sweep:
        raise ValueError("--many-schedules applies to --sweep")
    if getattr(args.plan, "adaptive", None) is not None:
        preset_mode = PRESETS[args.preset].mode if args.preset and not args.models else None
        if (args.mode or preset_mode) in ("official", "official-zeros"):
            raise ValueError(f"--plan {args.plan}: an adaptive plan runs in the bare loop, not the published DiT "
                             f"sampler (mode {args.mode or preset_mode!r}): use --mode diffusers")
        if args.cache:
            raise ValueError(f"--plan {args.plan}: an adaptive plan splits a batch between the models; feature "
                             "caches (--cache) do not follow the split: drop --cache")
    if args.metric in ("digits", "none") and args.inception_weights:
        raise ValueError(f"--inception-weights applies to the inception metric, not --metric {args.metric}")


def _is_evaluation(folder: Path) -> bool:
    """Whether ``folder`` holds an evaluation's settings manifest (a folder made before tstitch-outputs.json)."""
    try:
        stored = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stored, dict) and "hash" in stored and "settings" in stored


def run(args: argparse.Namespace) -> int:
    from ..experiments.evaluate import EvaluateConfig, PeerError, format_rows, run_evaluate
    from ..experiments.processes import launch_place
    from ..outputs import OutputFolder

    _check_args(args)
    rank = launch_place()[0]  # RANK=abc, or RANK=1 left without WORLD_SIZE: refused by name before any work
    if rank != 0:  # one voice: the other processes only warn
        logging.getLogger().setLevel(logging.WARNING)
    config = EvaluateConfig(
        out_dir=args.out, preset=args.preset, models=tuple(args.models), vae=args.vae,
        checkpoint_dir=args.checkpoint_dir, fractions=tuple(args.fractions) if args.fractions else None,
        plan=args.plan,
        sweep=args.sweep, sweep_step=args.sweep_step or 0.1, num_samples=args.num_samples,
        num_steps=args.num_steps, guidance_scale=args.guidance_scale, mode=args.mode, scheduler=args.scheduler,
        batch_size=args.batch_size, seed=args.seed, device=args.device, dtype=args.dtype, png=args.png,
        keep_shards=args.keep_shards, metric=args.metric, reference=args.reference,
        inception_weights=args.inception_weights, pr_k=args.pr_k, is_splits=args.is_splits, threads=args.threads,
        max_schedules=None if args.many_schedules else MAX_SCHEDULES, cache=tuple(args.cache or ()),
    )
    config.validate()
    out = Path(args.out)
    folder = OutputFolder(out, "evaluate", names=OUTPUTS, overwrite=args.overwrite,
                          adopt=OUTPUTS if _is_evaluation(out) else ())
    folder.check()  # every process: they all see the same files, so they all stop or none does
    if rank == 0:
        folder.begin()
    args.on_interrupt = ("rerun to resume (finished shards are kept): "
                         + shlex.join(["tstitch", *getattr(args, "argv", ["evaluate", "..."])]))
    start = time.perf_counter()
    try:
        result = run_evaluate(config, progress=not args.no_progress)
    except PeerError:
        return 2  # process 0 reports the reason
    args.on_interrupt = None
    if result is None:
        return 0
    others = folder.finish(result.files)
    print(format_rows(result.rows))
    settings = result.settings
    print(f"{len(result.rows)} schedule(s) x {settings['num_samples']} samples, {settings['mode']}/"
          f"{settings['scheduler']} {settings['num_steps']} steps, guidance {settings['guidance_scale']:g}; "
          f"wrote {', '.join(str(p) for p in result.files)} in {time.perf_counter() - start:.0f} s",
          file=sys.stdout)
    if result.earlier:
        print(f"note: the results also list {len(result.earlier)} schedule(s) sampled earlier in {out} with the "
              f"same settings: {', '.join(result.earlier)}")
    if others:
        print(f"note: {out} also holds {', '.join(others)}, not from this run")
    return 0
