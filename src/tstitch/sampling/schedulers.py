# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The scheduler registry: ``--scheduler`` name -> how to build that diffusers scheduler.

Every scheduler is built with ``from_config`` from the model's own scheduler config (a noise schedule),
so the noise schedule is always the one the model was trained with. A new scheduler is one row of
:data:`SCHEDULERS`; ``tests/test_registries.py`` samples with every row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SCHEDULERS",
    "SchedulerKind",
    "scheduler_name",
    "make_scheduler",
    "scheduler_factory",
    "DIT_NOISE_SCHEDULE",
    "SD_NOISE_SCHEDULE",
]


@dataclass(frozen=True)
class SchedulerKind:
    """One row of :data:`SCHEDULERS`: a diffusers scheduler class and its config overrides.

    ``learned_variance``: overrides for models that predict a variance (DiT's learned sigma), for the
    schedulers that can sample with it; the others ignore those channels. ``pipelines_only``: a scheduler
    for flow-matching pipelines, which the bare loop refuses.
    """

    class_name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    learned_variance: Mapping[str, Any] = field(default_factory=dict)
    pipelines_only: bool = False

    def build(self, noise_schedule: Any, *, learned_variance: bool = False) -> Any:
        """The scheduler on ``noise_schedule`` (a scheduler config, a scheduler, or a plain dict)."""
        import diffusers

        config = dict(getattr(noise_schedule, "config", noise_schedule))
        overrides = {**self.overrides, **(self.learned_variance if learned_variance else {})}
        return getattr(diffusers, self.class_name).from_config(config, **overrides)


SCHEDULERS: dict[str, SchedulerKind] = {
    "ddim": SchedulerKind("DDIMScheduler"),
    "ddpm": SchedulerKind("DDPMScheduler", learned_variance={"variance_type": "learned_range"}),
    "pndm": SchedulerKind("PNDMScheduler"),
    "lms": SchedulerKind("LMSDiscreteScheduler"),
    "euler": SchedulerKind("EulerDiscreteScheduler"),
    "euler-a": SchedulerKind("EulerAncestralDiscreteScheduler"),
    "heun": SchedulerKind("HeunDiscreteScheduler"),
    "kdpm2": SchedulerKind("KDPM2DiscreteScheduler"),
    "dpm": SchedulerKind("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver",
                                                         "final_sigmas_type": "sigma_min"}),
    "dpm++": SchedulerKind("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++-sde": SchedulerKind("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": SchedulerKind("UniPCMultistepScheduler"),
    "deis": SchedulerKind("DEISMultistepScheduler"),
    "lcm": SchedulerKind("LCMScheduler"),
    "flow-euler": SchedulerKind("FlowMatchEulerDiscreteScheduler", pipelines_only=True),
}

#: Other spellings accepted for ``--scheduler``.
ALIASES = {"dpmsolver++": "dpm++", "dpmsolver": "dpm", "euler_a": "euler-a", "euler-ancestral": "euler-a"}

#: The noise schedule of DiT (linear betas) and of Stable Diffusion 1.x (scaled linear), as diffusers configs
#: (with DDIM's ``set_alpha_to_one=False``, as their pipelines ship).
DIT_NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=False)
SD_NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def scheduler_name(name: str) -> str:
    """The canonical ``--scheduler`` name; ``ValueError`` listing the known names."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    return key


def make_scheduler(name: str, noise_schedule: Any, *, learned_variance: bool = False) -> Any:
    """A diffusers scheduler of kind ``name`` (a row of :data:`SCHEDULERS`) on ``noise_schedule`` (a
    scheduler config or a scheduler).

    ``learned_variance``: the model predicts a variance (DiT's learned sigma); DDPM then samples with it
    (``variance_type="learned_range"``), the other schedulers ignore those channels.
    """
    return SCHEDULERS[scheduler_name(name)].build(noise_schedule, learned_variance=learned_variance)


def scheduler_factory(name: str, noise_schedule: Any, *, learned_variance: bool = False) -> Callable[[], Any]:
    """A function making a fresh scheduler of kind ``name`` per run (the name is checked now)."""
    kind = SCHEDULERS[scheduler_name(name)]
    return lambda: kind.build(noise_schedule, learned_variance=learned_variance)
