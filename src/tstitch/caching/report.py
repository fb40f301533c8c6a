# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The cached runs of ``tstitch bench``: time per image and the ratio to the same stitch without caches."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from .config import CacheConfig

__all__ = ["cache_rows", "cache_label"]


def cache_label(cache: Mapping[int, CacheConfig], model_names: Sequence[str]) -> str:
    """``large first-block:0.05, small deepcache:2``: what is cached where."""
    return ", ".join(f"{model_names[index]} {config.spec()}" for index, config in sorted(cache.items()))


def cache_rows(cache: Mapping[int, CacheConfig], model_names: Sequence[str], fractions: Sequence[float],
               seconds: Mapping[str, list[float]], num_images: int) -> dict[str, Any]:
    """Per fraction ``r``: ``cached@r``'s seconds per image and its per-repetition ratio to ``stitched@r``."""
    from ..bench.report import paired

    rows = []
    for r in fractions:
        mine, base = seconds.get(f"cached@{r:g}", []), seconds.get(f"stitched@{r:g}", [])
        count = min(len(mine), len(base))
        if count:
            rows.append({"fraction": r, "seconds_per_image": statistics.median(mine) / num_images,
                         "ratio_vs_stitched": paired(mine[:count], base[:count])})
    return {"label": cache_label(cache, model_names), "caches": {model_names[i]: c.spec() for i, c in cache.items()},
            "rows": rows}
