# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The names the command line offers, importable without torch.

``tstitch --help`` and the argument checks must answer at once, but the registries these names come from
import torch (the scheduler table's package, the embedded family, the benchmark cases, the evaluation
settings). So each tuple here is one registry's keys, in its order, and the parsers take their choices from
it; ``tests/test_cli_help.py`` checks that every tuple still equals its registry. A new row in one of those
registries is also one name here. (The presets and the sampling modes are in
:mod:`tstitch.models.presets`, which imports no torch either.)
"""

from __future__ import annotations

__all__ = ["SCHEDULER_NAMES", "SCHEDULER_ALIASES", "scheduler_name", "EMBEDDED_MODELS", "BENCH_CASES", "METRICS",
           "MAX_SCHEDULES"]

#: The rows of :data:`tstitch.sampling.schedulers.SCHEDULERS` (``--scheduler``).
SCHEDULER_NAMES = ("ddim", "ddpm", "pndm", "lms", "euler", "euler-a", "heun", "kdpm2", "dpm", "dpm++", "dpm++-sde",
                   "unipc", "deis", "lcm", "flow-euler")
#: Other spellings accepted for ``--scheduler``.
SCHEDULER_ALIASES = {"dpmsolver++": "dpm++", "dpmsolver": "dpm", "euler_a": "euler-a", "euler-ancestral": "euler-a"}

#: The embedded models of every family (:func:`tstitch.models.families.embedded_models`: the digits family's
#: DiTs, then its U-Net pair, smallest first; the keys of :data:`tstitch.zoo.FAMILY`).
EMBEDDED_MODELS = ("digits-s", "digits-b", "digits-xl", "digits-unet-s", "digits-unet")

#: The cases of ``tstitch bench`` (:data:`tstitch.bench.CASE_BUILDERS`).
BENCH_CASES = ("digits", "dit-s-b", "dit-s-xl", "dit-s-b-16", "sd15-bksdm-tiny", "ldm-s-ldm")

#: ``tstitch evaluate --metric`` (:data:`tstitch.experiments.evaluation_config.METRICS`), and the most schedules
#: a sweep has unless ``--many-schedules`` (its ``MAX_SCHEDULES``).
METRICS = ("auto", "digits", "inception", "none")
MAX_SCHEDULES = 100


def scheduler_name(name: str) -> str:
    """The canonical ``--scheduler`` name; ``ValueError`` listing the known names."""
    if not isinstance(name, str):
        raise ValueError(f"scheduler must be a name (one of {', '.join(SCHEDULER_NAMES)}), got {name!r}")
    key = SCHEDULER_ALIASES.get(name.lower(), name.lower())
    if key not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULER_NAMES)}")
    return key
