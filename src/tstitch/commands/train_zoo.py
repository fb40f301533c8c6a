# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch train-zoo``: train the embedded family and the digits classifier from a seed."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-zoo",
        help="train the embedded digits family and its classifier (about 90 minutes on a 2-core CPU)",
        description="Trains digits-s, digits-b, digits-xl (diffusers DiTs) and the digits classifier on "
        "scikit-learn's 8x8 digits, reproducibly from --seed, and writes float16 safetensors plus "
        "manifest.json. Point TSTITCH_ZOO_DIR (or --weights of other commands) at the folder to use them.",
    )
    parser.add_argument("--out", default="outputs/zoo", help="output folder (default: %(default)s)")
    parser.add_argument("--models", nargs="+", help="train only these members (default: all)")
    parser.add_argument("--steps", type=int, help="training steps for every model (default: each model's own; "
                        "a handful gives a smoke run)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..utils import ensure_writable_dir
    from ..zoo.train import train_zoo

    ensure_writable_dir(args.out)
    manifest = train_zoo(args.out, args.models, steps=args.steps, seed=args.seed, device=args.device,
                         progress=not args.no_progress)
    print(json.dumps(manifest, indent=2))
    return 0
