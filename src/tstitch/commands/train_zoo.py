# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch train-zoo``: train the embedded family (DiTs and U-Net pair) and the digits classifier from a seed."""

from __future__ import annotations

import argparse
import json

from ..names import EMBEDDED_MODELS
from .checks import SEED, Unique, add_overwrite, device, integer, one_of, out_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-zoo",
        help="train the embedded digits family and its classifier (the DiTs about 90 minutes, the U-Net pair under an "
        "hour on a 2-core CPU)",
        description="Trains digits-s, digits-b, digits-xl (diffusers DiTs), the U-Net pair digits-unet-s, "
        "digits-unet (diffusers UNet2DConditionModel, each with its own class embedder) and the digits classifier on "
        "scikit-learn's 8x8 digits, reproducibly from --seed, and writes float16 safetensors plus "
        "manifest.json. Point TSTITCH_ZOO_DIR (or --weights of other commands) at the folder to use them. "
        "Nothing in --out changes until every model is trained.",
    )
    parser.add_argument("--out", default="outputs/zoo", type=out_folder, help="output folder (default: %(default)s)")
    add_overwrite(parser)
    parser.add_argument("--models", nargs="+", type=one_of("embedded model", EMBEDDED_MODELS), action=Unique,
                        help=f"train only these members: {', '.join(EMBEDDED_MODELS)} (default: all); the "
                        "manifest keeps the entries of the others already in --out")
    parser.add_argument("--steps", type=integer(1, 100_000),
                        help="training steps for every model, in [1, 100000] (default: each model's own; "
                        "a handful gives a smoke run)")
    parser.add_argument("--seed", type=SEED, default=0, help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", type=device(), help="torch device (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..outputs import OutputFolder
    from ..zoo import CLASSIFIER_NAME, FAMILY
    from ..zoo.train import train_zoo

    members = args.models or list(FAMILY)
    outputs = [f"{CLASSIFIER_NAME}.safetensors", *(f"{name}.safetensors" for name in members), "manifest.json"]
    folder = OutputFolder(args.out, "train-zoo", names=outputs, overwrite=args.overwrite)
    folder.check()
    folder.begin()
    args.on_interrupt = f"{args.out} was left as it was (weights are written only once every model is trained)"
    manifest = train_zoo(args.out, args.models, steps=args.steps, seed=args.seed, device=args.device,
                         progress=not args.no_progress)
    args.on_interrupt = None
    kept = manifest.get("kept_from_earlier_run", [])
    folder.finish([folder.path / name for name in outputs], keep=[f"{name}.safetensors" for name in kept])
    print(json.dumps(manifest, indent=2))
    if kept:
        print(f"note: {', '.join(kept)} in {args.out} are from an earlier run (kept, with their manifest entries)")
    return 0
