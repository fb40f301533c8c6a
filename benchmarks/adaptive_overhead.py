# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What an adaptive plan's per-sample machinery costs when it changes nothing (issue 22's target: <= 3%).

    PYTHONPATH=src python3 benchmarks/adaptive_overhead.py --out benchmarks/results/adaptive_overhead.json

On the embedded digits DiTs (digits-s before digits-xl), DDIM 20 steps, one batch of --batch samples: the
fraction plan ``0.4 -> 0.6`` against ``adaptive(small-first, x0-change>0, 0.4..0.9)``, whose threshold 0 makes
every sample switch at the lower bound, step 8: the same models at the same steps, but with the signal read at
every step and the switch decided per sample. The two run in interleaved pairs (their order alternating), each
run after a full garbage collection, and the figure is the median over the pairs of adaptive time / fixed time.
The script also checks that both give the same latents bit for bit and that every sample switched at step 8.

On a machine shared with other jobs, wall times drift by tens of percent between runs; the script therefore
runs on --threads threads (default 1) and reports the ratio of process CPU times too, and, independent of
any drift, the time spent inside the adaptive machinery itself (:class:`tstitch.switching.Switching`'s
methods, timed in one extra run) as a share of that run.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import torch

import tstitch
from tstitch import Plan
from tstitch.bench.memory import machine_info
from tstitch.sampling import scheduler_factory
from tstitch.switching import Switching
from tstitch.utils import write_json
from tstitch.zoo import load_family, scheduler_config

FIXED = Plan.from_small_fractions(0.4)
ADAPTIVE = Plan.parse("adaptive(small-first, x0-change>0, 0.4..0.9)")


def machinery_share(run) -> tuple[float, float]:
    """Seconds spent in the adaptive machinery's methods during one run of the adaptive plan, and the run's."""
    spent = [0.0]
    originals = {name: getattr(Switching, name) for name in ("reset", "model_at", "observe_input", "on_step", "split")}

    def timed(original):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    for name, original in originals.items():
        setattr(Switching, name, timed(original))
    try:
        total, _, _ = run(ADAPTIVE)
    finally:
        for name, original in originals.items():
            setattr(Switching, name, original)
    return spent[0], total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/adaptive_overhead.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--batch", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--steps", type=int, default=20, help="default: %(default)s")
    parser.add_argument("--pairs", type=int, default=9, help="interleaved repetitions (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=1.0, help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    models = load_family(["digits-s", "digits-xl"])
    pair = [models["digits-s"].eval(), models["digits-xl"].eval()]
    new_scheduler = scheduler_factory("ddim", scheduler_config())
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(args.batch, 1, 8, 8, generator=generator)
    labels = torch.arange(args.batch) % 10

    def run(plan: Plan) -> tuple[float, float, tstitch.SampleOutput]:
        gc.collect()  # each run starts with no garbage of the one before (a stitch is a reference cycle)
        start, cpu = time.perf_counter(), time.process_time()
        out = tstitch.sample(pair, plan, new_scheduler(), noise=noise, class_labels=labels,
                             num_inference_steps=args.steps, guidance_scale=args.guidance)
        return time.perf_counter() - start, time.process_time() - cpu, out

    load_before = os.getloadavg()
    _, _, fixed_out = run(FIXED)  # warm-up, and the check
    _, _, adaptive_out = run(ADAPTIVE)
    switch = FIXED.boundaries(args.steps)[1]
    if adaptive_out.record.switch_steps != [switch] * args.batch:
        raise SystemExit(f"not every sample switched at step {switch}: {sorted(set(adaptive_out.record.switch_steps))}")
    if not torch.equal(fixed_out.latents, adaptive_out.latents):
        raise SystemExit("the adaptive plan's latents differ from the fixed plan's")

    times: dict[str, list[float]] = {"fixed": [], "adaptive": [], "fixed_cpu": [], "adaptive_cpu": []}
    for i in range(args.pairs):
        order = (FIXED, ADAPTIVE) if i % 2 == 0 else (ADAPTIVE, FIXED)
        for plan in order:
            seconds, cpu, _ = run(plan)
            name = "fixed" if plan is FIXED else "adaptive"
            times[name].append(seconds)
            times[f"{name}_cpu"].append(cpu)
    ratios = [a / f for a, f in zip(times["adaptive"], times["fixed"], strict=True)]
    cpu_ratios = [a / f for a, f in zip(times["adaptive_cpu"], times["fixed_cpu"], strict=True)]
    inside, total = machinery_share(run)
    result = {
        "what": "adaptive plan whose samples all switch at one step vs the equivalent fraction plan",
        "fixed_plan": str(FIXED), "adaptive_plan": str(ADAPTIVE), "switch_step": switch,
        "models": ["digits-s", "digits-xl"], "scheduler": "ddim", "steps": args.steps, "batch": args.batch,
        "guidance_scale": args.guidance, "pairs": args.pairs,
        "fixed_seconds": times["fixed"], "adaptive_seconds": times["adaptive"], "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "fixed_cpu_seconds": times["fixed_cpu"], "adaptive_cpu_seconds": times["adaptive_cpu"],
        "cpu_ratios": cpu_ratios, "median_cpu_ratio": statistics.median(cpu_ratios),
        "machinery_seconds": inside, "machinery_run_seconds": total, "machinery_share": inside / total,
        "target": 1.03, "target_met": statistics.median(ratios) <= 1.03, "same_latents": True,
        "machine": {"cpu": machine_info()["cpu"], "cores": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0],
                    "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())},
    }
    write_json(args.out, result)
    print(f"median ratio adaptive / fixed over {args.pairs} pairs: {result['median_ratio']:.4f} "
          f"(range {min(ratios):.4f}-{max(ratios):.4f}), CPU time {result['median_cpu_ratio']:.4f}; "
          f"fixed median {statistics.median(times['fixed']):.3f} s; machinery {inside:.4f} s of {total:.3f} s "
          f"({100 * inside / total:.2f}%); load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
