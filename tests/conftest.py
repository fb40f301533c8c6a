# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Suite-wide settings: offline, and one CPU thread (tiny models gain nothing from threads, and the
default pool oversubscribes a shared 2-core machine). At the end of the run: no process the tests started may
still be alive (tests start processes through ``processes.py``, which kills them whatever happens)."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import psutil  # installed with accelerate (the dev extra)
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
# benchmarks/fastpaths_suite (the fast-path comparison, application code outside the library) for test_bench.py
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

#: prctl(2) option: orphaned descendants are reparented to this process rather than to init.
PR_SET_CHILD_SUBREAPER = 36

#: How long the end-of-run check waits for children that are on their way out (a browser closing its tabs).
GRACE_SECONDS = 10.0


def pytest_configure(config: pytest.Config) -> None:
    """On Linux, make the test process a subreaper: a grandchild whose parent died (Chromium after its
    chromedriver, torchrun's workers after torchrun) becomes this process's child, so the check at the end of
    the run sees it instead of it living on under init."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def live_children() -> list[psutil.Process]:
    """The processes below this one that are still running (zombies are reaped on the way)."""
    children = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(children, timeout=0)  # reaps the zombies among this process's children
    return alive


def describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200] or process.name()}"
    except psutil.Error:
        return f"pid {process.pid}"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if a process started by the tests outlives them; kill what is left."""
    alive = live_children()
    if alive:
        _, alive = psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    if not alive:
        return
    names = [describe(process) for process in alive]
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = (f"{len(names)} process(es) started by the tests were still running at the end of the run "
               "(killed now); start processes with tests/processes.py:\n  " + "\n  ".join(names))
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(message, red=True)
    else:
        sys.stderr.write(message + "\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
