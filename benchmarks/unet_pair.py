# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The embedded U-Net pair against digits-xl: digits-FID and sampling time, in one run.

    PYTHONPATH=src python3 benchmarks/unet_pair.py --out benchmarks/unet_pair.json

Same noise and labels for every schedule (as the demo: seed 0, labels 0..9 repeated), DDIM 20 steps on the
family's schedule, digits-FID against all 1,797 digits (the demo's metric). Schedules: digits-xl,
digits-unet, digits-unet-s alone and fractions of digits-unet-s before digits-unet, at each guidance scale;
the order of the schedules alternates between guidance scales so that load drifts hit all of them. The
times are those of the FID runs (batches of --batch), plus --timing-rounds rounds of one batch per
single model, interleaved, the minimum kept.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from tstitch.experiments.batches import sample_batches
from tstitch.metrics import FeatureFID, classifier_accuracy
from tstitch.sampling import scheduler_factory
from tstitch.utils import write_json
from tstitch.zoo import load_classifier, load_family, scheduler_config
from tstitch.zoo.data import load_digits_tensors

SMALL, LARGE, DIT = "digits-unet-s", "digits-unet", "digits-xl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/unet_pair.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--samples", type=int, default=1000, help="default: %(default)s")
    parser.add_argument("--steps", type=int, default=20, help="default: %(default)s")
    parser.add_argument("--batch", type=int, default=600, help="default: %(default)s")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.4, 0.5], help="default: %(default)s")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5], help="default: %(default)s")
    parser.add_argument("--timing-rounds", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--weights", help="weights folder (default: the shipped one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    models = {**load_family([DIT], args.weights), **load_family([SMALL, LARGE], args.weights)}
    classifier = load_classifier(args.weights)
    reference, _ = load_digits_tensors()
    metric = FeatureFID(classifier, reference)
    new_scheduler = scheduler_factory("ddim", {**scheduler_config(), "set_alpha_to_one": False})
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(args.samples, 1, 8, 8, generator=generator)
    labels = torch.arange(args.samples) % 10

    schedules = [((DIT,), ()), ((LARGE,), ()), ((SMALL,), ())]
    schedules += [((SMALL, LARGE), (r,)) for r in args.fractions]
    rows = []
    for index, guidance in enumerate(args.guidance):
        for names, fractions in (schedules if index % 2 == 0 else schedules[::-1]):
            latents, seconds, per_step = sample_batches(
                [models[n] for n in names], list(fractions), new_scheduler, noise, labels,
                num_steps=args.steps, guidance_scale=guidance, batch_size=args.batch)
            images = latents.clamp(-1, 1)
            row = {"models": list(names), "fraction": fractions[0] if fractions else None, "guidance": guidance,
                   "fid": metric.score(images), "accuracy": classifier_accuracy(classifier, images, labels),
                   "seconds": round(seconds, 3), "model_per_step": per_step}
            rows.append(row)
            print(f"g={guidance:g} {' -> '.join(names)} r={row['fraction']}: FID {row['fid']:.3f} "
                  f"acc {row['accuracy']:.3f} {seconds:.1f} s", file=sys.stderr, flush=True)

    def find(names: tuple[str, ...], guidance: float, fraction: float | None = None) -> dict:
        return next(r for r in rows if r["models"] == list(names) and r["guidance"] == guidance
                    and r["fraction"] == fraction)

    for row in rows:
        large = find((LARGE,), row["guidance"])
        row["fid_vs_unet"] = row["fid"] / large["fid"]
        row["time_vs_unet"] = row["seconds"] / large["seconds"]

    # one batch per single model, interleaved rounds, the minimum kept
    batch_noise, batch_labels = noise[: args.batch], labels[: args.batch]
    timing: dict[str, list[float]] = {name: [] for name in (DIT, LARGE, SMALL)}
    for _ in range(args.timing_rounds):
        for name in timing:
            start = time.perf_counter()
            sample_batches([models[name]], [], new_scheduler, batch_noise, batch_labels, num_steps=args.steps,
                           guidance_scale=1.0, batch_size=args.batch)
            timing[name].append(round(time.perf_counter() - start, 3))

    summary = {}
    for guidance in args.guidance:
        dit, large, small = find((DIT,), guidance), find((LARGE,), guidance), find((SMALL,), guidance)
        summary[f"guidance {guidance:g}"] = {
            "fid_unet_over_xl": large["fid"] / dit["fid"],
            "fid_small_over_large": small["fid"] / large["fid"],
            "stitched": {f"r={r:g}": {k: find((SMALL, LARGE), guidance, r)[k] for k in ("fid_vs_unet", "time_vs_unet")}
                         for r in args.fractions},
        }
    best = {name: min(times) for name, times in timing.items()}
    summary["batch_seconds_min"] = best
    summary["unet_time_over_xl"] = best[LARGE] / best[DIT]
    summary["small_time_over_large"] = best[SMALL] / best[LARGE]
    result = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, shared with other jobs",
        "torch": torch.__version__, "samples": args.samples, "steps": args.steps, "batch": args.batch,
        "sampler": "DDIM (set_alpha_to_one False), seed 0 noise, labels i % 10",
        "rows": rows, "timing_rounds": timing, "summary": summary,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
