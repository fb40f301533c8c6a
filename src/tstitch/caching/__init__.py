# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Feature caching composed with stitching: a cache per model of a stitch, reset per run, driven by its steps.

    import tstitch
    from tstitch.caching import enable_cache, get_cache_record
    tstitch.stitch(pipe, small, 0.4)
    enable_cache(pipe, "first-block:0.05")                 # the large model
    enable_cache(pipe, {0: "taylorseer:2", 1: "first-block:0.05"})  # each model its own
    pipe(...); get_cache_record(pipe).summary()

Methods: :data:`CACHE_METHODS` (diffusers' First Block Cache and TaylorSeer for DiTs, a DeepCache-like reuse for
U-Nets); methods that cannot work on a stitched model are refused (:data:`REFUSED`).
"""

from .apply import (
    CacheCall,
    CacheController,
    CacheRecord,
    cache_settings,
    cached,
    disable_cache,
    enable_cache,
    get_cache_record,
)
from .config import (
    REFUSED,
    SPEC_HELP,
    CacheConfig,
    DeepCache,
    FirstBlockCache,
    TaylorSeerCache,
    parse_cache_option,
    parse_cache_spec,
    spec_of,
)
from .registry import CACHE_METHODS, CacheMethod

__all__ = [
    "enable_cache", "disable_cache", "cached", "get_cache_record", "CacheController", "CacheRecord", "CacheCall",
    "FirstBlockCache", "TaylorSeerCache", "DeepCache", "CacheConfig", "parse_cache_spec", "parse_cache_option",
    "spec_of", "cache_settings", "REFUSED", "SPEC_HELP", "CACHE_METHODS", "CacheMethod",
]
