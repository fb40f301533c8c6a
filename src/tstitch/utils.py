# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Small shared helpers: atomic writes, JSON without NaN, and the output-folder convention.

The convention (see ``docs/refused-inputs.md``): every command lists what it wrote into its output folder in
``tstitch-outputs.json``. It replaces only files listed there; any other existing file it would write is
refused before any work unless ``overwrite``; files of its own previous run that it did not write this time
are removed at the end; files are created with the mode the umask gives (not 0600).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "write_json", "write_csv", "ensure_writable_dir", "finite_json", "file_mode",
           "OutputFolder", "OUTPUTS_MANIFEST"]

#: The list of files tstitch wrote in an output folder (and which command wrote each).
OUTPUTS_MANIFEST = "tstitch-outputs.json"


def file_mode() -> int:
    """The mode a new file gets under the current umask (``0o666 & ~umask``)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written in it (before any work starts)."""
    if not str(path).strip():
        raise ValueError("the output folder is empty (''): name a folder, e.g. outputs/run")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output folder {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise PermissionError(f"output folder {path} cannot be written: {error.strerror or error}") from error
    return path


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename the temporary file to ``path``: readers never see half a file.
    The file gets the umask's mode (a temporary file alone would be 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    return data


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as strict JSON (non-finite floats become ``null``), atomically."""
    text = json.dumps(finite_json(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))


class OutputFolder:
    """The files one command writes into its output folder, and the rule that protects all others.

    ``names``: files the command may write; ``patterns``: globs of numbered files (``sample-*.png``).
    ``adopt``: names to treat as tstitch's own although unlisted (folders made before the list existed).
    Use :meth:`check` before any work, :meth:`begin` just before the first write, :meth:`finish` after the last.
    """

    def __init__(self, path: str | os.PathLike, command: str, *, names: Iterable[str] = (),
                 patterns: Iterable[str] = (), overwrite: bool = False, adopt: Iterable[str] = ()):
        if not str(path).strip():
            raise ValueError("--out is empty (''): name a folder, e.g. --out outputs/run")
        self.path = Path(path)
        self.command = command
        self.names = list(names)
        self.patterns = list(patterns)
        self.overwrite = overwrite
        self.adopt = set(adopt)

    @property
    def manifest_path(self) -> Path:
        return self.path / OUTPUTS_MANIFEST

    def _read(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return {"files": {}, "running": {}}
        try:
            stored = json.loads(self.manifest_path.read_text())
            return {"files": dict(stored.get("files", {})), "running": dict(stored.get("running", {}))}
        except (OSError, ValueError, AttributeError, TypeError) as error:
            raise ValueError(f"{self.manifest_path} is unreadable ({error}); tstitch cannot tell its own files "
                             "from yours there: choose another --out") from error

    def _write(self, state: dict[str, Any]) -> None:
        write_json(self.manifest_path, {
            "about": "files written by tstitch commands in this folder (file -> command); a command replaces "
                     "only these, and removes its own files of an earlier run that it did not write again",
            **state,
        })

    def _matches(self, name: str, names: Iterable[str], patterns: Iterable[str]) -> bool:
        return name in names or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    def candidates(self) -> list[str]:
        """Existing files of the folder that this command could write."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if p.is_file() and self._matches(p.name, self.names, self.patterns))

    def check(self) -> None:
        """Refuse (``FileExistsError``), before any work, to replace files tstitch did not write."""
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"--out {self.path} is a file, not a folder")
        state = self._read()
        running = [entry for entries in state["running"].values() for entry in entries]
        foreign = [name for name in self.candidates() if name not in state["files"] and name not in self.adopt
                   and not self._matches(name, running, running)]
        if foreign and not self.overwrite:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise FileExistsError(
                f"{self.path} holds {shown}, which tstitch did not write (not listed in {OUTPUTS_MANIFEST}); "
                f"`tstitch {self.command}` writes files of {'that name' if len(foreign) == 1 else 'these names'}. "
                f"Move {'it' if len(foreign) == 1 else 'them'} away, choose another --out, or pass --overwrite")
        ensure_writable_dir(self.path)

    def begin(self) -> None:
        """Note that this command is writing (an interrupted run's files stay tstitch's own)."""
        state = self._read()
        state["running"][self.command] = [*self.names, *self.patterns]
        self._write(state)

    def finish(self, written: Iterable[str | os.PathLike], keep: Iterable[str] = ()) -> list[str]:
        """Record ``written``; remove this command's files of an earlier run that are neither written nor in
        ``keep``. Returns the files it could have written that are not from this run."""
        names = {Path(p).name for p in written if Path(p).parent.resolve() == self.path.resolve()}
        kept = set(keep)
        state = self._read()
        for name, command in list(state["files"].items()):
            if command == self.command and name not in names and name not in kept:
                (self.path / name).unlink(missing_ok=True)
                del state["files"][name]
        state["files"].update({name: self.command for name in sorted(names)})
        state["running"].pop(self.command, None)
        self._write(state)
        return [name for name in self.candidates() if name not in names]
