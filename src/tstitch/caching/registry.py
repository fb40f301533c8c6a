# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The cache methods tstitch applies per model: one row each (what it needs of the model, how it is applied).

A method looks at the denoiser inside the model (:func:`~tstitch.caching.base.inner_denoiser`: the U-Net of a
wrapper that names it by ``denoiser_module``, else the model itself), never at the model's class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .base import Clock, ModelCache, inner_denoiser
from .config import DeepCache, FirstBlockCache, TaylorSeerCache
from .dit import FirstBlockModelCache, TaylorSeerModelCache, attention_modules, transformer_blocks
from .unet import DeepCacheModelCache, deep_modules

__all__ = ["CacheMethod", "CACHE_METHODS", "method_of"]


@dataclass(frozen=True)
class CacheMethod:
    name: str
    config_type: type
    example: str  # a spec string, for the help and the tests
    needs: str  # what the model must have, for the error message
    fits: Callable[[nn.Module], bool]  # of the model as the stitch calls it (looking at its inner denoiser)
    build: Callable[[nn.Module, object, Clock], ModelCache]


CACHE_METHODS: dict[str, CacheMethod] = {row.name: row for row in (
    CacheMethod("first-block", FirstBlockCache, "first-block:0.05", "a transformer with two or more blocks (DiT)",
                lambda model: len(transformer_blocks(inner_denoiser(model))) >= 2, FirstBlockModelCache),
    CacheMethod("taylorseer", TaylorSeerCache, "taylorseer:2:2:1", "a transformer with attention blocks (DiT)",
                lambda model: bool(attention_modules(inner_denoiser(model))), TaylorSeerModelCache),
    CacheMethod("deepcache", DeepCache, "deepcache:2", "a U-Net with two or more down and up blocks",
                lambda model: bool(deep_modules(inner_denoiser(model))), DeepCacheModelCache),
)}


def method_of(config: object) -> CacheMethod:
    for row in CACHE_METHODS.values():
        if isinstance(config, row.config_type):
            return row
    types = ", ".join(row.config_type.__name__ for row in CACHE_METHODS.values())
    raise ValueError(f"cache must be a cache config ({types}) or a spec string, got {config!r}")
