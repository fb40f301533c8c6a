# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Nothing outside --out is ever touched, whatever ``tstitch-outputs.json`` says (issue 23).

The rule is in ``tstitch.outputs``'s docstring: a file is deleted or replaced only if it is a plain file name
directly inside --out, of a name the command writes, and not a symbolic link."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import hypothesis_home  # noqa: F401  (hypothesis's caches outside the working tree)
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tstitch import cli
from tstitch.outputs import OUTPUTS_MANIFEST, OutputFolder, plain_name_problem
from tstitch.utils import atomic_write

NAMES = ("grid.png", "summary.json")
PATTERNS = ("sample-[0-9][0-9][0-9]*.png", "large-[0-9][0-9][0-9]*.png")


def tree_state(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): its kind and its bytes' hash, or the link's target."""
    state = {}
    for folder, folders, files in os.walk(root, followlinks=False):
        if skip is not None and Path(folder) == skip:
            folders.clear()
            continue
        for name in folders + files:
            path = Path(folder) / name
            if skip is not None and path == skip:
                continue
            relative = str(path.relative_to(root))
            if path.is_symlink():
                state[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                state[relative] = ("folder",)
            else:
                state[relative] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return state


LINKS = ("sample-007.png", "summary.json", "large-000.png", "linked-folder")


def make_layout(root: Path, out_is_link: bool, links: frozenset[str] = frozenset(LINKS)) -> Path:
    """A sibling tree of files a command must never touch, some named like its outputs, and an --out that
    holds your files, tstitch's files and links (to files and to a folder) out of it."""
    sibling = root / "precious"
    (sibling / "deeper").mkdir(parents=True)
    for name in ("thesis.txt", "grid.png", "sample-000.png", "summary.json", "deeper/sample-001.png"):
        (sibling / name).write_text(f"yours: {name}")
    (root / "victim.txt").write_text("keep")
    real = root / ("real-out" if out_is_link else "out")
    real.mkdir()
    if out_is_link:
        (root / "out").symlink_to(real, target_is_directory=True)  # --out may be a link: followed
    out = root / "out"
    (out / "notes.txt").write_text("your notes")
    (out / "sample-000.png").write_text("an earlier run's")
    targets = {"sample-007.png": sibling / "sample-000.png",  # links named like outputs
               "summary.json": Path("../precious/summary.json"),
               "large-000.png": root / "missing.png",  # dangling
               "linked-folder": sibling}
    for name in links:
        (out / name).symlink_to(targets[name], target_is_directory=name == "linked-folder")
    return out


def manifest_names(root: Path) -> st.SearchStrategy[str]:
    outside = [
        "..", ".", "", "/", "../precious/thesis.txt", str(root / "victim.txt"), str(root / "precious" / "grid.png"),
        "linked-folder/thesis.txt", "linked-folder/grid.png", "linked-folder", "sample-000.png/../../victim.txt",
        "sample-001.png/../../precious/grid.png", "../../victim.txt", "sample-007.png", "summary.json",
        "large-000.png", "notes.txt", "grid.png", "sample-000.png", "sample-002.png", "sample-\n001.png",
        "sample-001.png\x00", "grid.png\x00../victim.txt", "large-123.png", "sample-12.png", "precious",
        "sample-999.png/", "./grid.png", "out/grid.png", "\udcff.png", "sample-000.png\r",
    ]
    text = st.text(alphabet=st.sampled_from(list("./\\\x00\n ab-0123456789gridsample.png")), max_size=24)
    return st.one_of(st.sampled_from(outside), text)


COMMANDS = st.sampled_from(["sample", "demo", "evaluate", "", 3, None, ["sample"]])


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), out_is_link=st.booleans(), overwrite=st.booleans(), skip_check=st.booleans(),
       links=st.frozensets(st.sampled_from(LINKS)))
def test_nothing_outside_out_changes_whatever_the_manifest_says(data, out_is_link, overwrite, skip_check, links):
    """Random manifests (``..``, absolute paths, paths through a link to a folder outside, names with NUL or
    newline, names of the command's patterns and not), with or without links named like outputs, an --out
    that is itself a link, and even begin/finish called without check: nothing outside --out changes, and
    inside it no link and none of your files."""
    logging.getLogger("tstitch.outputs").setLevel(logging.ERROR)  # 500 examples of warnings: not the point here
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        out = make_layout(root, out_is_link, links)
        files = data.draw(st.dictionaries(manifest_names(root), COMMANDS, max_size=12), label="files")
        running = data.draw(st.one_of(
            st.just({}), st.dictionaries(st.sampled_from(["sample", "demo"]),
                                         st.lists(manifest_names(root), max_size=3), max_size=2)), label="running")
        raw = data.draw(st.booleans(), label="raw manifest")
        text = json.dumps({"files": files, "running": running}) if not raw else \
            data.draw(st.sampled_from(['{"files": [1, 2]}', "[]", "{", '{"files": {"a": 1}, "running": 5}']))
        (out / OUTPUTS_MANIFEST).write_text(text)
        written = data.draw(st.lists(st.sampled_from(["grid.png", "sample-000.png", "sample-001.png",
                                                      "sample-007.png", "summary.json"]), unique=True), label="written")
        before_outside = tree_state(root, skip=root / ("real-out" if out_is_link else "out"))
        before_inside = tree_state(out)

        folder = OutputFolder(out, "sample", names=NAMES, patterns=PATTERNS, overwrite=overwrite)
        try:
            if not skip_check:
                folder.check()
            folder.begin()
            paths = []
            for name in written:
                try:
                    paths.append(atomic_write(out / name, lambda tmp, name=name: tmp.write_text(f"new {name}")))
                except FileExistsError:
                    assert name in links  # the writer refuses a link
            folder.finish(paths)
        except (ValueError, FileExistsError):
            pass  # refused: a link named like an output, an unreadable manifest

        assert tree_state(root, skip=root / ("real-out" if out_is_link else "out")) == before_outside
        after_inside = tree_state(out)
        for name, entry in before_inside.items():
            if entry[0] == "link" or name == "notes.txt":  # links and your files: never touched
                assert after_inside.get(name) == entry, name
        for name in set(before_inside) - set(after_inside):  # only an earlier run's file of its own names
            assert name == "sample-000.png" and plain_name_problem(name) is None


@pytest.mark.parametrize("name", ["../precious/thesis.txt", "/abs/victim.txt", "a/b.png", "..", ".", "",
                                  "sample-000.png\x00", "sample-\n000.png", "sample-000.png/../../x"])
def test_plain_name_problem_names_every_kind_of_path(name):
    assert plain_name_problem(name) is not None
    assert plain_name_problem("sample-000.png") is None


def test_the_reproduction_leaves_both_files_in_place(tmp_path, capsys, caplog):
    """Issue 23's reproduction through the CLI: ``../precious/thesis.txt`` and an absolute path listed in
    tstitch-outputs.json were deleted as stale outputs (exit 0)."""
    (tmp_path / "out").mkdir()
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("my thesis\n")
    victim = tmp_path / "tmp" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("keep\n")
    (tmp_path / "out" / OUTPUTS_MANIFEST).write_text(json.dumps(
        {"files": {"../precious/thesis.txt": "sample", str(victim): "sample"}, "running": {}}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="tstitch.outputs"):
            code = cli.main(["sample", "--preset", "digits", "--num-images", "2", "--steps", "2", "--out", "out",
                             "--no-progress", "--no-warmup"])
    finally:
        os.chdir(cwd)
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "my thesis\n"
    assert victim.read_text() == "keep\n"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per ignored entry, not one per read of the manifest
    assert "'../precious/thesis.txt'" in warnings[0] and repr(str(victim)) in warnings[1]
    listed = json.loads((tmp_path / "out" / OUTPUTS_MANIFEST).read_text())["files"]
    assert sorted(listed) == ["grid.png", "sample-000.png", "sample-001.png", "summary.json"]


def test_an_entry_of_the_commands_own_but_not_of_its_names_is_ignored(tmp_path, caplog):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / OUTPUTS_MANIFEST).write_text(json.dumps({"files": {"notes.txt": "sample"}, "running": {}}))
    folder = OutputFolder(tmp_path, "sample", names=NAMES, patterns=PATTERNS)
    with caplog.at_level(logging.WARNING, logger="tstitch.outputs"):
        folder.check()
        folder.begin()
        folder.finish([])
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert [r.getMessage().count("'notes.txt'") for r in caplog.records] == [1]
    assert "writes no file of that name" in caplog.records[0].getMessage()


def test_out_may_be_a_link_to_a_folder(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real, target_is_directory=True)
    folder = OutputFolder(tmp_path / "out", "sample", names=NAMES, patterns=PATTERNS)
    folder.check()
    folder.begin()
    grid = atomic_write(tmp_path / "out" / "grid.png", lambda tmp: tmp.write_text("grid"))
    folder.finish([grid])
    assert (real / "grid.png").read_text() == "grid"
    assert json.loads((real / OUTPUTS_MANIFEST).read_text())["files"] == {"grid.png": "sample"}


def test_a_link_named_like_an_output_is_refused_before_work_even_with_overwrite(tmp_path):
    target = tmp_path / "yours.png"
    target.write_text("yours")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample-003.png").symlink_to(target)
    (out / OUTPUTS_MANIFEST).write_text(json.dumps({"files": {"sample-003.png": "sample"}, "running": {}}))
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="sample-003.png is a symbolic link"):
            OutputFolder(out, "sample", names=NAMES, patterns=PATTERNS, overwrite=overwrite).check()
    with pytest.raises(FileExistsError, match="symbolic link"):  # and the writer itself refuses a link
        atomic_write(out / "sample-003.png", lambda tmp: tmp.write_text("new"))
    # a stale entry that became a link is left in place (the link and its target)
    OutputFolder(out, "sample", names=NAMES, patterns=PATTERNS).finish([])
    assert (out / "sample-003.png").is_symlink() and target.read_text() == "yours"


def test_a_manifest_that_is_a_link_or_deeply_nested_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"files": {"grid.png": "sample"}, "secret-key": 1}))
    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUTS_MANIFEST).symlink_to(elsewhere)
    with pytest.raises(ValueError, match="symbolic link") as refused:
        OutputFolder(out, "sample", names=NAMES).check()
    assert "secret-key" not in str(refused.value)
    (out / OUTPUTS_MANIFEST).unlink()
    (out / OUTPUTS_MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="unreadable"):
        OutputFolder(out, "sample", names=NAMES).check()
    assert elsewhere.read_text().startswith('{"files"')
