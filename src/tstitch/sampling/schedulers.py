# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The scheduler registry: ``--scheduler`` name -> how to build that diffusers scheduler.

Every scheduler is built with ``from_config`` from the model's own scheduler config (a noise schedule),
so the noise schedule is always the one the model was trained with. A new scheduler is one row of
:data:`SCHEDULERS` and its name in :data:`tstitch.names.SCHEDULER_NAMES` (the torch-free list the command line
offers); ``tests/test_registries.py`` samples with every row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..names import SCHEDULER_ALIASES, scheduler_name

__all__ = [
    "SCHEDULERS",
    "SchedulerKind",
    "scheduler_name",
    "make_scheduler",
    "scheduler_factory",
    "check_scheduler",
    "is_flow_matching",
    "DIT_NOISE_SCHEDULE",
    "SD_NOISE_SCHEDULE",
]


def _schedule_name(noise_schedule: Any) -> str:
    """The scheduler class a noise schedule comes from (a scheduler, its config, or '' for a plain dict)."""
    if not isinstance(getattr(noise_schedule, "config", noise_schedule), Mapping):
        raise ValueError(f"noise_schedule must be a diffusers scheduler, a scheduler config or a dict, got "
                         f"{noise_schedule!r}")
    if hasattr(noise_schedule, "config") and hasattr(noise_schedule, "set_timesteps"):
        return type(noise_schedule).__name__
    return str(dict(getattr(noise_schedule, "config", noise_schedule)).get("_class_name", ""))


def is_flow_matching(noise_schedule: Any) -> bool:
    """Whether ``noise_schedule`` (a scheduler, a scheduler config or a dict) is a flow-matching schedule
    (SD3, Flux: velocity models) rather than a diffusion (beta) schedule of a noise-prediction model."""
    name = _schedule_name(noise_schedule)  # checks that it is a schedule at all
    config = dict(getattr(noise_schedule, "config", noise_schedule))
    if name.startswith("FlowMatch") or config.get("prediction_type") == "flow_prediction":
        return True
    return "shift" in config and "beta_start" not in config  # a FlowMatch* config (a fresh one has no class name)


@dataclass(frozen=True)
class SchedulerKind:
    """One row of :data:`SCHEDULERS`: a diffusers scheduler class and its config overrides.

    ``learned_variance``: overrides for models that predict a variance (DiT's learned sigma), for the
    schedulers that can sample with it; the others ignore those channels. ``flow_matching``: a scheduler
    for flow-matching models (velocity prediction, SD3-like pipelines); it is refused for a diffusion noise
    schedule, and every other row is refused for a flow-matching one (:meth:`check`).
    """

    class_name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    learned_variance: Mapping[str, Any] = field(default_factory=dict)
    flow_matching: bool = False

    @property
    def pipelines_only(self) -> bool:
        """Flow-matching rows sample pipelines only: the bare loop samples noise-prediction models."""
        return self.flow_matching

    def check(self, noise_schedule: Any, name: str | None = None) -> None:
        """``ValueError`` naming why this scheduler cannot sample a model trained on ``noise_schedule``."""
        label = repr(name or self.class_name)
        flow = is_flow_matching(noise_schedule)
        source = _schedule_name(noise_schedule) or ("a flow-matching schedule" if flow
                                                    else "a diffusion (beta) schedule")
        if self.flow_matching and not flow:
            others = ", ".join(k for k, v in SCHEDULERS.items() if not v.flow_matching)
            raise ValueError(f"scheduler {label} is a flow-matching scheduler: it needs a flow-matching model "
                             f"(SD3-like, velocity prediction), but this model's noise schedule is {source} "
                             f"(noise prediction); use one of {others}")
        if flow and not self.flow_matching:
            others = ", ".join(k for k, v in SCHEDULERS.items() if v.flow_matching)
            raise ValueError(f"scheduler {label} is a diffusion scheduler, but this model is a flow-matching "
                             f"model ({source}); use one of {others}")

    def build(self, noise_schedule: Any, *, learned_variance: bool = False) -> Any:
        """The scheduler on ``noise_schedule`` (a scheduler config, a scheduler, or a plain dict)."""
        import diffusers

        self.check(noise_schedule)
        config = dict(getattr(noise_schedule, "config", noise_schedule))
        overrides = {**self.overrides, **(self.learned_variance if learned_variance else {})}
        return getattr(diffusers, self.class_name).from_config(config, **overrides)


SCHEDULERS: dict[str, SchedulerKind] = {
    "ddim": SchedulerKind("DDIMScheduler"),
    "ddpm": SchedulerKind("DDPMScheduler", learned_variance={"variance_type": "learned_range"}),
    # PLMS only, as diffusers' pipelines ship it: the Runge-Kutta start needs 4 or more steps (3 calls each)
    "pndm": SchedulerKind("PNDMScheduler", {"skip_prk_steps": True}),
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
    "flow-euler": SchedulerKind("FlowMatchEulerDiscreteScheduler", flow_matching=True),
}

#: Other spellings accepted for ``--scheduler`` (:func:`scheduler_name` maps them to the table's names).
ALIASES = SCHEDULER_ALIASES

#: The noise schedule of DiT (linear betas) and of Stable Diffusion 1.x (scaled linear), as diffusers configs
#: (with DDIM's ``set_alpha_to_one=False``, as their pipelines ship).
DIT_NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=False)
SD_NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def check_scheduler(name: str, noise_schedule: Any) -> str:
    """The canonical name of scheduler ``name``, checked now against the model's ``noise_schedule``:
    ``ValueError`` for an unknown name or a scheduler of the wrong kind (flow matching vs diffusion)."""
    key = scheduler_name(name)
    SCHEDULERS[key].check(noise_schedule, key)
    return key


def make_scheduler(name: str, noise_schedule: Any, *, learned_variance: bool = False) -> Any:
    """A diffusers scheduler of kind ``name`` (a row of :data:`SCHEDULERS`) on ``noise_schedule`` (a
    scheduler config or a scheduler).

    ``learned_variance``: the model predicts a variance (DiT's learned sigma); DDPM then samples with it
    (``variance_type="learned_range"``), the other schedulers ignore those channels.
    """
    key = check_scheduler(name, noise_schedule)
    return SCHEDULERS[key].build(noise_schedule, learned_variance=learned_variance)


def scheduler_factory(name: str, noise_schedule: Any, *, learned_variance: bool = False) -> Callable[[], Any]:
    """A function making a fresh scheduler of kind ``name`` per run (the name is checked now)."""
    kind = SCHEDULERS[check_scheduler(name, noise_schedule)]
    return lambda: kind.build(noise_schedule, learned_variance=learned_variance)
