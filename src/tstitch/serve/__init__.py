# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch serve``: a web page to try stitching (Gradio, the ``web`` extra).

:mod:`tstitch.serve.core` computes what the page shows (checked requests, timed runs; no Gradio),
:mod:`tstitch.serve.views` draws it (tiles, table, frontier) and :mod:`tstitch.serve.app` is the page.
"""

from .core import PageRequest, PageResult, PageRun, ServeState, parse_request, preset_availability, run_request

__all__ = ["PageRequest", "PageResult", "PageRun", "ServeState", "parse_request", "preset_availability",
           "run_request", "start", "make_state", "build_app"]


def __getattr__(name: str):
    if name in ("start", "make_state", "build_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
