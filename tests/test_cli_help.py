# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch --help`` and every ``tstitch COMMAND --help`` import neither torch nor diffusers, so that they
answer at once; the torch-free names the parsers offer are the registries' own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from processes import run

SRC = Path(__file__).parents[1] / "src"

#: Modules that take seconds to import: argument parsing must not need them.
HEAVY = ("torch", "diffusers", "transformers", "gradio")

#: Runs in a fresh interpreter: --help of the CLI and of every command its parser registered, then reports
#: which heavy modules each one left imported.
SCRIPT = """
import argparse, contextlib, io, json, sys
from tstitch import cli

commands = next(action for action in cli.build_parser()._actions
                if isinstance(action, argparse._SubParsersAction)).choices
report = {"modules": list(cli.COMMANDS), "commands": list(commands), "runs": []}
for argv in [["--help"], *([name, "--help"] for name in commands)]:
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        code = cli.main(argv)
    report["runs"].append({"argv": argv, "code": code, "help": shown.getvalue(),
                           "heavy": [name for name in HEAVY if name in sys.modules]})
print(json.dumps(report))
"""


def test_help_of_the_cli_and_of_every_command_imports_neither_torch_nor_diffusers() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    done = run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{SCRIPT}"], timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # every command module registered its command (a module that fails to import would be missing here)
    assert len(report["commands"]) == len(report["modules"]), report["commands"]
    assert {tuple(one["argv"]) for one in report["runs"]} == {("--help",), *((n, "--help") for n in report["commands"])}
    for one in report["runs"]:
        assert one["code"] == 0, one
        assert "usage: tstitch" in one["help"], one
        assert one["heavy"] == [], f"tstitch {' '.join(one['argv'])} imported {', '.join(one['heavy'])}"


def test_the_torch_free_names_are_the_registries_keys() -> None:
    """The torch-free names the parsers offer are the keys of the registries they stand for."""
    from tstitch import names
    from tstitch.bench import CASE_BUILDERS
    from tstitch.experiments.evaluation_config import MAX_SCHEDULES, METRICS
    from tstitch.models.families import FAMILIES, embedded_models
    from tstitch.models.presets import FAMILY_KINDS, MODES, PRESETS
    from tstitch.sampling.schedulers import SCHEDULERS
    from tstitch.zoo import FAMILY

    assert names.SCHEDULER_NAMES == tuple(SCHEDULERS)
    assert names.EMBEDDED_MODELS == tuple(embedded_models()) == tuple(FAMILY)
    assert names.BENCH_CASES == tuple(CASE_BUILDERS)
    assert (names.METRICS, names.MAX_SCHEDULES) == (METRICS, MAX_SCHEDULES)
    assert FAMILY_KINDS == {name: family.kind for name, family in FAMILIES.items()}
    assert {preset.mode for preset in PRESETS.values()} <= set(MODES)
