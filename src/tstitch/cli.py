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
COMMANDS = ("demo", "sample", "train_zoo", "evaluate", "bench", "tune", "serve")


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


def _missing_checkpoints(argv: list[str]) -> str | None:
    """For ``sample --preset NAME`` (own --model not given): the error naming every checkpoint that cannot be
    had, found before anything imports torch (the parser's registries do), so that it comes at once.
    (``evaluate`` takes class-conditional presets only, which its full parser checks first.)"""
    if len(argv) < 2 or argv[0] != "sample" or {"-h", "--help", "--list-presets"} & set(argv):
        return None
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flag in ("--preset", "--checkpoint-dir", "--vae"):
        early.add_argument(flag)
    early.add_argument("--model", "--models", nargs="*", action="append")
    early.add_argument("--offline", action="store_true")
    try:
        known, _ = early.parse_known_args(argv[1:])
    except (argparse.ArgumentError, SystemExit):
        return None  # the full parser reports bad arguments
    if not known.preset or known.model:
        return None
    from .models.availability import check_preset_available
    from .models.hub import CheckpointNotAvailableError
    from .models.presets import PRESETS

    if known.preset not in PRESETS or PRESETS[known.preset].family == "diffusers-pipeline":
        return None  # unknown names, and text-to-image presets (prompt, extras), go through the full parser first

    try:
        check_preset_available(known.preset, checkpoint_dir=known.checkpoint_dir, vae=known.vae,
                               local_files_only=True if known.offline else None)
    except CheckpointNotAvailableError as error:
        return f"tstitch {argv[0]}: error: {error}"
    except ValueError:
        return None  # an unknown preset: the full parser says so, with the known names
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv``; returns its exit code (0: done or --help, 2: bad input, naming the flag,
    130: interrupted)."""
    message = _missing_checkpoints(sys.argv[1:] if argv is None else list(argv))
    if message is not None:
        print(message, file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a flag that failed its check (2, message printed)
        return stop.code if isinstance(stop.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for messages such as "rerun to resume: ..."
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # one line, no traceback; every file is written atomically, so what is there is whole
        message = getattr(args, "on_interrupt", None) or "nothing half-written was left behind"
        print(f"\ntstitch {args.command}: interrupted; {message}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:  # FileNotFoundError, PermissionError, FileExistsError ...
        print(f"tstitch {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
