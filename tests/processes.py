# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Child processes for the tests: every test that starts a process goes through :func:`child` (or
:func:`run`, its ``subprocess.run``).

The child starts in a session and process group of its own, with SIGINT at its default action: a test run
started with SIGINT ignored (``nohup make test &``, a background job, some CI runners) would otherwise hand
SIG_IGN down, and a test that sends the child a SIGINT would wait for nothing. Whatever happens in the test,
the child's group and every process below it (``torchrun``'s workers start sessions of their own) are killed
and the child is reaped on the way out; ``conftest.py`` checks at the end of the run that nothing is left.
:func:`deadline` bounds work done in the test's own process instead (an argument check that opens a FIFO).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import psutil  # installed with accelerate (the dev extra)


def default_sigint() -> None:
    """Runs in the child between fork and exec: SIGINT back to its default (an ignored signal stays ignored
    across exec, a handled one becomes the default)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process``'s process group and every descendant of ``process`` still running, then reap it."""
    descendants = []
    if process.poll() is None:
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(process.pid).children(recursive=True)
    # the group outlives its leader while a member lives: this also reaches what the child left running
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for descendant in descendants:
        with contextlib.suppress(psutil.Error):
            descendant.kill()
    process.wait()
    psutil.wait_procs(descendants, timeout=10)


@contextlib.contextmanager
def child(argv: Sequence[str], **popen_kwargs: Any) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(argv, **popen_kwargs)`` in a session of its own with SIGINT at its default; on the
    way out (a failed assertion, a timeout, Ctrl-C) its whole tree is killed and it is reaped."""
    process = subprocess.Popen(list(argv), start_new_session=True, preexec_fn=default_sigint, **popen_kwargs)
    try:
        yield process
    finally:
        kill_tree(process)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def run(argv: Sequence[str], *, timeout: float, **popen_kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, capture_output=True, text=True, timeout=timeout)`` through :func:`child`:
    a run past ``timeout`` raises ``subprocess.TimeoutExpired`` with its whole tree killed."""
    with child(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs) as process:
        stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)


@contextlib.contextmanager
def deadline(seconds: int, what: str = "still running") -> Iterator[None]:
    """Fail instead of hanging (a FIFO opened for reading waits for a writer forever): ``TimeoutError`` after
    ``seconds``, saying ``what`` ran too long."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{what} after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
