# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Sweeps over model allocations, the Pareto frontier, and the prediction similarity along a trajectory.

Shared by ``tstitch demo`` (the embedded family) and ``tstitch evaluate`` (any model pair).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..plan import Plan
from ..sampling import Guidance, denoise, num_classes_of

__all__ = [
    "Allocation",
    "two_model_sweep",
    "three_model_allocations",
    "pareto_front",
    "add_relative_columns",
    "trajectory_agreement",
    "TrajectoryAgreement",
    "predicted_clean",
    "build_schedules",
    "schedule_slug",
]


@dataclass(frozen=True)
class Allocation:
    """One point of a sweep: models by name (smallest first, the large model last) and the shares of the
    steps of all but the last (``small_fractions``, as :meth:`tstitch.plan.Plan.from_small_fractions`), or a
    per-step ``plan`` (then ``small_fractions`` are its models' shares of the steps, for sorting and plots)."""

    models: tuple[str, ...]
    small_fractions: tuple[float, ...]
    plan: Plan | None = None

    def __post_init__(self) -> None:
        if len(self.small_fractions) != len(self.models) - 1:
            raise ValueError(f"{len(self.models)} models need {len(self.models) - 1} fractions, "
                             f"got {self.small_fractions}")
        if self.plan is not None and self.plan.num_models != len(self.models):
            raise ValueError(f"the plan {self.plan} is for {self.plan.num_models} models, but there are "
                             f"{len(self.models)} ({', '.join(self.models)})")

    @classmethod
    def from_plan(cls, models: Sequence[str], plan: Plan) -> Allocation:
        """The schedule of a per-step, adaptive (or fraction) ``plan`` over ``models``; an adaptive plan's
        ``small_fractions`` are its range's midpoint (its real shares are known once it ran)."""
        if plan.adaptive is not None:
            rule = plan.adaptive
            middle = (rule.min_switch + rule.max_switch) / 2
            return cls(tuple(models), (middle if rule.direction == "small-first" else 1.0 - middle,), plan)
        if plan.is_sequence:
            shares = [n / plan.num_steps for n in plan.steps_per_model(plan.num_steps)]
            return cls(tuple(models), tuple(shares[:-1]), plan)
        return cls(tuple(models), plan.small_fractions)

    @property
    def runs_plan(self) -> Plan | list[float]:
        """What the samplers take: the per-step plan, or the small models' fractions."""
        return self.plan if self.plan is not None else list(self.small_fractions)

    @property
    def label(self) -> str:
        if self.plan is not None and self.plan.adaptive is not None:
            return str(self.plan)
        if self.plan is not None:
            return str(self.plan if self.plan.names else Plan.from_sequence(self.plan.sequence,
                                                                              len(self.models), self.models))
        if len(self.models) == 1:
            return f"{self.models[0]} alone"
        shares = [*self.small_fractions, round(1.0 - sum(self.small_fractions), 6)]
        return " -> ".join(f"{m}:{s:g}" for m, s in zip(self.models, shares, strict=True))


def _grid(step: float) -> list[float]:
    count = round(1.0 / step)
    return [round(i * step, 6) for i in range(count + 1)]


def two_model_sweep(small: str, large: str, step: float = 0.1) -> list[Allocation]:
    """Fractions 0, step, ..., 1 of ``small`` before ``large``."""
    return [Allocation((small, large), (r,)) for r in _grid(step)]


def three_model_allocations(small: str, middle: str, large: str, step: float = 0.1, *,
                            include_edges: bool = False) -> list[Allocation]:
    """Every allocation (f_small, f_middle) on the ``step`` grid with both > 0 and a sum below 1.

    ``include_edges``: also the allocations where a model gets no step (a share 0, or a sum of 1): every
    point of the grid, the two-model stitches and the single models among them.
    """
    grid = _grid(step)
    if include_edges:
        return [Allocation((small, middle, large), (a, b)) for a in grid for b in grid if a + b <= 1 + 1e-9]
    return [
        Allocation((small, middle, large), (a, b))
        for a in grid
        for b in grid
        if a > 0 and b > 0 and a + b < 1 - 1e-9
    ]


def add_relative_columns(row: dict[str, Any], reference: Mapping[str, Any], *, x: str = "seconds_per_image",
                         y: str = "fid") -> dict[str, Any]:
    """Add ``fid_vs_large``, ``time_vs_large`` and ``speedup`` to ``row``, relative to ``reference`` (the
    large model alone); returns ``row``."""
    row["fid_vs_large"] = row[y] / reference[y]
    row["time_vs_large"] = row[x] / reference[x]
    row["speedup"] = 1.0 / row["time_vs_large"]
    return row


def pareto_front(rows: Sequence[Mapping[str, Any]], x: str = "seconds_per_image", y: str = "fid") -> list[int]:
    """Indices of the rows no other row beats on both ``x`` and ``y`` (lower is better), by ``x``."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][x], rows[i][y]))
    front, best = [], float("inf")
    for i in order:
        if rows[i][y] < best:
            front.append(i)
            best = rows[i][y]
    return front


def predicted_clean(x: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """The clean image an epsilon prediction implies: ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``, with
    ``a_t`` the cumulative product of the alphas at the step's timestep (DDPM's equation 15, solved for x0)."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
    return (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


@dataclass
class TrajectoryAgreement:
    """Per step of the large model's trajectory (timesteps from high noise to low), the mean over samples of
    how a small model's predictions agree with the large model's at the same points: the cosine similarity
    of the noise predictions, and of the clean-image (x0) predictions with their relative L2 distance
    ``|x0_small - x0_large| / |x0_large|``."""

    timesteps: list[float]
    eps_cosine: list[float]
    x0_cosine: list[float]
    x0_relative_l2: list[float]

    def as_dict(self) -> dict[str, list[float]]:
        return asdict(self)


def trajectory_agreement(
    smalls: Mapping[str, nn.Module],
    large: nn.Module,
    scheduler: Any,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int,
    guidance_scale: float,
) -> dict[str, TrajectoryAgreement]:
    """How each of ``smalls`` (by name) agrees with ``large`` along one trajectory of the large model: the
    same guided call the sampler makes, at the same latents and timestep (see :class:`TrajectoryAgreement`).
    The scheduler must predict epsilon on unscaled latents (DDPM, DDIM: ``init_noise_sigma`` 1), so that its
    ``alphas_cumprod`` turn predictions into x0."""
    if not smalls:
        raise ValueError("smalls is empty: give at least one model to compare with the large one")
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(f"the scheduler's prediction_type must be 'epsilon' to compare x0 predictions, "
                         f"got {prediction!r}")
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        raise ValueError(f"{type(scheduler).__name__} scales its latents (init_noise_sigma "
                         f"{float(scheduler.init_noise_sigma):g}); compare x0 predictions with DDPM or DDIM")
    guidance = Guidance(guidance_scale, null_class=num_classes_of(large))
    found = {name: TrajectoryAgreement([], [], [], []) for name in smalls}
    channels = noise.shape[1]

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean())

    def compare(state: dict[str, Any]) -> None:
        x, t = state["x"], state["t"]
        keep_variance = state["model_output"].shape[1] > x.shape[1]
        alpha_bar = scheduler.alphas_cumprod[int(t)]
        large_eps = state["model_output"][:, :channels]
        large_x0 = predicted_clean(x, large_eps, alpha_bar)
        for name, small in smalls.items():
            small_eps = guidance(small, scheduler, x, t, labels, keep_variance=keep_variance)[:, :channels]
            small_x0 = predicted_clean(x, small_eps, alpha_bar)
            distance = (small_x0 - large_x0).flatten(1).norm(dim=1) / large_x0.flatten(1).norm(dim=1)
            record = found[name]
            record.timesteps.append(float(t))
            record.eps_cosine.append(cosine(small_eps, large_eps))
            record.x0_cosine.append(cosine(small_x0, large_x0))
            record.x0_relative_l2.append(float(distance.mean()))

    denoise(lambda step: large, scheduler, noise, class_labels=labels, num_inference_steps=num_steps,
            guidance=guidance, callback=compare)
    return found


def build_schedules(names: Sequence[str], *, fractions: Sequence[float] | None, sweep: bool,
                    step: float = 0.1, default_fractions: Sequence[float] = (),
                    plan: Plan | None = None) -> list[Allocation]:
    """The schedules of a run: a sweep (every fraction of two models, every allocation of three, on the
    ``step`` grid), the given ``fractions`` or ``plan``, or ``default_fractions``."""
    names = tuple(names)
    if plan is not None:
        return [Allocation.from_plan(names, plan)]
    if sweep:
        if len(names) == 2:
            return two_model_sweep(names[0], names[1], step)
        if len(names) == 3:
            return three_model_allocations(*names, step=step, include_edges=True)
        raise ValueError(f"a sweep takes two or three models, got {len(names)}")
    chosen = tuple(fractions) if fractions is not None else tuple(default_fractions)
    if len(chosen) != len(names) - 1:
        raise ValueError(f"{len(names)} models take {len(names) - 1} fraction(s) (smallest model first), "
                         f"got {len(chosen)}: {list(chosen)}")
    if any(not 0 <= f <= 1 for f in chosen) or sum(chosen) > 1 + 1e-9:
        raise ValueError(f"fractions must be in [0, 1] and sum to at most 1, got {list(chosen)}")
    return [Allocation(names, tuple(float(f) for f in chosen))]


def schedule_slug(schedule: Allocation) -> str:
    """A folder name for a schedule: every model with its share, e.g. ``digits-s-0.4_digits-xl-0.6``; a
    per-step plan's is its text form, e.g. ``plan-S8_XL11_S1``; an adaptive plan's its rule and a digest of it
    (two rules never share a folder)."""
    if schedule.plan is not None and schedule.plan.adaptive is not None:
        digest = hashlib.sha256(str(schedule.plan).encode()).hexdigest()[:8]
        return "plan-" + re.sub(r"[^A-Za-z0-9.+-]+", "_", schedule.label).strip("_") + "-" + digest
    if schedule.plan is not None and schedule.plan.is_sequence:
        return "plan-" + re.sub(r"[^A-Za-z0-9.+-]+", "_", schedule.label).strip("_")
    shares = [*schedule.small_fractions, round(1.0 - sum(schedule.small_fractions), 6)]
    parts = [f"{re.sub(r'[^A-Za-z0-9.+-]+', '-', name).strip('-') or 'model'}-{share:g}"
             for name, share in zip(schedule.models, shares, strict=True)]
    return "_".join(parts)
