# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The paths a user gives: the checks every path passes, and the output-folder convention (:class:`OutputFolder`).

The convention (see ``docs/refused-inputs.md``): every command lists what it wrote into its output folder in
``tstitch-outputs.json``. It replaces only files listed there; any other existing file it would write is
refused before any work unless ``overwrite``; files of its own previous run that it did not write this time
are removed at the end; files are created with the mode the umask gives (not 0600).

The rule for deleting and replacing files. ``tstitch-outputs.json`` is a file like any other in the folder
(someone may have sent you the folder, or crafted the file), so it is never trusted to name a path. A file
is deleted or replaced only if all of these hold:

* its name is a plain file name directly inside ``--out``: no path separator, not ``.`` or ``..``, not
  absolute, no control character (NUL, newline ...), and encodable as a file name;
* the command itself would write a file of that name: each command declares its names and patterns
  (``sample``: ``grid.png``, ``summary.json``, ``sample-NNN*.png`` ...), and nothing else is its own;
* it is a plain file, not a symbolic link (a link inside ``--out`` is never written through, replaced or
  deleted: a command that would write a file of its name refuses before any work, even with ``overwrite``),
  nor a folder, FIFO or other special file.

Any other entry of ``tstitch-outputs.json`` is ignored, with one warning naming it, and dropped from the
list when the command rewrites it. ``--out`` itself may be a symbolic link to a folder: it is followed.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .utils import ensure_writable_dir, write_json

logger = logging.getLogger(__name__)

__all__ = ["plain_name_problem", "path_problem", "output_path_problem", "OutputFolder", "OUTPUTS_MANIFEST"]

#: The list of files tstitch wrote in an output folder (and which command wrote each).
OUTPUTS_MANIFEST = "tstitch-outputs.json"


def plain_name_problem(name: object) -> str | None:
    """Why ``name`` is not a plain file name directly inside a folder, or ``None`` when it is one."""
    if not isinstance(name, str):
        return f"not a text but {type(name).__name__}"
    if name in ("", ".", ".."):
        return "not a file name"
    if any(ord(character) < 32 or ord(character) == 127 for character in name):
        return "it holds a control character (NUL, newline ...)"
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if any(separator in name for separator in separators) or os.path.isabs(name):
        return "not a plain file name directly inside the folder (a path)"
    try:
        os.fsencode(name)
    except UnicodeError:
        return "it cannot be encoded as a file name"
    return None


def path_problem(path: str | os.PathLike) -> str | None:
    """Why the system cannot look ``path`` up (a name too long, a loop of links, a NUL, no permission to
    search a folder above it), or ``None``: a path that exists, or that is simply missing."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        return f"{_shown(os.fspath(path), 100)} cannot be used: {error.strerror or error}"
    except ValueError:
        return f"{_shown(os.fspath(path), 100)} holds a NUL character"
    return None


#: Room kept in an output folder's path for the files and folders a command writes inside it.
PATH_ROOM = 256


def _limit(path: str, name: str, default: int) -> int:
    """``os.pathconf`` of the deepest existing folder above ``path`` (``default`` where it cannot say)."""
    folder = os.path.dirname(os.path.abspath(path)) or os.sep
    while True:
        try:
            if os.path.isdir(folder):
                return int(os.pathconf(folder, name))
        except (OSError, ValueError):
            return default
        parent = os.path.dirname(folder)
        if parent == folder:
            return default
        folder = parent


def output_path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be an output folder, or ``None``: checked before any work, without touching it.

    Refused: a name that is not valid UTF-8 (tstitch writes its paths into UTF-8 JSON and messages); a
    component longer than the file system's NAME_MAX (255 bytes on most); a path whose absolute form leaves
    fewer than 256 bytes of PATH_MAX (4,096 on Linux) for the files written inside it."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\x00" in text:
        return "it holds a NUL character"
    try:
        encoded = os.fsencode(text)
    except UnicodeError:
        return "it cannot be encoded as a file name"
    try:
        encoded.decode("utf-8")
    except UnicodeDecodeError as error:
        return (f"it is not valid UTF-8 (byte 0x{encoded[error.start]:02x} at byte {error.start}); tstitch writes "
                "its paths into UTF-8 files and messages: choose a UTF-8 name")
    name_max = _limit(text, "PC_NAME_MAX", 255)
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > name_max:
        start = longest[:24].decode(errors="replace")
        return (f"a component of it is {len(longest):,} bytes long ({start}...), more than the {name_max} bytes "
                "a file name may have here")
    path_max = _limit(text, "PC_PATH_MAX", 4096)
    absolute = len(os.fsencode(os.path.abspath(text)))
    if absolute > path_max - PATH_ROOM:
        return (f"it is {absolute:,} bytes long as an absolute path; at most {path_max - PATH_ROOM:,} leaves room "
                f"for the files written inside it (PATH_MAX is {path_max:,} here)")
    return None


def _shown(name: object, limit: int = 120) -> str:
    """``repr(name)``, cut after ``limit`` characters (a warning naming a megabyte-long key stays readable)."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class OutputFolder:
    """The files one command writes into its output folder, and the rule that protects all others (the
    module's docstring states it).

    ``names``: files the command may write; ``patterns``: globs of numbered files (``sample-*.png``).
    ``adopt``: names to treat as tstitch's own although unlisted (folders made before the list existed).
    Use :meth:`check` before any work, :meth:`begin` just before the first write, :meth:`finish` after the last.
    """

    def __init__(self, path: str | os.PathLike, command: str, *, names: Iterable[str] = (),
                 patterns: Iterable[str] = (), overwrite: bool = False, adopt: Iterable[str] = ()):
        if not str(path).strip():
            raise ValueError("--out is empty (''): name a folder, e.g. --out outputs/run")
        problem = output_path_problem(path)
        if problem is not None:
            raise ValueError(f"--out {_shown(os.fspath(path), 80)}: {problem}")
        self.path = Path(path)
        self.command = command
        self.names = list(names)
        self.patterns = list(patterns)
        for name in [*self.names, *self.patterns]:
            problem = plain_name_problem(name)
            if problem is not None:
                raise ValueError(f"`tstitch {command}` declares the output name {name!r}: {problem}")
        self.overwrite = overwrite
        self.adopt = set(adopt)
        self._warned: set[tuple[str, str]] = set()  # (kind, entry): one warning per ignored entry

    @property
    def manifest_path(self) -> Path:
        return self.path / OUTPUTS_MANIFEST

    def _warn(self, kind: str, entry: object, why: str) -> None:
        key = (kind, repr(entry))
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s: ignored the %s entry %s: %s", self.manifest_path, kind, _shown(entry), why)

    def _unreadable(self, why: str) -> ValueError:
        return ValueError(f"{self.manifest_path} is unreadable ({why}); tstitch cannot tell its own files "
                          "from yours there: choose another --out")

    def _read(self) -> dict[str, Any]:
        """The manifest's entries that the rule allows (each other entry is warned of once and left out)."""
        try:
            mode = os.lstat(self.manifest_path).st_mode
        except (FileNotFoundError, NotADirectoryError):  # no folder yet (or a file above it: check says so)
            return {"files": {}, "running": {}}
        except OSError as error:
            raise self._unreadable(error.strerror or str(error)) from error
        if not stat.S_ISREG(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a plain file"
            raise self._unreadable(f"it is {kind}, which tstitch never reads, replaces or deletes")
        try:
            stored = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except RecursionError as error:
            raise self._unreadable("JSON nested too deeply") from error
        except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise self._unreadable(str(error)) from error
        if not isinstance(stored, dict) or not isinstance(stored.get("files", {}), dict) \
                or not isinstance(stored.get("running", {}), dict):
            raise self._unreadable("not an object with 'files' and 'running' objects")
        files = {}
        for name, command in stored.get("files", {}).items():
            problem = plain_name_problem(name)
            if problem is None and not isinstance(command, str):
                problem = f"the command that wrote it is not a name but {_shown(command, 40)}"
            if problem is None and command == self.command and not self._own(name):
                problem = f"`tstitch {self.command}` writes no file of that name"
            if problem is not None:
                self._warn("file", name, f"{problem}; it is never deleted or replaced for that entry")
                continue
            files[name] = command
        running = {}
        for command, entries in stored.get("running", {}).items():
            if not isinstance(entries, list) or any(plain_name_problem(entry) for entry in entries):
                self._warn("running", command, "not a list of plain file names and patterns")
                continue
            running[command] = entries
        return {"files": files, "running": running}

    def _write(self, state: dict[str, Any]) -> None:
        write_json(self.manifest_path, {
            "about": "files written by tstitch commands in this folder (file -> command); a command replaces "
                     "only these, and removes its own files of an earlier run that it did not write again",
            **state,
        })

    def _matches(self, name: str, names: Iterable[str], patterns: Iterable[str]) -> bool:
        return name in names or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    def _own(self, name: str) -> bool:
        """Whether ``name`` is a plain file name that this command writes (by its names and patterns)."""
        return plain_name_problem(name) is None and self._matches(name, self.names, self.patterns)

    def _entries(self) -> list[tuple[str, int]]:
        """``(name, mode)`` of the entries of the folder that this command could write (``lstat``: links
        are not followed)."""
        if not self.path.is_dir():
            return []
        entries = []
        for entry in os.scandir(self.path):
            if self._own(entry.name):
                entries.append((entry.name, entry.stat(follow_symlinks=False).st_mode))
        return sorted(entries)

    def candidates(self) -> list[str]:
        """Existing plain files of the folder (not links) that this command could write."""
        return [name for name, mode in self._entries() if stat.S_ISREG(mode)]

    def check(self) -> None:
        """Refuse (``FileExistsError``), before any work, to replace files tstitch did not write, and any link,
        folder or special file of a name this command writes."""
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"--out {self.path} is a file, not a folder")
        special = [(name, mode) for name, mode in self._entries() if not stat.S_ISREG(mode)]
        if special:
            name, mode = special[0]
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else \
                "a special file"
            more = f" (and {len(special) - 1} more such entries)" if len(special) > 1 else ""
            raise FileExistsError(
                f"{self.path / name} is {kind}{more}, where `tstitch {self.command}` writes a file of that name; "
                "tstitch never writes through, replaces or deletes links and special files (not even with "
                "--overwrite): move it away or choose another --out")
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

    def _remove_stale(self, name: str) -> None:
        """Delete this command's file ``name`` of an earlier run, if it is a plain file (not a link)."""
        path = self.path / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISREG(mode):
            path.unlink(missing_ok=True)
        else:
            self._warn("file", name, "not a plain file (a link, folder or special file): left in place")

    def finish(self, written: Iterable[str | os.PathLike], keep: Iterable[str] = ()) -> list[str]:
        """Record ``written``; remove this command's files of an earlier run that are neither written nor in
        ``keep`` (by the rule of the module's docstring). Returns the files it could have written that are not
        from this run."""
        names = {Path(p).name for p in written if Path(p).parent.resolve() == self.path.resolve()}
        kept = set(keep)
        state = self._read()
        for name, command in list(state["files"].items()):
            if command == self.command and name not in names and name not in kept:
                self._remove_stale(name)  # _read kept only this command's own names
                del state["files"][name]
        state["files"].update({name: self.command for name in sorted(names)})
        state["running"].pop(self.command, None)
        self._write(state)
        return [name for name in self.candidates() if name not in names]
