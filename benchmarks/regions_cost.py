# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The cost of a region step (tstitch.regions) against a full large-model step, at DiT-XL/2 shapes.

Random weights, a 32x32x4 latent (256 tokens), 1000 classes. The large model is DiT-XL/2 (28 layers, width
1152, 16 heads, patch 2, learned sigma), the small one DiT-S/2 (12 layers, width 384, 6 heads). Per batch size:
one full large call fills the hybrid's key/value cache (untimed), one untimed call of each kind warms up, then
every repetition times, in an order rotated by one per repetition, the full large call and for each mask
fraction the region step (``HybridDenoiser`` call: small model, mask rule, large model on the token subset,
merge), the large-model subset alone (``large_on_tokens`` with the cache) and the small model alone. Reported:
the median over repetitions of each time divided by the same repetition's full large call.

    PYTHONPATH=src python3 benchmarks/regions_cost.py [--layers 28] [--batches 1 8] [--reps 3] [--device cuda]

``--layers`` below 28 keeps the width (every block is the same, so the large model's ratios per layer are the same;
the small model keeps its 12 layers, so its share is overstated by 28 / layers: ``region_ratio_at_28_layers``
scales that share back, and the target is read from it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel

from tstitch.regions import HybridDenoiser, large_on_tokens

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
TARGET = {"batch": 8, "mask_fraction": 0.3, "max_ratio": 0.45}


def dit(layers: int, heads: int, head_dim: int, seed: int) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    return DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
                                 out_channels=8, num_layers=layers, sample_size=32, patch_size=2,
                                 num_embeds_ada_norm=1000).eval()


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def timed(device: torch.device, call) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(large, small, batch: int, fractions, reps: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 4, 32, 32, generator=generator).to(device)
    t = torch.full((batch,), 500, device=device)
    y = torch.arange(batch, device=device) % 1000
    hybrid = HybridDenoiser(small, large, mask_fraction=fractions[0])
    try:
        large(x, t, y)  # fills the hybrid's cache: every region call below uses it (same input and timestep)
        chosen = {}
        for f in fractions:  # warm-up, and each fraction's tokens for the subset-alone timing
            hybrid.mask_fraction = f
            hybrid(x, t, y)
            call = hybrid.record.calls[-1]
            assert call.mode == "region", call.mode
            chosen[f] = torch.tensor(call.tokens, device=device)
        small(x, t, y)
        cache = hybrid.cache

        def region(f):
            hybrid.mask_fraction = f
            hybrid(x, t, y)
            mode = hybrid.record.calls[-1].mode
            if mode != "region":  # a timed call must be a region step, never the full fallback
                raise RuntimeError(f"mask {f}: the hybrid call ran as {mode!r}")

        jobs = {"full": lambda: large(x, t, y), "small": lambda: small(x, t, y)}
        for f in fractions:
            jobs[f"region@{f}"] = lambda f=f: region(f)
            jobs[f"subset@{f}"] = lambda f=f: large_on_tokens(large, x, t, y, chosen[f], cache)
        names = list(jobs)
        times: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(timed(device, jobs[name]))
            print(f"  batch {batch} rep {rep + 1}/{reps}: full {times['full'][-1]:.2f} s", flush=True)
    finally:
        hybrid.remove()
    full = times["full"]
    result = {"batch": batch, "seconds": times, "full_median_s": statistics.median(full),
              "small_ratio": statistics.median(s / f for s, f in zip(times["small"], full, strict=True)),
              "fractions": {}}
    depth = len(large.transformer_blocks)
    for f in fractions:
        tokens = chosen[f].shape[1]
        row = result["fractions"][str(f)] = {
            "tokens": tokens,
            "region_ratio": statistics.median(r / g for r, g in zip(times[f"region@{f}"], full, strict=True)),
            "subset_ratio": statistics.median(r / g for r, g in zip(times[f"subset@{f}"], full, strict=True)),
        }
        if depth != 28:  # the region step of the 28-layer model: the subset ratio holds per layer, the small
            # model's share shrinks by depth / 28 (the region step's other work is left at its measured share)
            row["region_ratio_at_28_layers"] = row["region_ratio"] - result["small_ratio"] * (1 - depth / 28)
    return result


def table(results: list[dict]) -> str:
    deep = any("region_ratio_at_28_layers" in row for r in results for row in r["fractions"].values())
    extra = " region step / full large, at 28 layers |" if deep else ""
    lines = ["| batch | mask | tokens | region step / full large | large subset / full large | small / full large |"
             + extra, "|---|---|---|---|---|---|" + ("---|" if deep else "")]
    for r in results:
        for f, row in r["fractions"].items():
            at_28 = f" {row['region_ratio_at_28_layers']:.3f} |" if deep else ""
            lines.append(f"| {r['batch']} | {f} | {row['tokens']}/256 | {row['region_ratio']:.3f} | "
                         f"{row['subset_ratio']:.3f} | {r['small_ratio']:.3f} |" + at_28)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=28, help="large-model layers (DiT-XL/2: 28)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "regions_cost.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    large = dit(args.layers, 16, 72, seed=0).to(device)
    small = dit(12, 6, 64, seed=1).to(device)
    load_before = os.getloadavg()
    results = []
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in args.batches:
            results.append(measure(large, small, batch, args.fractions, args.reps, device))
    report = {
        "what": "region step (HybridDenoiser: DiT-S/2 on all tokens + DiT-XL/2-width subset with cached K/V) against "
                "a full large call; medians over interleaved repetitions of per-repetition ratios",
        "machine": machine(device), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "large_layers": args.layers, "small_layers": 12, "reps": args.reps, "dtype": "float32",
        "note": "load averages are os.getloadavg() (1, 5, 15 minutes) before and after; the machine is shared",
        "wall_seconds": round(time.perf_counter() - started, 1), "target": TARGET, "results": results,
    }
    target = next((r["fractions"].get(str(TARGET["mask_fraction"])) for r in results
                   if r["batch"] == TARGET["batch"]), None)
    if target is not None:
        report["target"]["measured_ratio"] = target.get("region_ratio_at_28_layers", target["region_ratio"])
        report["target"]["met"] = report["target"]["measured_ratio"] <= TARGET["max_ratio"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"target (batch 8, mask 0.3, <= 0.45): {report['target'].get('measured_ratio', 'not measured')}; "
          f"load average {load_before} -> {report['load_average_after']}; written to {args.out}")


if __name__ == "__main__":
    main()
