# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Caching per model of a stitch: applied to that model alone, reset at every run, told the real scheduler step.

:func:`enable_cache` puts a :class:`CacheController` on a stitched pipeline or a :class:`StitchedDenoiser`. It
rides on the denoiser's ``before_call`` hook: before each model call it asks the stitch which model runs at
which scheduler step, resets every cache at the first call of a run, restarts a model's cache when another
model ran in between (its cached features would be from a step it did not see), sets the diffusers cache
context on that model alone (one state per call name), lets the model's cache decide, and records the call in
a :class:`CacheRecord` (which steps of which model were computed and which reused).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffusers.hooks import HookRegistry
from diffusers.hooks.hooks import CacheContext, _set_cache_context
from torch import nn

from ..stitcher import StitchedDenoiser, get_stitch
from .base import Clock, ModelCache
from .config import CacheConfig, parse_cache_spec
from .registry import method_of

__all__ = ["CacheController", "CacheRecord", "CacheCall", "enable_cache", "disable_cache", "cached",
           "get_cache_record", "resolve_caches", "cache_settings"]

logger = logging.getLogger(__name__)
_NAME = "cache"  # the controller's key in StitchedDenoiser.extensions

CacheSpec = CacheConfig | str | None


@dataclass
class CacheCall:
    step: int
    position: int
    model_index: int
    computed: bool | None  # None: the model has no cache (it always computes)


@dataclass
class CacheRecord:
    """One entry per model call of the last run: its scheduler step, position, model, and whether it computed."""

    model_names: list[str]
    num_steps: int = 0
    calls: list[CacheCall] = field(default_factory=list)

    def steps(self, model_index: int, computed: bool) -> list[int]:
        """The steps of ``model_index`` whose calls all computed (``computed``) or any reused (not ``computed``)."""
        reused = {c.step for c in self.calls if c.model_index == model_index and c.computed is False}
        mine = sorted({c.step for c in self.calls if c.model_index == model_index})
        return [s for s in mine if (s not in reused) == computed]

    def summary(self) -> list[str]:
        """Per model: ``name: N computed, M reused`` (calls)."""
        lines = []
        for i, name in enumerate(self.model_names):
            mine = [c for c in self.calls if c.model_index == i]
            if mine:
                reused = sum(c.computed is False for c in mine)
                lines.append(f"{name}: {len(mine) - reused} computed, {reused} reused")
        return lines


def resolve_caches(cache: Mapping[int | str, CacheSpec] | CacheSpec, model_names: list[str]) -> dict[int, CacheConfig]:
    """``{model index: config}`` from a config or spec (for the large model) or a mapping by index or name."""
    if not isinstance(cache, Mapping):
        cache = {len(model_names) - 1: cache}
    resolved = {}
    for key, spec in cache.items():
        if isinstance(key, str) and key in model_names:
            index = model_names.index(key)
        elif isinstance(key, int) and not isinstance(key, bool) and -len(model_names) <= key < len(model_names):
            index = key % len(model_names)
        else:
            raise ValueError(f"cache: no model {key!r} among {', '.join(model_names)} (give a name or an index)")
        config = parse_cache_spec(spec) if isinstance(spec, str) else spec
        if config is not None:
            method_of(config)  # a clear error for anything that is not a config
            resolved[index] = config
    return resolved


def cache_settings(cache: Mapping[int | str, CacheSpec] | CacheSpec, model_names: list[str],
                   official: bool = False) -> dict[str, str]:
    """``{model name: spec}`` of a run's caches (for its settings and summary), checked before any work."""
    configs = resolve_caches(cache, model_names)
    if configs and official:
        raise ValueError("--cache applies to the bare loop and to pipelines; the published DiT sampler (--mode "
                         "official) runs without caches: use --mode diffusers")
    return {model_names[index]: config.spec() for index, config in sorted(configs.items())}


class CacheController:
    """The caches of one stitched denoiser's models (see the module docstring); :meth:`remove` takes them off."""

    def __init__(self, denoiser: StitchedDenoiser, configs: Mapping[int, CacheConfig]):
        models = list(denoiser.models)
        for index, config in configs.items():  # every check before any hook is placed
            row = method_of(config)
            if not row.fits(models[index]):
                raise ValueError(f"cache {config.spec()!r} for model {denoiser.record.model_names[index]} "
                                 f"({type(models[index]).__name__}) needs {row.needs}")
        self.denoiser = denoiser
        self.clocks = {index: Clock() for index in configs}
        self.caches: dict[int, ModelCache] = {}
        try:
            for index, config in configs.items():
                self.caches[index] = method_of(config).build(models[index], config, self.clocks[index])
                HookRegistry.check_if_exists_or_initialize(models[index]).invalidate_child_registries_cache()
        except BaseException:
            self._take_off()
            raise
        self.record = CacheRecord(list(denoiser.record.model_names))
        self._pending: list[tuple[CacheCall, Clock]] = []
        self._last: dict[int, tuple[int, int]] = {}  # model -> (step, position) of its last call in this run
        denoiser.before_call.append(self._before_call)

    def _before_call(self, index: int) -> None:
        self.finished_record()
        denoiser = self.denoiser
        _, step, position = denoiser.current_model_index()
        if not denoiser.record.calls:  # the first call of a run
            for cache in self.caches.values():
                cache.reset()
            self._last.clear()
            self.record.calls.clear()
            self.record.num_steps = denoiser.record.num_steps
        cache = self.caches.get(index)
        if cache is None:
            self._last[index] = (step, position)
            self.record.calls.append(CacheCall(step, position, index, None))
            return
        clock = self.clocks[index]
        last = self._last.get(index)
        if last is None or step > last[0] + 1:  # a new segment of this model's steps
            if last is not None:
                logger.debug("model %d resumes at step %d after step %d: its cache restarts", index, step, last[0])
                cache.reset()
            clock.local_step = clock.local_position = 0
            clock.call_name = "call0"
        elif position != last[1]:
            clock.local_step += step - last[0]
            clock.local_position += 1
            clock.call_name = "call0"
        else:  # another call at the same position (one per guidance branch)
            clock.call_name = f"call{int(clock.call_name[4:]) + 1}"
        clock.step, clock.position = step, position
        self._last[index] = (step, position)
        num_steps = denoiser.record.num_steps  # set by current_model_index at the run's first call
        _set_cache_context(denoiser.models[index], CacheContext(clock.call_name, step_index=step,
                                                                num_inference_steps=num_steps))
        clock.computed = cache.decide()
        self.record.calls.append(CacheCall(step, position, index, clock.computed))
        if clock.computed is None:  # decided during the call (First Block Cache): read from the clock later
            self._pending.append((self.record.calls[-1], clock))

    def finished_record(self) -> CacheRecord:
        """The record, with the decisions made during the calls filled in."""
        for call, clock in self._pending:
            call.computed = clock.computed if clock.computed is not None else True
        self._pending.clear()
        return self.record

    def _take_off(self) -> None:
        for index, cache in self.caches.items():
            cache.remove()
            _set_cache_context(self.denoiser.models[index], None)
        self.caches.clear()

    def remove(self) -> None:
        self.finished_record()
        self._take_off()
        if self._before_call in self.denoiser.before_call:
            self.denoiser.before_call.remove(self._before_call)


def enable_cache(pipe_or_denoiser: Any, cache: Mapping[int | str, CacheSpec] | CacheSpec) -> CacheController | None:
    """Cache one or more models of a stitch (a stitched pipeline or a :class:`StitchedDenoiser`).

    ``cache``: a config or spec string (``"first-block:0.05"``) for the large model, or ``{model: config or spec}``
    with models by index in the stitch (smallest first, the large model last; negative counts from the end) or
    name. Replaces the stitch's caches; ``None``/``"none"`` everywhere leaves it uncached. Raises ``ValueError``
    before changing anything for a bad spec or a method the model does not fit.
    """
    denoiser = get_stitch(pipe_or_denoiser)
    configs = resolve_caches(cache, list(denoiser.record.model_names))
    disable_cache(denoiser)
    if not configs:
        return None
    controller = CacheController(denoiser, configs)
    denoiser.extensions[_NAME] = controller
    return controller


def disable_cache(pipe_or_denoiser: Any) -> None:
    """Take every cache off the stitch's models (a no-op when none is on, or when nothing is stitched)."""
    try:
        denoiser = get_stitch(pipe_or_denoiser)
    except ValueError:
        return
    controller = denoiser.extensions.pop(_NAME, None)
    if controller is not None:
        controller.remove()


def get_cache_record(pipe_or_denoiser: Any) -> CacheRecord:
    """The :class:`CacheRecord` of the last run of a cached stitch."""
    controller = get_stitch(pipe_or_denoiser).extensions.get(_NAME)
    if controller is None:
        raise ValueError(f"{type(pipe_or_denoiser).__name__} has no cache: call tstitch.caching.enable_cache first")
    return controller.finished_record()


@contextlib.contextmanager
def cached(denoiser: StitchedDenoiser | nn.Module, cache: Mapping[int | str, CacheSpec] | CacheSpec
           ) -> Iterator[StitchedDenoiser]:
    """Within the block the stitch is cached as :func:`enable_cache` says; the caches come off after it."""
    enable_cache(denoiser, cache)
    try:
        yield get_stitch(denoiser)
    finally:
        disable_cache(denoiser)
