# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What every per-model cache shares: the clock it reads, the hooks it registers (diffusers' HookRegistry), and
the module it acts on (:func:`inner_denoiser`)."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

__all__ = ["Clock", "ModelCache", "DENOISER_MODULE", "inner_denoiser"]

#: The attribute by which a model that wraps its denoiser names it: the LDM and digits U-Nets are a
#: ``UNet2DConditionModel`` plus their own class embedder (``ClassConditionedUNet``), whose ``denoiser_module``
#: is the U-Net. Each model family's row says how to reach its denoiser (``Family.inner_denoiser`` in
#: :mod:`tstitch.models.families`); those of the wrapping families read this attribute, as caching does.
DENOISER_MODULE = "denoiser_module"


def inner_denoiser(model: nn.Module) -> nn.Module:
    """The module a cache acts on: the one ``model`` names by :data:`DENOISER_MODULE`, else ``model`` itself."""
    inner = getattr(model, DENOISER_MODULE, None)
    return inner if isinstance(inner, nn.Module) else model


@dataclass
class Clock:
    """Where the run is, for the call about to be made to one model (set by the controller before each call).

    ``step``/``position``: the scheduler step and the index into ``scheduler.timesteps`` (they differ for Heun
    and KDPM2, which make two calls per step); ``local_step``/``local_position``: the same counted from the
    model's first step in its current segment (the run's start, or the first step after a gap in which another
    model ran); ``call_name``: the call's name within its position (``call0``, ``call1`` when a pipeline makes
    one call per guidance branch), which keys the per-call state; ``computed``: the cache's decision.
    """

    step: int = 0
    position: int = 0
    local_step: int = 0
    local_position: int = 0
    call_name: str = "call0"
    computed: bool | None = None


class ModelCache:
    """One model's cache: hooks registered on its submodules, reset per run and removed on :meth:`remove`.

    ``model`` is what the stitch calls; ``denoiser`` the module the method hooks (:func:`inner_denoiser`).
    """

    def __init__(self, model: nn.Module, clock: Clock):
        self.model = model
        self.denoiser = inner_denoiser(model)
        self.clock = clock
        self.hooks: list[tuple[nn.Module, str, ModelHook]] = []

    def register(self, module: nn.Module, name: str, hook: ModelHook) -> None:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        self.hooks.append((module, name, hook))

    def adopt(self, module: nn.Module, name: str) -> ModelHook:
        """Keep track of a hook that diffusers registered on ``module`` under ``name``."""
        hook = module._diffusers_hook.get_hook(name)
        self.hooks.append((module, name, hook))
        return hook

    def decide(self) -> bool | None:
        """Whether the call about to be made computes in full (``None``: decided during the call)."""
        return True

    def reset(self) -> None:
        """Forget everything cached (a new run, or a new segment of the model's steps)."""
        for module, _, hook in self.hooks:
            hook.reset_state(module)

    def remove(self) -> None:
        for module, name, _ in self.hooks:
            module._diffusers_hook.remove_hook(name, recurse=False)
        self.hooks.clear()
        HookRegistry.check_if_exists_or_initialize(self.model).invalidate_child_registries_cache()
