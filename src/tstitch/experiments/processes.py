# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""This process's place in a ``torchrun`` launch (or a world of one), and the few collectives needed."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["Processes", "PeerError", "pick_device", "launch_place"]


class PeerError(RuntimeError):
    """Raised on processes other than 0 when process 0 refused the run (it reports the reason itself)."""


# -- processes --------------------------------------------------------------------------------------------------


def _environment_integer(name: str, low: int) -> int | None:
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} in the environment is not an integer (torchrun sets RANK, WORLD_SIZE "
                         f"and LOCAL_RANK; unset {name} for a single process)") from None
    if value < low:
        raise ValueError(f"{name}={text} in the environment must be >= {low}")
    return value


def launch_place() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` of this process from torchrun's environment, checked before any work:
    none of RANK / WORLD_SIZE set is a world of one; RANK left in the environment without WORLD_SIZE (a
    process 1 of nobody, that would wait for a process 0 that never comes), values that are not integers and
    a RANK outside the world are refused by name (``ValueError``)."""
    rank, world = _environment_integer("RANK", 0), _environment_integer("WORLD_SIZE", 1)
    local_rank = _environment_integer("LOCAL_RANK", 0) or 0
    if world is None:
        if rank is not None:
            raise ValueError(f"RANK={rank} is in the environment but WORLD_SIZE is not: launch with torchrun (which "
                             "sets both), or unset RANK for a single process")
        return 0, 1, local_rank
    if rank is None:
        if world > 1:
            raise ValueError(f"WORLD_SIZE={world} is in the environment but RANK is not: launch with torchrun, or "
                             "unset WORLD_SIZE for a single process")
        rank = 0
    if rank >= world:
        raise ValueError(f"RANK={rank} in the environment is outside WORLD_SIZE={world} (ranks 0 to {world - 1})")
    return rank, world, local_rank



def pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(device)


class Processes:
    """This process's place in a ``torchrun`` launch (or a world of one), and the few collectives needed."""

    def __init__(self, device: str, timeout_minutes: float):
        self.owns_group = False
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
        else:
            self.rank, self.world, local_rank = launch_place()
        self.device = pick_device(device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
            self.owns_group = True
            logger.info("process %d of %d (%s, %s)", self.rank, self.world, backend, self.device)

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_initialized()

    def broadcast(self, value: Any) -> Any:
        """``value`` of process 0, on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_zero(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on process 0 and hand its result to every process; its error stops every process."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = work()
            except Exception as caught:  # every process must hear of it, or the others wait forever
                error = caught
        outcome = self.broadcast(("error", f"{type(error).__name__}: {error}") if error else ("ok", result))
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise PeerError(outcome[1])
        return outcome[1]

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False


