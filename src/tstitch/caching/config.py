# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Cache settings: the ``--cache`` spec strings (``first-block:0.05``, ``taylorseer:3``, ``deepcache:3``).

A spec names a method and its numbers, separated by colons; :func:`parse_cache_spec` turns it into one of the
config dataclasses below, and :func:`parse_cache_option` reads the CLI's repeatable ``--cache [MODEL=]SPEC``
into ``{model index: config}``. Every error a user can make raises ``ValueError`` naming the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "FirstBlockCache", "TaylorSeerCache", "DeepCache", "CacheConfig", "REFUSED", "parse_cache_spec",
    "parse_cache_option", "spec_of", "SPEC_HELP",
]


@dataclass(frozen=True)
class FirstBlockCache:
    """diffusers' First Block Cache on a DiT: skip the blocks after the first while the first block's
    residual changes by less than ``threshold`` (relative mean absolute change) from the last computed call."""

    threshold: float
    method = "first-block"

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"first-block threshold must be a finite number > 0, got {self.threshold!r}")

    def spec(self) -> str:
        return f"first-block:{self.threshold:g}"


@dataclass(frozen=True)
class TaylorSeerCache:
    """diffusers' TaylorSeer on a DiT's attention blocks: after ``warmup`` computed steps of the model, compute
    one step in ``interval`` and predict the others by a Taylor expansion of order ``order`` in the real step."""

    interval: int
    warmup: int = 3
    order: int = 1
    method = "taylorseer"

    def __post_init__(self) -> None:
        for name, low in (("interval", 1), ("warmup", 1), ("order", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"taylorseer {name} must be a whole number >= {low}, got {value!r}")

    def spec(self) -> str:
        return f"taylorseer:{self.interval}:{self.warmup}:{self.order}"


@dataclass(frozen=True)
class DeepCache:
    """DeepCache-like reuse on a U-Net: every ``interval``-th step of the model runs in full; the steps between
    recompute only the shallowest down and up blocks and reuse the deeper features of the last full step."""

    interval: int
    method = "deepcache"

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"deepcache interval must be a whole number >= 1, got {self.interval!r}")

    def spec(self) -> str:
        return f"deepcache:{self.interval}"


CacheConfig = FirstBlockCache | TaylorSeerCache | DeepCache

#: Methods that cannot work on a stitched model, with the reason given when one is asked for.
REFUSED = {
    "magcache": "MagCache calibrates one magnitude ratio per step over every step of the model and counts its own "
                "calls; a stitched model runs only some of the steps, so its ratios would belong to other steps",
    "fastercache": "FasterCache assumes an [unconditional, conditional] batch, which DiT's pipeline and tstitch's "
                   "sampler give in the other order, and it extrapolates from every step of the model",
    "pab": "pyramid attention broadcast needs no step from tstitch: apply diffusers' apply_pyramid_attention_broadcast "
           "to the model yourself (it is tested to work on a stitched large model)",
}

SPEC_HELP = ("first-block:THRESHOLD (DiT), taylorseer:INTERVAL[:WARMUP[:ORDER]] (DiT), deepcache:INTERVAL (U-Net), "
             "or none")


def _number(text: str, kind: type, spec: str, what: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"cache spec {spec!r}: {what} must be {'a whole number' if kind is int else 'a number'}, "
                         f"got {text!r}") from None


def parse_cache_spec(spec: str) -> CacheConfig | None:
    """The config of a spec string (``None`` for ``"none"``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"cache spec must be a non-empty string ({SPEC_HELP}), got {spec!r}")
    name, *args = [part.strip() for part in spec.strip().lower().split(":")]
    if name == "none" and not args:
        return None
    if name in REFUSED:
        raise ValueError(f"cache method {name!r} is refused with stitching: {REFUSED[name]}")
    try:
        if name == "first-block" and len(args) == 1:
            return FirstBlockCache(_number(args[0], float, spec, "the threshold"))
        if name == "taylorseer" and 1 <= len(args) <= 3:
            names = ("interval", "warmup", "order")
            return TaylorSeerCache(**{k: _number(v, int, spec, k) for k, v in zip(names, args)})
        if name == "deepcache" and len(args) == 1:
            return DeepCache(_number(args[0], int, spec, "the interval"))
    except ValueError as error:
        if str(error).startswith("cache spec"):
            raise
        raise ValueError(f"cache spec {spec!r}: {error}") from None
    raise ValueError(f"cache spec {spec!r} is not one of: {SPEC_HELP}")


def spec_of(config: CacheConfig | None) -> str:
    """The spec string of a config (``"none"`` for ``None``); ``parse_cache_spec`` reads it back."""
    return "none" if config is None else config.spec()


def config_dict(config: CacheConfig) -> dict:
    return {"method": config.method, **asdict(config)}


def parse_cache_option(values: Sequence[str] | None, model_names: Sequence[str]) -> dict[int, CacheConfig]:
    """``{model index: config}`` from the CLI's ``--cache`` values.

    ``SPEC`` applies to the large model (the last of ``model_names``); ``MODEL=SPEC`` to the model of that
    name or index; ``none`` (alone or as ``MODEL=none``) switches caching off there. A model given twice is an error.
    """
    chosen: dict[int, CacheConfig | None] = {}
    for value in values or ():
        target, spec = value.split("=", 1) if "=" in value else (None, value)
        if target is None:
            index = len(model_names) - 1
        elif target.strip().lstrip("-").isdigit():
            index = int(target)
            if not -len(model_names) <= index < len(model_names):
                raise ValueError(f"--cache {value!r}: model index {index} is out of range for {len(model_names)} "
                                 f"models ({', '.join(model_names)})")
            index %= len(model_names)
        elif target.strip() in model_names:
            index = list(model_names).index(target.strip())
        else:
            raise ValueError(f"--cache {value!r}: no model {target!r} among {', '.join(model_names)} "
                             "(give a name or an index of --models)")
        if index in chosen:
            raise ValueError(f"--cache {value!r}: model {model_names[index]} was given a cache twice")
        chosen[index] = parse_cache_spec(spec)
    return {index: config for index, config in chosen.items() if config is not None}
