# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Experiments built on the sampling loop: ``tstitch sample`` (generate), sweeps and plots (study, plots),
the demo, and the distributed evaluation."""
