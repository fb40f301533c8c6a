# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The timing harness behind ``tstitch bench`` (see :mod:`tstitch.bench.harness`): cases and suites,
runners, memory and dispatch probes, statistics and the report."""

from .cases import CASE_BUILDERS, FRACTIONS, PAPER_FRACTIONS, SUITES, BenchCase, build_case, dit_model, unet_model
from .harness import BenchSettings, run_bench, run_case
from .memory import dispatch_overhead, machine_info
from .report import TARGETS, format_report, plot_times
from .runners import plain_sample

__all__ = [
    "FRACTIONS",
    "PAPER_FRACTIONS",
    "TARGETS",
    "SUITES",
    "CASE_BUILDERS",
    "BenchCase",
    "BenchSettings",
    "build_case",
    "dit_model",
    "unet_model",
    "run_case",
    "run_bench",
    "plain_sample",
    "dispatch_overhead",
    "machine_info",
    "format_report",
    "plot_times",
]
