# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch serve``: a web page to try stitching (parsing and printing)."""

from __future__ import annotations

import argparse
import logging

from ..models.presets import PRESETS
from .checks import device, existing_file, existing_folder, integer, one_of


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="a web page to try stitching (needs the web extra: pip install 'tstitch[web]')",
        description="Serve a page that samples the same seeds at several fractions and with the large model "
        "alone, and shows each run's measured time, its speed-up, which model ran at each step and where the "
        "choices sit on the measured speed/quality frontier. Default: the embedded digits family, offline.",
    )
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--preset", type=one_of("preset", list(PRESETS)),
                        help="the model set the page opens with (default: digits); every preset whose weights are "
                        "at hand is offered")
    models.add_argument("--model", action="append", metavar="PATH_OR_ID",
                        help="your own models instead, repeated smallest first (as in tstitch sample)")
    parser.add_argument("--checkpoint-dir", type=existing_folder, metavar="DIR",
                        help="folder with downloaded checkpoint files")
    parser.add_argument("--frontier", type=existing_file, metavar="FILE",
                        help="the measured frontier to show: a tstitch tune "
                        "frontier.json or a tstitch demo results.json (default: outputs/tune/frontier.json, "
                        "then outputs/demo/results.json)")
    parser.add_argument("--device", type=device(), default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this "
                        "machine only)")
    parser.add_argument("--port", type=integer(1, 65535), default=7860, help="port (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.app import make_state, start, use_one_thread_for_tiny_models

    state, default = make_state(args.preset, args.model, device=args.device, checkpoint_dir=args.checkpoint_dir,
                                frontier=args.frontier)
    use_one_thread_for_tiny_models(state, default)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio polls its own server at start-up
    app, url = start(state, default, args.host, args.port)
    print(f"tstitch serve: {url} ({default}; Ctrl-C stops it)", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    print("tstitch serve: stopped", flush=True)
    return 0
