# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The fast paths against fp32 eager stitched sampling, in one run (see docs/performance.md):

    PYTHONPATH=src python3 benchmarks/fastpaths.py --suite gpu-paper --out DIR   # CUDA (benchmarks/gpu.sh)
    PYTHONPATH=src python3 benchmarks/fastpaths.py --suite cpu --threads 1 --out DIR

writes fastpaths.json, fastpaths.png and fastpaths.md into DIR after every repetition and prints the table;
with --quality also the digits quality guard (quality.json, quality.md: digits-FID at r = 0.4 with and
without the fast path, 1000 samples).
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from fastpaths_suite.quality import digits_quality  # the package beside this script (benchmarks/)
from fastpaths_suite.report import format_markdown, format_quality
from fastpaths_suite.suites import FAST_SUITES, QUALITY_VARIANTS, VARIANT_SETS, run_fast_bench

from tstitch.bench.cases import CASE_BUILDERS
from tstitch.utils import atomic_write, ensure_writable_dir, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/fastpaths.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(FAST_SUITES), default="cpu", help="default: %(default)s")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASE_BUILDERS), help="only these cases of the suite")
    parser.add_argument("--variants", nargs="+", help="only these variants (the first is the baseline)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", help="torch device (default: the suite's)")
    parser.add_argument("--reps", type=int, help="repetitions (default: per case)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: per case)")
    parser.add_argument("--images", type=int, help="images per run (default: per case)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--budget", type=float, help="seconds: start no repetition that would end later")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (CUDA)")
    parser.add_argument("--quality", action="store_true", help="also the digits quality guard (digits-FID)")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing (with --quality: only the guard)")
    parser.add_argument("--quality-samples", type=int, default=1000, help="default: %(default)s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    suite = FAST_SUITES[args.suite]
    device = args.device or suite["device"]
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    for value, name in ((args.reps, "--reps"), (args.steps, "--steps"), (args.images, "--images"),
                        (args.threads, "--threads")):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = VARIANT_SETS[suite["variants"]]
    if args.variants:
        known = {v.name: v for v in variants}
        unknown = [name for name in args.variants if name not in known]
        if unknown:
            raise ValueError(f"--variants: unknown {unknown}; known: {list(known)}")
        variants = [known[name] for name in args.variants]
    cases = [(name, dict(options)) for name, options in suite["cases"] if not args.cases or name in args.cases]
    if not cases:
        raise ValueError(f"--cases {args.cases}: none is in suite {args.suite} ({[n for n, _ in suite['cases']]})")
    for _, options in cases:
        for key, value in (("repetitions", args.reps), ("num_steps", args.steps), ("num_images", args.images)):
            if value is not None:
                options[key] = value
    out = ensure_writable_dir(args.out)
    if not args.no_timing:
        results = run_fast_bench(cases, variants, out, device=device, memory=not args.no_memory,
                                 budget_seconds=args.budget)
        print(format_markdown(results))
        print(f"wrote {out}/fastpaths.json, fastpaths.png, fastpaths.md in {results['wall_seconds']:.0f} s")
    if args.quality:
        known = {v.name: v for v in VARIANT_SETS[suite["variants"]]}
        quality = digits_quality([known[name] for name in QUALITY_VARIANTS[suite["variants"]]], device=device,
                                 num_samples=args.quality_samples)
        write_json(out / "quality.json", quality)
        text = format_quality(quality)
        atomic_write(out / "quality.md", lambda path: path.write_text(text + "\n"))
        print(text)
        print(f"wrote {out}/quality.json, quality.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
