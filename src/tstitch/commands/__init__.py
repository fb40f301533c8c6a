# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Subcommands of the ``tstitch`` CLI; each module exposes ``register(subparsers)``."""
