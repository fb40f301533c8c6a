# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The demo's sections: one model family each (a small and a large model, optionally a middle one), each with
its own fraction sweep, Pareto figure, grid and similarity curves.

:func:`default_sections` gives the DiT family and, once the embedded U-Net pair is in the zoo with its
weights, the U-Net pair. :func:`load_sections` loads every section's models before any work, dropping an
optional section whose weights cannot be had (with the reason) and raising for a required one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from .. import zoo
from .study import Allocation, two_model_sweep

logger = logging.getLogger(__name__)

__all__ = ["DemoSection", "DIT_SECTION", "UNET_SECTION", "default_sections", "load_sections", "section_files"]


@dataclass(frozen=True)
class DemoSection:
    """One family of the demo: ``small`` before ``large`` at every fraction, and with a ``middle`` model the
    S -> M -> L allocations of the run. ``slug`` names its figures (``pareto-<slug>.png``; empty: the
    first section's plain ``pareto.png``). ``guidance_scales``: the scales of its guidance sweep (``None``:
    the run's). ``optional``: skipped, with the reason recorded, when its weights cannot be had."""

    name: str
    small: str
    large: str
    middle: str | None = None
    slug: str = ""
    guidance_scales: tuple[float, ...] | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        names = self.model_names
        if len(set(names)) != len(names):
            raise ValueError(f"section {self.name!r} names a model twice: {', '.join(names)}")
        if self.slug and not self.slug.replace("-", "").isalnum():
            raise ValueError(f"section slug must be letters, digits and '-', got {self.slug!r}")

    @property
    def model_names(self) -> tuple[str, ...]:
        """Smallest first."""
        return (self.small, self.middle, self.large) if self.middle else (self.small, self.large)

    def file(self, stem: str) -> str:
        """The section's file name for ``stem`` (``pareto`` -> ``pareto.png`` or ``pareto-unet.png``)."""
        return f"{stem}-{self.slug}.png" if self.slug else f"{stem}.png"

    def fraction_sweep(self, step: float) -> list[Allocation]:
        """Fractions 0, step, ..., 1 of the small model before the large one (r = 0: the large model alone)."""
        return two_model_sweep(self.small, self.large, step)

    def three_model(self, allocations: tuple[tuple[float, float], ...]) -> list[Allocation]:
        """The S -> M -> L ``allocations`` (none without a middle model)."""
        if self.middle is None:
            return []
        return [Allocation((self.small, self.middle, self.large), fractions) for fractions in allocations]


DIT_SECTION = DemoSection("DiT", "digits-s", "digits-xl", middle="digits-b")
# The U-Net pair at guidance 1, as the DiTs: at 1.5 the small U-Net alone scores as well as the large one (600
# samples: 13.1 against 13.4), so guidance there hides the size gap the section is about.
UNET_SECTION = DemoSection("U-Net", "digits-unet-s", "digits-unet", slug="unet", guidance_scales=(1.0,),
                           optional=True)

#: The figures each section writes.
FIGURES = ("pareto", "grid", "similarity")


def section_files(sections: tuple[DemoSection, ...] = (DIT_SECTION, UNET_SECTION)) -> tuple[str, ...]:
    """Every figure ``sections`` can write."""
    return tuple(section.file(stem) for section in sections for stem in FIGURES)


def default_sections() -> tuple[DemoSection, ...]:
    """The DiT family, then the U-Net pair when it is in the zoo (its weights are checked on loading)."""
    if all(name in zoo.FAMILY for name in UNET_SECTION.model_names):
        return DIT_SECTION, UNET_SECTION
    return (DIT_SECTION,)


def load_sections(sections: tuple[DemoSection, ...], weights_dir: str | os.PathLike | None,
                  device: torch.device) -> tuple[list[tuple[DemoSection, dict[str, Any]]], list[dict[str, str]]]:
    """Each section with its loaded models, and the optional sections left out with the reason."""
    loaded, skipped = [], []
    folder = zoo.weights_dir(weights_dir)
    for section in sections:
        if not section.optional:  # the loader's own errors say how to get the weights
            loaded.append((section, zoo.load_family(list(section.model_names), weights_dir, device)))
            continue
        unknown = [name for name in section.model_names if name not in zoo.FAMILY]
        missing = [name for name in section.model_names if not (folder / f"{name}.safetensors").is_file()]
        reason = (f"not in the embedded family: {', '.join(unknown)}" if unknown
                  else f"no weights in {folder}: {', '.join(missing)}" if missing else None)
        if reason is None:
            try:
                loaded.append((section, zoo.load_family(list(section.model_names), weights_dir, device)))
                continue
            except ValueError as error:  # corrupted, truncated, or not the model's shape
                reason = str(error)
        logger.warning("demo section %s left out: %s", section.name, reason)
        skipped.append({"name": section.name, "reason": reason})
    if not loaded:
        raise ValueError("no demo section could be loaded")
    return loaded, skipped
