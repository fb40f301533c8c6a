# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What the tuner samples: the models, the scheduler, the noise and labels of a seed, and the feature space.

:func:`digits_workload` is the embedded family (``digits-s``, ``digits-b``, ``digits-xl``) scored in the
digits classifier's features against the real digits, as ``tstitch demo`` scores it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DDIMScheduler
from torch import nn

from ..models.loading import load_preset
from ..models.presets import get_preset
from ..zoo import load_classifier, load_family, scheduler_config
from ..zoo.data import NUM_CLASSES, load_digits_tensors
from .plans import short_names
from .quality import flat_features
from .stats import gaussian_statistics

__all__ = ["Workload", "digits_workload", "preset_workload"]


@dataclass
class Workload:
    """Models (smallest first, the large model last) and how to start and score their samples."""

    models: list[nn.Module]
    names: list[str]
    scheduler: Any
    sample_shape: tuple[int, ...]
    num_classes: int | None = None
    features: Callable[[torch.Tensor], torch.Tensor] = flat_features
    real_statistics: tuple[torch.Tensor, torch.Tensor] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if len(self.models) < 2:
            raise ValueError(f"tuning needs at least two models, got {len(self.models)}")
        if len(self.names) != len(self.models):
            raise ValueError(f"{len(self.models)} models but {len(self.names)} names")

    @property
    def short(self) -> list[str]:
        return short_names(self.names)

    def start(self, seed: int, num_samples: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The noise and labels of ``num_samples`` samples from ``seed`` (labels cycle through the classes)."""
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(num_samples, *self.sample_shape, generator=generator).to(self.device)
        labels = None
        if self.num_classes:
            labels = (torch.arange(num_samples) % self.num_classes).to(self.device)
        return noise, labels


def digits_workload(names: Sequence[str] = ("digits-s", "digits-b", "digits-xl"), *,
                    weights_dir: str | None = None, device: str | torch.device = "cpu") -> Workload:
    """The embedded digits family with the digits metric (classifier features, real digits statistics)."""
    device = torch.device(device)
    family = load_family(list(names), directory=weights_dir, device=device)
    classifier = load_classifier(weights_dir, device=device)
    real, _ = load_digits_tensors()
    with torch.no_grad():
        real_statistics = gaussian_statistics(classifier.features(real.to(device)).cpu())

    @torch.no_grad()
    def features(latents: torch.Tensor) -> torch.Tensor:
        return classifier.features(latents.clamp(-1, 1)).cpu()

    model = family[names[-1]]
    config = model.config
    return Workload(
        models=list(family.values()), names=list(names),
        scheduler=DDIMScheduler(**scheduler_config(), set_alpha_to_one=False),
        sample_shape=(config.in_channels, config.sample_size, config.sample_size), num_classes=NUM_CLASSES,
        features=features, real_statistics=real_statistics, device=device,
    )


def preset_workload(name: str, *, device: str | torch.device = "cpu",
                    checkpoint_dir: str | None = None) -> Workload:
    """A class-conditional preset whose weights are present (no download). The digits presets get the digits
    metric; others are scored in their latent space (the paired distance; no FID, so budgets only)."""
    preset = get_preset(name)
    zoo_names = [getattr(source, "zoo", None) for source in preset.models]
    if all(zoo_names):
        return digits_workload(zoo_names, device=device)
    if preset.kind != "class":
        raise ValueError(f"preset {name!r} is a text-to-image pipeline; tune supports class-conditional presets")
    loaded = load_preset(name, device=device, local_files_only=True, checkpoint_dir=checkpoint_dir)
    return Workload(models=list(loaded.models), names=list(loaded.names),
                    scheduler=DDIMScheduler.from_config(loaded.scheduler_config),
                    sample_shape=tuple(loaded.latent_shape), num_classes=loaded.num_classes,
                    device=torch.device(device))
