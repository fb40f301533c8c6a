# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch serve``: a web page to try stitching (parsing and printing)."""

from __future__ import annotations

import argparse
import errno
import logging
import socket

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
    # default None, not "cpu": argparse would check a text default with the type, which imports torch
    parser.add_argument("--device", type=device(), default=None, help="torch device (default: cpu)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this "
                        "machine only)")
    parser.add_argument("--port", type=integer(1, 65535), default=7860, help="port (default: %(default)s)")
    parser.set_defaults(func=run)


def check_port(host: str, port: int) -> None:
    """``ValueError`` naming ``--port`` (or ``--host``) when the page could not listen there: checked before any
    model loads, so that a port in use is said at once, in the command's own terms."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise ValueError(f"argument --host: {host!r} is not an address of this machine ({error})") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds (a closed port's
        try:                                                          # TIME_WAIT is no obstacle)
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ValueError(f"argument --port: {port} is in use on {host}; choose another --port") from None
            if error.errno == errno.EACCES:
                raise ValueError(f"argument --port: {port} needs privileges on this machine; choose another "
                                 "--port (1024 or above)") from None
            if error.errno == errno.EADDRNOTAVAIL:
                raise ValueError(f"argument --host: {host} is not an address of this machine") from None
            raise ValueError(f"argument --port: cannot listen on {host} port {port}: {error.strerror}") from None


def run(args: argparse.Namespace) -> int:
    check_port(args.host, args.port)  # before the models load (a minute for the large presets)
    from ..serve.app import make_state, start, use_one_thread_for_tiny_models

    state, default = make_state(args.preset, args.model, device=args.device or "cpu",
                                checkpoint_dir=args.checkpoint_dir, frontier=args.frontier)
    use_one_thread_for_tiny_models(state, default)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio polls its own server at start-up
    try:
        app, url = start(state, default, args.host, args.port)
    except OSError as error:  # taken since the check
        raise ValueError(f"argument --port: {args.port} on {args.host} could not be served ({error}); choose "
                         "another --port") from None
    print(f"tstitch serve: {url} ({default}; Ctrl-C stops it)", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    print("tstitch serve: stopped", flush=True)
    return 0
