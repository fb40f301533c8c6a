# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Imported by the test modules that use hypothesis: its caches (the ``.hypothesis`` folder it would make in the
working tree, even without an example database) go to a temporary folder, removed when the tests end."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

HOME = Path(tempfile.mkdtemp(prefix="tstitch-hypothesis-"))
set_hypothesis_home_dir(HOME)
atexit.register(shutil.rmtree, HOME, ignore_errors=True)
