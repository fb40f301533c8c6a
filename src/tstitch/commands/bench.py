# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch bench``: time stitched sampling against plain loops, the ideal line and the user's pipeline."""

from __future__ import annotations

import argparse
import time

from ..names import BENCH_CASES
from .checks import (
    SEED,
    Unique,
    add_overwrite,
    cache_option,
    device,
    integer,
    one_of,
    out_folder,
    plan_option,
    real,
)

#: The files the benchmark writes into --out.
OUTPUTS = ("bench.json", "bench.png")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time stitched sampling: overhead, linearity, no tax, speed-up, peak memory",
        description="Times complete sampling runs of each model pair at fractions 0, 0.2, ..., 1 of the small "
        "model, against a plain loop calling the same models, the ideal (1-r) T_large + r T_small and the "
        "unstitched diffusers pipeline, with repetitions interleaved; prints the ratios and writes bench.json "
        "and bench.png.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the embedded digits pair only: under 2 minutes on a CPU")
    mode.add_argument("--gpu-paper", action="store_true",
                      help="the paper's table setting on CUDA: DiT-S/2 -> DiT-XL/2 at 256, 100 DDIM steps, "
                      "8 images, guidance 1.5, fractions 0, 0.1, ..., 1")
    parser.add_argument("--cases", nargs="+", metavar="CASE", type=one_of("case", BENCH_CASES),
                        action=Unique,
                        help=f"cases to run (default: all of the CPU suite): {', '.join(BENCH_CASES)}")
    parser.add_argument("--out", default="outputs/bench", type=out_folder,
                        help="output folder (default: %(default)s)")
    add_overwrite(parser)
    parser.add_argument("--device", type=device(), help="torch device (default: cpu; cuda with --gpu-paper)")
    parser.add_argument("--threads", type=integer(1, 1024),
                        help="torch CPU threads (default: torch's own; 1 with --quick, so that a busy machine "
                        "does not stall it)")
    parser.add_argument("--reps", type=integer(1, 1000),
                        help="timed repetitions per configuration, in [1, 1000] (default: per case)")
    parser.add_argument("--steps", type=integer(1, 1000), help="sampling steps, in [1, 1000] (default: per case)")
    parser.add_argument("--images", type=integer(1, 10_000), help="images per run, in [1, 10000] (default: per case)")
    parser.add_argument("--fractions", type=real(0, 1), nargs="+", metavar="R", action=Unique,
                        help="fractions of the small model (default 0 0.2 0.4 0.6 0.8 1; 0 and 1 are always run)")
    parser.add_argument("--plan", type=plan_option, metavar="PLAN",
                        help="also time this plan of the pair (a plan file, the folder of `tstitch tune --out`, or a "
                        "per-step text over S and L, the small and large model: 'S8 > L12'; any order of the two "
                        "models), its overhead beside the prefix plan's with as many small steps; a per-step plan "
                        "sets --steps; or an adaptive plan, 'adaptive(small-first, x0-change>0.5, 0.2..0.8)': timed "
                        "against the fixed plan in which every sample switches at the mean of its switch steps")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the noise, labels and weights (default: 0)")
    parser.add_argument("--cache", action="append", type=cache_option, metavar="[MODEL=]SPEC",
                        help="also time every fraction with feature caching (cached@r beside stitched@r), repeatable: "
                        "SPEC for the large model, small=SPEC or large=SPEC; first-block:THRESHOLD, "
                        "taylorseer:INTERVAL[:WARMUP[:ORDER]] (DiTs), deepcache:INTERVAL (U-Nets) (docs/caching.md)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    fast = parser.add_argument_group("fast paths (none changes which model runs at which step)")
    fast.add_argument("--compile", action="store_true", help="torch.compile each model (compile time reported apart)")
    fast.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    fast.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: %(default)s)")
    fast.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="precision of the models (half: for GPUs)")
    fast.add_argument("--channels-last", action="store_true", help="channels-last weights (for U-Nets)")
    fast.add_argument("--cuda-graphs", action="store_true", help="a CUDA graph per model and batch shape (CUDA)")
    fast.add_argument("--tf32", action="store_true", help="TF32 for float32 matrix products (CUDA)")
    fast.add_argument("--attention", choices=("auto", "flash", "math"), default="auto",
                      help="attention kernels allowed (default: %(default)s, torch's choice)")
    fast.add_argument("--offload", action="store_true",
                      help="also time stitched sampling with the idle model offloaded to the CPU (CUDA only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import SUITES, BenchSettings, format_report, run_bench
    from ..models.fastpaths import FastPaths
    from ..outputs import OutputFolder

    preset = "gpu-paper" if args.gpu_paper else "quick" if args.quick else "cpu"
    device = args.device or ("cuda" if args.gpu_paper else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--gpu-paper runs on CUDA, which is not available on this machine; give --device cpu "
                         "to run its cases on the CPU")
    if args.compile_mode and not args.compile:
        raise ValueError("--compile-mode applies with --compile")
    if args.offload and torch.device(device).type != "cuda":
        raise ValueError("--offload moves the idle model to the CPU: it needs a CUDA --device")
    from ..caching import parse_cache_option

    cache = parse_cache_option(args.cache, ["small", "large"])
    folder = OutputFolder(args.out, "bench", names=OUTPUTS, overwrite=args.overwrite)
    folder.check()
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)

    cases = [(name, dict(options)) for name, options in SUITES[preset]]
    if args.cases:
        defaults = dict(SUITES["cpu"])
        cases = [(name, dict(defaults.get(name, {}))) for name in args.cases]
    fractions = tuple(args.fractions) if args.fractions else None
    if isinstance(args.plan, str):  # a per-step plan's text over S and L
        from ..plan import Plan

        try:
            args.plan = Plan.parse(args.plan, ["S", "L"])
        except ValueError as error:
            raise ValueError(f"--plan {args.plan!r}: {error} (bench's models are S and L)") from None
    if args.plan is not None:
        from ..experiments.sample_plans import check_plan

        check_plan(args.plan, None, args.steps, ["small", "large"])  # every case is a pair
    for _, options in cases:
        for key, value in (("repetitions", args.reps), ("num_steps", args.steps), ("num_images", args.images),
                           ("fractions", fractions), ("plan", args.plan)):
            if value is not None:
                options[key] = value
        if args.plan is not None and args.plan.is_sequence:
            options["num_steps"] = args.plan.num_steps

    settings = BenchSettings(
        seed=args.seed,
        memory=not args.no_memory,
        cache=cache,
        fast=FastPaths(compile=args.compile, compile_mode=args.compile_mode, compile_backend=args.compile_backend,
                       dtype=args.dtype, channels_last=args.channels_last, offload=args.offload,
                       cuda_graphs=args.cuda_graphs, tf32=args.tf32, attention=args.attention),
    )
    start = time.perf_counter()
    folder.begin()
    args.on_interrupt = (f"{args.out}/bench.json holds the repetitions measured so far (\"complete\": false)")
    results = run_bench(cases, args.out, settings, device=device, preset=preset)
    args.on_interrupt = None
    others = folder.finish([folder.path / name for name in OUTPUTS])
    print(format_report(results))
    print(f"wrote {args.out}/bench.json and bench.png in {time.perf_counter() - start:.0f} s")
    if others:
        print(f"note: {args.out} also holds {', '.join(others)}, not from this run")
    return 0
