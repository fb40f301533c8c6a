# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Fuzzing the argument layer of every command (issue 23): random values for every numeric and path flag, found
from the parser itself. Every input either gets past the argument checks (the first model load raises
:class:`ModelLoad` instead) or ends with exit code 2 and one line naming a flag; never a traceback, never a
file outside a temporary folder. One process; no model is ever loaded."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from pathlib import Path

import hypothesis_home  # noqa: F401  (hypothesis's caches outside the working tree)
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from processes import deadline

from tstitch import cli

#: Types of the parser's checked path flags (``tstitch.commands.checks``), by name.
PATH_TYPES = {"out_folder", "existing_folder", "existing_file", "existing_path", "plan_file", "plan_option"}
#: Words of the metavar (``PATH_OR_ID``) or of the name (tune's ``--out``) of an unchecked flag that takes a path.
PATH_WORDS = {"path", "dir", "file", "out", "weights", "vae", "model", "models", "frontier", "reference", "plan"}


class ModelLoad(Exception):
    """Raised where a command would start loading models: the input got past every argument check."""


def fuzzable_flags() -> dict[str, dict[str, tuple[str, argparse.Action]]]:
    """``{command: {flag: (kind, action)}}`` with kind ``"number"`` or ``"path"``, read from the parser."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    found: dict[str, dict[str, tuple[str, argparse.Action]]] = {}
    for command, subparser in commands.items():
        flags = {}
        for action in subparser._actions:
            if not action.option_strings or action.nargs == 0 or action.choices is not None:
                continue
            type_name = getattr(action.type, "__name__", "")
            words = set(re.split(r"[^a-z]+", f"{action.metavar or ''} {action.dest}".lower()))
            if action.type in (int, float) or type_name in ("integer", "number"):
                flags[action.option_strings[0]] = ("number", action)
            elif type_name in PATH_TYPES or (action.type is None and words & PATH_WORDS and "spec" not in words):
                flags[action.option_strings[0]] = ("path", action)
        found[command] = flags
    return found


FLAGS = fuzzable_flags()
#: Every option string of each command (an error line must name one of them).
OPTIONS = {command: {option for action in subparser._actions for option in action.option_strings
                     if option.startswith("--")}
           for command, subparser in next(a for a in cli.build_parser()._actions
                                          if isinstance(a, argparse._SubParsersAction)).choices.items()}
#: What a command needs beside the fuzzed flags to reach its model loading (a fuzzed flag may replace it).
BASE = {"sample": ["--preset", "digits"], "evaluate": ["--preset", "digits"], "serve": ["--preset", "digits"],
        "tune": ["--out", "tune-out"]}

NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "-1", "1", "1000", "1001", "1e9", "1e308", "-0", "nan", "inf", "-inf", "2**64", "0x10",
                     " 5", "5 ", "", "abc", "1_000", "\u0661\u0662", "1.5", "65536", "70000", "--", "-5e-324"]),
)


def paths(root: Path) -> st.SearchStrategy[str]:
    """Paths inside ``root`` only (relative ones resolve there too: the test runs in it)."""
    prepared = ["missing/deeper", "file.txt", "folder", "fifo", "loop", "link-to-folder", "a" * 300,
                "/".join(["b" * 99] * 50), "out\udcff", "nul\x00name", "", " ", ".", "-", "folder/plan.json",
                str(root / "folder"), str(root / "file.txt"), "c" * 255, "plan.json"]
    relative = st.lists(st.text(alphabet="abcxyz019_-.é", min_size=1, max_size=12), min_size=1, max_size=3).map(
        lambda parts: "/".join(p if p not in (".", "..") else "dot" for p in parts))
    return st.one_of(st.sampled_from(prepared), relative)


def make_root(root: Path) -> None:
    (root / "file.txt").write_text("a file\n")
    (root / "folder").mkdir()
    (root / "plan.json").write_text('{"version": 1, "num_models": 2, "fractions": [0.4, 0.6]}')
    os.mkfifo(root / "fifo")
    (root / "loop").symlink_to(root / "loop")
    (root / "link-to-folder").symlink_to(root / "folder", target_is_directory=True)


@pytest.fixture
def stop_before_models(monkeypatch):
    """Every place where a command would start loading models (or training, or serving) raises ModelLoad."""
    import tstitch.bench
    import tstitch.experiments.demo
    import tstitch.experiments.evaluate
    import tstitch.models.loading
    import tstitch.serve.app
    import tstitch.tune.workload
    import tstitch.zoo.train

    def reached(*args, **kwargs):
        raise ModelLoad

    for module, name in [(tstitch.models.loading, "load_preset"), (tstitch.models.loading, "load_models"),
                         (tstitch.experiments.evaluate, "resolve_models"), (tstitch.experiments.demo, "run_demo"),
                         (tstitch.bench, "run_bench"), (tstitch.zoo.train, "train_zoo"),
                         (tstitch.tune.workload, "digits_workload"), (tstitch.tune.workload, "preset_workload"),
                         (tstitch.serve.app, "make_state")]:
        monkeypatch.setattr(module, name, reached)


def test_every_command_has_fuzzable_flags():
    assert set(FLAGS) == {"demo", "sample", "train-zoo", "evaluate", "bench", "tune", "serve"}
    assert FLAGS["sample"]["--steps"][0] == "number" and FLAGS["sample"]["--plan"][0] == "path"
    assert FLAGS["evaluate"]["--reference"][0] == "path" and FLAGS["serve"]["--port"][0] == "number"
    assert all(FLAGS[command] for command in FLAGS)


@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_flag_values_are_checked_or_get_past_the_checks(data, tmp_path, monkeypatch, stop_before_models):
    root = tmp_path / "root"
    if not root.exists():
        root.mkdir()
        make_root(root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    outside = sorted(p.name for p in tmp_path.parent.iterdir())

    command = data.draw(st.sampled_from(sorted(FLAGS)), label="command")
    chosen = data.draw(st.lists(st.sampled_from(sorted(FLAGS[command])), min_size=1,
                                max_size=min(4, len(FLAGS[command])), unique=True), label="flags")
    argv = [command, *BASE.get(command, [])]
    for flag in chosen:
        kind, action = FLAGS[command][flag]
        values = NUMBERS if kind == "number" else paths(root)
        count = data.draw(st.integers(1, 3)) if action.nargs in ("+", "*") else 1
        argv += [flag, *(data.draw(values, label=flag) for _ in range(count))]

    stderr = io.StringIO()
    checking = deadline(30, "an argument check (a FIFO opened?) still ran")
    with checking, contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except ModelLoad:
            code = None
    err = stderr.getvalue()
    event(f"{command}: {'past the checks' if code is None else f'exit {code}'}")  # --hypothesis-show-statistics
    assert "Traceback" not in err, (argv, err)
    if code is not None:
        assert code == 2, (argv, code, err)
        prefixes = ("tstitch: error:", f"tstitch {command}: error:")
        errors = [line for line in err.splitlines() if line.startswith(prefixes)]
        assert len(errors) == 1, (argv, err)
        if errors[0].startswith("tstitch: error: unrecognized arguments: "):
            # argparse reads a list's value that starts with '-' (--fractions 0 -inf) as a flag: it names that value
            # and what follows it
            named = errors[0].removeprefix("tstitch: error: unrecognized arguments: ").split(" ")
            assert named[0].startswith("-") and all(value in argv for value in named), (argv, errors[0])
        else:
            assert any(option in errors[0] for option in OPTIONS[command]), (argv, errors[0])
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == outside  # nothing beside the temporary folder
