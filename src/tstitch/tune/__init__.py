# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch tune``: the fastest per-step plan that keeps the large model's quality, with statistics.

* :mod:`.cost`: the measured cost model (seconds per step of each model on this device).
* :mod:`.quality`: the cheap paired signal (distance to the large model's own samples in feature space).
* :mod:`.engine`: samples many plans from one noise, sharing common prefixes.
* :mod:`.search`: greedy cost descent over per-step plans; the frontier.
* :mod:`.stats`: Frechet distances, paired bootstrap intervals of FID ratios, Spearman.
* :mod:`.verify`: held-out verification with intervals and measured speed-ups.
"""

from .api import check_arguments, tune
from .cost import CostModel, measure_step_costs
from .plans import as_plan, label, short_names
from .quality import PairedSignal
from .search import SearchResult, greedy_search
from .stats import RatioEstimate, interval_from_sets, jackknife_fid_ratio, paired_fid_ratio, spearman
from .verify import verify_plans
from .workload import Workload, digits_workload

__all__ = [
    "tune", "check_arguments", "CostModel", "measure_step_costs", "as_plan", "label", "short_names", "PairedSignal",
    "SearchResult", "greedy_search", "RatioEstimate", "interval_from_sets", "jackknife_fid_ratio", "paired_fid_ratio",
    "spearman",
    "verify_plans", "Workload", "digits_workload",
]
