# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The tuner's plans are :class:`tstitch.plan.Plan` per-step plans; the search handles them as tuples of model
indices (hashable, cheap to edit) and turns them into :class:`~tstitch.plan.Plan` here.

Labels are the plan's text form (``S8 > B2 > XL8 > B2`` with short names); read them back with
:meth:`tstitch.plan.Plan.parse`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..plan import Plan

__all__ = ["as_plan", "label", "runs", "short_names", "single_fraction"]


def short_names(names: Sequence[str]) -> list[str]:
    """Short labels of models: the part after the last '-' in capitals (``digits-xl`` -> ``XL``) when these
    are distinct, else ``M0, M1, ...``."""
    short = [name.rsplit("-", 1)[-1].upper() for name in names]
    ok = len(set(short)) == len(short) and all(
        s[:1].isalpha() and s.isalnum() and not s[-1].isdigit() for s in short)
    return short if ok else [f"M{i}" for i in range(len(names))]


def as_plan(sequence: Sequence[int], names: Sequence[str]) -> Plan:
    """The per-step :class:`~tstitch.plan.Plan` of ``sequence`` over the models named ``names``."""
    return Plan.from_sequence(sequence, len(names), names)


def label(sequence: Sequence[int], names: Sequence[str]) -> str:
    """The plan's text form, ``S8 > B2 > XL8 > B2`` (``names``: short model names)."""
    return str(as_plan(sequence, names))


def runs(sequence: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of one model, ``(model_index, start, stop)`` in order (:meth:`Plan.segments` with positions)."""
    found, start = [], 0
    for model, count in Plan.from_sequence(sequence).segments():
        found.append((model, start, start + count))
        start += count
    return found


def single_fraction(small_steps: int, num_steps: int, small: int = 0, large: int = -1,
                    num_models: int = 2) -> tuple[int, ...]:
    """T-Stitch's plan: ``small_steps`` of the small model, then the large one."""
    segments = [(small, small_steps), (large % num_models, num_steps - small_steps)]
    return Plan.from_segments(segments, num_models).sequence
