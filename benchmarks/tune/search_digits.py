# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The search on the digits family: ``tstitch.tune`` at 20 DDIM steps on the search seed (no verification).

Writes ``digits-segments/plan.json``, ``frontier.json`` and ``frontier.png`` next to this file (the
folder must not hold them yet), with the search's wall-clock and CPU seconds and its cost in model
evaluations.

    PYTHONPATH=src python benchmarks/tune/search_digits.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from tstitch.tune import tune
from tstitch.tune.search import default_order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--search", choices=("segments", "greedy"), default="segments")
    parser.add_argument("--min-cost", type=float, default=0.35)
    parser.add_argument("--max-cost", type=float, default=0.9)
    parser.add_argument("--side", type=int, default=4, help="longest digits-b run before digits-xl")
    parser.add_argument("--tolerance", type=float, default=1.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "digits-segments"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = tune(args.out, tolerance=args.tolerance, search_samples=args.samples, search=args.search,
                  min_cost=args.min_cost, max_cost=args.max_cost, order=default_order(3, 20, side=args.side),
                  progress=False)
    print(json.dumps({k: v for k, v in result["frontier"]["search"].items()}, indent=1))
    chosen = result["chosen"]
    print(chosen["plan"], chosen["predicted_cost"], chosen["estimated_fid_ratio"])


if __name__ == "__main__":
    main()
