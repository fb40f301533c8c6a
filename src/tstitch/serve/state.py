# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The ``tstitch serve`` server's state, without the page: which model sets can be loaded (and why the others
cannot), the ``tstitch tune`` plans offered, the models loaded so far, and the request running on its own
thread (:class:`RequestJob`). :mod:`tstitch.serve.request` checks a request and :mod:`tstitch.serve.runs`
times it; :mod:`tstitch.serve.app` puts it all on a page."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tstitch.models.availability import checkpoint_dirs, is_available
from tstitch.models.hub import offline_mode
from tstitch.models.loaded import LoadedModels
from tstitch.models.loading import load_models, load_preset
from tstitch.models.presets import PRESETS
from tstitch.plan import Plan
from tstitch.planfile import load_plan
from tstitch.tune.cost import CostModel

from .request import MAX_WORK, PageRequest
from .runs import REPETITIONS, PageResult, Progress, run_request, step_costs

logger = logging.getLogger(__name__)

__all__ = ["CUSTOM", "DEFAULT_PRESET", "EMBEDDED_SETS", "FRONTIER_FILES", "RequestJob", "ServeState",
           "find_tune_plans", "preset_availability"]

DEFAULT_PRESET = "digits"
#: Where the page looks for a measured frontier, first found wins: a ``tstitch tune`` result, then the demo's.
FRONTIER_FILES = ("outputs/tune/frontier.json", "outputs/demo/results.json")
#: Model sets the page offers besides the presets: embedded models, always at hand (no network, no files).
EMBEDDED_SETS = {"digits-unet": ("digits-unet-s", "digits-unet")}
CUSTOM = "custom"  # the model-choice name of the models given with ``tstitch serve --model``
#: The longest a request waits, after its first round, for the page to show the tiles (seconds).
PAUSE_LIMIT = 60.0
#: Where :func:`find_tune_plans` looks, below the server's working directory, and what it skips.
PLAN_SEARCH_DEPTH = 4
_SKIPPED_FOLDERS = {"node_modules", "__pycache__", "site-packages"}


# -- which presets can be loaded ----------------------------------------------------------------------------


def _missing_reason(source: Any, dirs: list[Path], offline: bool) -> str | None:
    """A short reason for the page (the loaders' own messages say every way to get the file)."""
    if is_available(source, dirs, offline):
        return None
    ways = []
    if source.files:
        ways.append(f"no file {' / '.join(source.files)} in {', '.join(str(d) for d in dirs)}")
    if source.hub:
        ways.append(f"{source.hub[0]} is not in the local Hugging Face cache and the hub is off")
    return f"{source.label}: {'; '.join(ways)}"


def preset_availability(checkpoint_dir: str | os.PathLike | None = None,
                        offline: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """The presets whose weights are at hand, and for each other one the reason it is not.

    Files are looked for where :func:`tstitch.load_preset` looks (``checkpoint_dir``,
    ``$TSTITCH_CHECKPOINT_DIR``, ``./pretrained_models``); hub models count when cached, or when the hub
    may be used (``offline`` ``None`` follows ``HF_HUB_OFFLINE``).
    """
    dirs, offline = checkpoint_dirs(checkpoint_dir), offline_mode(offline)
    available, missing = [], {}
    for name, preset in PRESETS.items():
        sources = [*preset.models, *([preset.vae] if preset.vae is not None else [])]
        reasons = [r for r in (_missing_reason(s, dirs, offline) for s in sources) if r]
        if reasons:
            missing[name] = "; ".join(reasons)
        else:
            available.append(name)
    return available, missing


# -- plans from tstitch tune --------------------------------------------------------------------------------


def find_tune_plans(root: str | os.PathLike, depth: int = PLAN_SEARCH_DEPTH) -> dict[str, Plan]:
    """The plans of the ``tstitch tune --out`` folders below ``root`` (a ``plan.json`` beside a
    ``frontier.json``), at most ``depth`` folders down, keyed by their folder relative to ``root``. Hidden
    folders and links are not entered; a plan that cannot be read is left out with one warning."""
    root = Path(root)
    found: dict[str, Plan] = {}
    for folder, names, files in os.walk(root):
        here = Path(folder)
        level = len(here.relative_to(root).parts)
        names[:] = sorted(n for n in names if not n.startswith(".") and n not in _SKIPPED_FOLDERS
                          and level < depth)
        if "plan.json" in files and "frontier.json" in files and not (here / "plan.json").is_symlink():
            try:
                found[here.relative_to(root).as_posix()] = load_plan(here / "plan.json")
            except (OSError, ValueError) as error:
                logger.warning("not offering the plan in %s: %s", here, error)
    return found


# -- the request running on its own thread ------------------------------------------------------------------


class RequestJob:
    """One request sampled on a thread of its own, so that the page can show progress, pause after the first
    round (to draw the tiles while nothing is being timed) and cancel it: :meth:`cancel` stops the sampling
    before its next denoising step. Holds ``state.lock`` while sampling."""

    def __init__(self, state: ServeState, loaded: LoadedModels, request: PageRequest, *,
                 repetitions: int = REPETITIONS, pause_after_first_round: bool = True):
        self.state, self.loaded, self.request, self.repetitions = state, loaded, request, repetitions
        self.pause = pause_after_first_round
        self.cancelled = threading.Event()
        self.resumed = threading.Event()
        self.progress: Progress | None = None
        self.status = "waiting for the models"
        self.first_round: PageResult | None = None
        self.result: PageResult | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="tstitch-serve-request", daemon=True)

    def start(self) -> RequestJob:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and self._thread.ident is not None

    def cancel(self) -> None:
        self.cancelled.set()
        self.resumed.set()

    def resume(self) -> None:
        """The page has shown the first round: timing goes on."""
        self.resumed.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _on_progress(self, progress: Progress) -> None:
        self.progress = progress
        self.status = str(progress)

    def _on_first_round(self, result: PageResult) -> None:
        self.first_round = result
        if self.pause:  # a page that never answers does not keep the models locked
            self.resumed.wait(PAUSE_LIMIT)

    def _run(self) -> None:
        begin = time.perf_counter()
        try:
            with self.state.lock:
                if self.cancelled.is_set():
                    return
                self.status = "measuring per-step costs"
                costs = self.state.step_costs(self.request.model, self.loaded, self.request)
                self.status = "warming up"
                self.result = run_request(self.loaded, self.request, repetitions=self.repetitions,
                                          cancel=self.cancelled, on_progress=self._on_progress,
                                          on_first_round=self._on_first_round, costs=costs)
        except BaseException as error:  # handed to the page, which reports it
            self.error = error
        finally:
            self.seconds = time.perf_counter() - begin


# -- the server's state -------------------------------------------------------------------------------------


@dataclass
class ServeState:
    """The models the page can use, loaded on first use and kept, the lock that keeps one request at a time
    on them (the page also queues its generate event with a concurrency limit of 1), the tune plans offered
    and the per-step costs measured so far."""

    available: list[str]
    missing: dict[str, str] = field(default_factory=dict)
    custom_models: list[str] | None = None
    device: str = "cpu"
    checkpoint_dir: str | None = None
    frontier_files: tuple[str, ...] = FRONTIER_FILES
    #: The ``tstitch tune`` plans offered, by folder (:func:`find_tune_plans`); the page offers no other path.
    tune_plans: dict[str, Plan] = field(default_factory=dict)
    max_work: int = MAX_WORK
    repetitions: int = REPETITIONS
    loaded: dict[str, LoadedModels] = field(default_factory=dict)
    costs: dict[tuple[str, int, float], CostModel] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def choices(self) -> list[str]:
        return ([CUSTOM] if self.custom_models else []) + list(self.available) + list(EMBEDDED_SETS)

    def models(self, name: str) -> LoadedModels:
        """The loaded models of choice ``name`` (a preset, an embedded set or ``custom``); ``ValueError`` for
        one not offered."""
        if name not in self.choices:
            reason = f": {self.missing[name]}" if name in self.missing else ""
            raise ValueError(f"models: {str(name)[:80]!r} is not offered{reason}; offered: {', '.join(self.choices)}")
        if name not in self.loaded:
            logger.info("loading %s", name)
            if name == CUSTOM:
                self.loaded[name] = load_models(self.custom_models, device=self.device)
            elif name in EMBEDDED_SETS:
                self.loaded[name] = load_models(list(EMBEDDED_SETS[name]), device=self.device)
            else:
                self.loaded[name] = load_preset(name, device=self.device, checkpoint_dir=self.checkpoint_dir)
        return self.loaded[name]

    def plans_for(self, num_models: int) -> list[str]:
        """The tune folders whose plan is for ``num_models`` models."""
        return [folder for folder, plan in self.tune_plans.items() if plan.num_models == num_models]

    def step_costs(self, name: str, loaded: LoadedModels, request: PageRequest) -> CostModel | None:
        """:func:`step_costs`, measured once per model choice, batch size and guidance."""
        key = (name, request.num_images, request.guidance)
        if key not in self.costs:
            found = step_costs(loaded, request)
            if found is None:
                return None
            self.costs[key] = found
        return self.costs[key]
