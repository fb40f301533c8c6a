# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Sampling many plans from one set of noise, sharing the work of common prefixes.

DDIM is deterministic and keeps no state between steps, so the latents after the first ``k`` steps depend
only on those steps' models: plans that begin alike share them. :class:`PrefixSampler` runs a plan one
step at a time with :func:`tstitch.sample` and a DDIM scheduler restricted to that step, and keeps the latents
after every step for the next plan (least recently used dropped first).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler
from torch import nn

from ..sampling import sample

logger = logging.getLogger(__name__)

__all__ = ["PrefixSampler", "WindowDDIMScheduler"]


class WindowDDIMScheduler(DDIMScheduler):
    """DDIM that runs only the steps ``[start, stop)`` of its ``num_inference_steps`` (the window is set on
    the instance; ``set_timesteps`` keeps the full run's spacing)."""

    window: tuple[int, int] = (0, 0)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device=device)
        start, stop = self.window
        self.timesteps = self.timesteps[start:stop]


class PrefixSampler:
    """Final latents of plans (sequences of model indices) from fixed noise and labels.

    Args:
        models: the denoisers, smallest first.
        scheduler: a ``DDIMScheduler`` (its config is used; other schedulers keep state between steps).
        noise, labels: the shared start of every plan.
        batch_size: samples per model call.
        guidance_scale: classifier-free guidance, as in :func:`tstitch.sample`.
        max_cached: latents kept, one per plan prefix (least recently used dropped first).

    :attr:`model_steps` counts the sample-steps run per model (the work done, in model evaluations).
    """

    def __init__(self, models: Sequence[nn.Module], scheduler: Any, noise: torch.Tensor,
                 labels: torch.Tensor | None, *, batch_size: int = 500, guidance_scale: float = 1.0,
                 max_cached: int = 4096):
        if type(scheduler) is not DDIMScheduler and not isinstance(scheduler, WindowDDIMScheduler):
            raise ValueError(f"scheduler must be a DDIMScheduler (the prefix cache needs a stateless solver), "
                             f"got {type(scheduler).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.models = list(models)
        self.config = dict(scheduler.config)
        self.noise = noise
        self.labels = labels
        self.batch_size = batch_size
        self.guidance_scale = guidance_scale
        self.max_cached = max_cached
        self.model_steps = [0] * len(self.models)
        self._cache: OrderedDict[tuple[int, tuple[int, ...]], torch.Tensor] = OrderedDict()

    @property
    def num_samples(self) -> int:
        return len(self.noise)

    def _cached(self, num_steps: int, prefix: tuple[int, ...]) -> torch.Tensor | None:
        key = (num_steps, prefix)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        return None

    def _store(self, num_steps: int, prefix: tuple[int, ...], latents: torch.Tensor) -> None:
        self._cache[(num_steps, prefix)] = latents
        self._cache.move_to_end((num_steps, prefix))
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    def run_segment(self, model_index: int, start: int, stop: int, num_steps: int,
                    latents: torch.Tensor) -> torch.Tensor:
        """Steps ``[start, stop)`` of a ``num_steps`` DDIM run with one model, from ``latents``."""
        scheduler = WindowDDIMScheduler.from_config(self.config)
        scheduler.window = (start, stop)
        outputs = []
        for begin in range(0, len(latents), self.batch_size):
            labels = None if self.labels is None else self.labels[begin:begin + self.batch_size]
            result = sample(self.models[model_index], [], scheduler, noise=latents[begin:begin + self.batch_size],
                            class_labels=labels, num_inference_steps=num_steps,
                            guidance_scale=self.guidance_scale)
            outputs.append(result.latents)
        self.model_steps[model_index] += (stop - start) * len(latents)
        return torch.cat(outputs)

    def run(self, sequence: Sequence[int]) -> torch.Tensor:
        """Final latents of the plan ``sequence`` (its length is the step count)."""
        sequence = tuple(sequence)
        if any(not 0 <= i < len(self.models) for i in sequence) or not sequence:
            raise ValueError(f"plan {list(sequence)} must be a non-empty list of model indices < {len(self.models)}")
        num_steps = len(sequence)
        latents, done = self.noise * WindowDDIMScheduler.from_config(self.config).init_noise_sigma, 0
        for length in range(num_steps, 0, -1):
            cached = self._cached(num_steps, sequence[:length])
            if cached is not None:
                latents, done = cached, length
                break
        for step in range(done, num_steps):
            latents = self.run_segment(sequence[step], step, step + 1, num_steps, latents)
            self._store(num_steps, sequence[:step + 1], latents)
        return latents
