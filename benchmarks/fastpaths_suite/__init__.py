# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The fast-path comparison behind ``benchmarks/fastpaths.py`` (application code, not part of the library):
:mod:`.compare` times the variants and checks each run against the plan, :mod:`.quality` is the digits quality
guard, :mod:`.report` writes the JSON, the figure and the markdown tables, :mod:`.suites` names the settings and
runs a suite.

``benchmarks/fastpaths.py`` imports it from the folder it lives in; the tests put ``benchmarks/`` on
``sys.path`` (``tests/conftest.py``)."""
