# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The ``tstitch`` command: argument parsing and printing only.

Each subcommand lives in ``tstitch.commands.<name>`` and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("demo", "sample", "train_zoo", "evaluate", "bench", "tune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tstitch",
        description="Trajectory stitching (T-Stitch): sample diffusion models faster by running a small "
        "model for the first, noisy fraction of the steps and the large model for the rest.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tstitch.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"tstitch.commands.{name}":
                raise
            continue  # a subcommand not written yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, OSError) as error:
        print(f"tstitch {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
