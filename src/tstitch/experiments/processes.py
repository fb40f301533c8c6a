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

__all__ = ["Processes", "PeerError", "pick_device"]


class PeerError(RuntimeError):
    """Raised on processes other than 0 when process 0 refused the run (it reports the reason itself)."""


# -- processes --------------------------------------------------------------------------------------------------


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
        else:
            self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
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


