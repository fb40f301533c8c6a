# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""diffusers' First Block Cache and TaylorSeer on one model of a stitch, driven by the stitch's step counter.

Both are diffusers' own hooks (``diffusers.hooks``). First Block Cache needs only a cache context per call,
which tstitch sets per model and per call (the DiT pipeline sets none). TaylorSeer's hook counts its own calls;
here a subclass takes the step from the clock instead: the warm-up and the refresh interval count the model's
own evaluations in its segment, and the Taylor expansion is in the real scheduler position, so a model that
starts at step 8 of 20 extrapolates over the steps it really skips.
"""

from __future__ import annotations

import re

import torch
from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.hooks import StateManager
from diffusers.hooks.taylorseer_cache import _TRANSFORMER_BLOCK_IDENTIFIERS, TaylorSeerCacheHook, TaylorSeerState
from torch import nn

from .base import Clock, ModelCache
from .config import FirstBlockCache, TaylorSeerCache

__all__ = ["FirstBlockModelCache", "TaylorSeerModelCache", "transformer_blocks", "attention_modules"]

_TAYLORSEER_HOOK = "tstitch_taylorseer"
#: diffusers' default patterns end in ``attn`` and so miss DiT's ``attn1``: DiT's attention and feed-forward
#: outputs of every block are predicted (as in the TaylorSeer paper's DiT setting).
_PATTERNS = (*_TRANSFORMER_BLOCK_IDENTIFIERS, r"^transformer_blocks\.\d+\.(attn\d+|ff)$")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, as diffusers' cache hooks find them (top-level block lists)."""
    return [block for name, child in model.named_children()
            if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, nn.ModuleList) for block in child]


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs TaylorSeer predicts (diffusers' patterns and DiT's)."""
    return [(name, module) for name, module in model.named_modules()
            if any(re.fullmatch(pattern, name) for pattern in _PATTERNS)]


class FirstBlockModelCache(ModelCache):
    """diffusers' First Block Cache; its head block's decision is written to the clock."""

    def __init__(self, model: nn.Module, config: FirstBlockCache, clock: Clock):
        super().__init__(model, clock)
        apply_first_block_cache(self.denoiser, FirstBlockCacheConfig(threshold=config.threshold))
        blocks = transformer_blocks(self.denoiser)
        head = self.adopt(blocks[0], _FBC_LEADER_BLOCK_HOOK)
        for block in blocks[1:]:
            self.adopt(block, _FBC_BLOCK_HOOK)
        decide = head._should_compute_remaining_blocks

        def recorded(residual: torch.Tensor) -> bool:
            clock.computed = decide(residual)
            return clock.computed

        head._should_compute_remaining_blocks = recorded

    def decide(self) -> bool | None:
        return None  # the head block decides during the call


class _StepTaylorSeerHook(TaylorSeerCacheHook):
    """TaylorSeer with the step taken from the clock rather than counted per call."""

    def __init__(self, clock: Clock, **kwargs):
        super().__init__(**kwargs)
        self.clock = clock

    @torch.compiler.disable
    def _measure_should_compute(self) -> tuple[bool, TaylorSeerState]:
        state: TaylorSeerState = self.state_manager.get_state()
        state.current_step = self.clock.position
        return bool(self.clock.computed), state


class TaylorSeerModelCache(ModelCache):
    def __init__(self, model: nn.Module, config: TaylorSeerCache, clock: Clock):
        super().__init__(model, clock)
        self.config = config
        for _, module in attention_modules(self.denoiser):
            manager = StateManager(TaylorSeerState, init_kwargs={
                "taylor_factors_dtype": torch.float32, "max_order": config.order, "is_inactive": False})
            hook = _StepTaylorSeerHook(clock, cache_interval=config.interval, disable_cache_before_step=config.warmup,
                                       taylor_factors_dtype=torch.float32, state_manager=manager)
            self.register(module, _TAYLORSEER_HOOK, hook)

    def decide(self) -> bool:
        # diffusers' rule, in the model's own evaluations: ``warmup`` computed, then one in ``interval``.
        k, warmup = self.clock.local_position, self.config.warmup
        return k < warmup or (k - warmup - 1) % self.config.interval == 0
