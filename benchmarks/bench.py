# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch bench`` without the rest of the CLI, for a machine where the package is not installed.

    PYTHONPATH=src python3 benchmarks/bench.py --gpu-paper --out DIR

takes the same options as ``tstitch bench`` (see ``--help`` and benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import logging
import sys

from tstitch.commands import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py")
    bench.register(parser.add_subparsers())
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
