# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Small shared helpers: atomic writes (all or nothing with :func:`staged_writes`), JSON without NaN, CSV,
and figures. What a command may write or delete in its output folder is :mod:`tstitch.outputs`.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["atomic_write", "staged_writes", "write_json", "write_csv", "ensure_writable_dir", "finite_json",
           "file_mode", "pyplot", "save_figure"]

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


#: The files that :func:`atomic_write` left under their temporary names inside :func:`staged_writes`.
_STAGED: contextvars.ContextVar[list[tuple[str, Path]] | None] = contextvars.ContextVar("staged", default=None)


@contextlib.contextmanager
def staged_writes() -> Iterator[None]:
    """All or nothing for a command's files: inside the block :func:`atomic_write` leaves every file under its
    temporary name; when the block ends without an error they are all renamed into place (a rename needs no
    space), and otherwise all removed. So a full disk half-way through a rerun leaves the earlier run's files
    exactly as they were. Nothing written inside the block may be read back before it ends."""
    staged: list[tuple[str, Path]] = []
    token = _STAGED.set(staged)
    try:
        try:
            yield
        finally:
            _STAGED.reset(token)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:  # an error in the block (or in a rename): what was not renamed is removed
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename the temporary file to ``path``: readers never see half a file
    (a full disk or an error in ``writer`` leaves ``path`` as it was, and no temporary file).
    The file gets the umask's mode (a temporary file alone would be 0600). A symbolic link at ``path`` is
    refused (``FileExistsError``): it is neither written through nor replaced. Inside :func:`staged_writes`
    the rename waits for the end of the block."""
    path = Path(path)
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link; tstitch neither writes through nor replaces links: "
                              "remove it, or choose another output folder")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    staged = _STAGED.get()
    try:
        writer(Path(tmp))
        os.chmod(tmp, file_mode())
        if staged is None:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if staged is not None:
        staged.append((tmp, path))  # renamed, or removed, when the block of staged_writes ends
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


# -- figures -------------------------------------------------------------------------------------------------


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))
    finally:
        plt.close(fig)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
