# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""DeepCache-like feature reuse for U-Nets (``UNet2DConditionModel``, ``UNet2DModel``), on diffusers hooks.

The U-Net may sit inside a wrapper that names it by ``denoiser_module`` (the LDM and digits U-Nets with their
own class embedders: :func:`~tstitch.caching.base.inner_denoiser`); the blocks are the U-Net's.

On a full step everything runs, and each deep module keeps its output: the down blocks after the first, the mid
block and the up blocks before the last (the last of these outputs is the feature entering the shallowest up
block). On a cached step those modules return what they kept instead of running, so only ``conv_in``, the
shallowest down block, the last up block and the output layers are computed. The step comes from the stitch's
scheduler step counter (never from searching ``scheduler.timesteps``, which repeats timesteps under Heun): the
model's first step of each segment and every ``interval``-th of its steps after it run in full; all calls of
one step (Heun's two) take the same decision.
"""

from __future__ import annotations

from typing import Any

from diffusers.hooks import ModelHook
from torch import nn

from .base import Clock, ModelCache
from .config import DeepCache

__all__ = ["DeepCacheModelCache", "deep_modules"]

_HOOK = "tstitch_deepcache"


def deep_modules(model: nn.Module) -> list[nn.Module]:
    """The modules a cached step skips: down blocks but the first, the mid block, up blocks but the last."""
    down, up = getattr(model, "down_blocks", None), getattr(model, "up_blocks", None)
    if not isinstance(down, nn.ModuleList) or not isinstance(up, nn.ModuleList) or len(down) < 2 or len(up) < 2:
        return []
    mid = getattr(model, "mid_block", None)
    return [*down[1:], *([mid] if mid is not None else []), *up[:-1]]


class _ReuseHook(ModelHook):
    """Runs the module on full steps and keeps its output (per call name); returns the kept output otherwise."""

    _is_stateful = True

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock
        self.outputs: dict[str, Any] = {}

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        name = self.clock.call_name
        if not self.clock.computed and name in self.outputs:
            return self.outputs[name]
        self.outputs[name] = output = self.fn_ref.original_forward(*args, **kwargs)
        return output

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.outputs.clear()
        return module


class DeepCacheModelCache(ModelCache):
    def __init__(self, model: nn.Module, config: DeepCache, clock: Clock):
        super().__init__(model, clock)
        self.interval = config.interval
        for module in deep_modules(self.denoiser):
            self.register(module, _HOOK, _ReuseHook(clock))

    def decide(self) -> bool:
        return self.clock.local_step % self.interval == 0
