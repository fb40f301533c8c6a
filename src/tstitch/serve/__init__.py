# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch serve``: a web page to try stitching (Gradio, the ``web`` extra).

:mod:`tstitch.serve.request` checks what the page is asked (no torch), :mod:`tstitch.serve.runs` times the
runs, :mod:`tstitch.serve.state` holds the server's models, plans and running request (all three without
Gradio), :mod:`tstitch.serve.views` draws the results (tiles, table, frontier) and :mod:`tstitch.serve.app`
is the page.
"""

from .request import PageRequest, parse_request
from .runs import PageResult, PageRun, run_request
from .state import ServeState, preset_availability

__all__ = ["PageRequest", "PageResult", "PageRun", "ServeState", "parse_request", "preset_availability",
           "run_request", "start", "make_state", "build_app"]


def __getattr__(name: str):
    if name in ("start", "make_state", "build_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
