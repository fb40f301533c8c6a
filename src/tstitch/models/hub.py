# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Hugging Face hub access: offline mode, hub ids and files, and the messages when a model is missing."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "CheckpointNotAvailableError",
    "REPO_ID",
    "REPO_FILE",
    "offline_mode",
    "not_available",
    "download_hub_file",
    "hub_cached",
    "download_hint",
    "not_fetched",
]


class CheckpointNotAvailableError(FileNotFoundError):
    """A hub model or file is not available (offline and not cached, or not found on the hub)."""


def offline_mode(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:  # pragma: no cover
        return False


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REPO_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.(?:pt|pth|bin|ckpt|safetensors))$")


def not_available(repo_id: str, filename: str | None, offline: bool, error: BaseException | None):
    what = f"{repo_id!r}" + (f" (file {filename!r})" if filename else "")
    detail = str(error).splitlines()[0] if error is not None and str(error) else ""
    reason = (
        "offline (HF_HUB_OFFLINE=1 or local_files_only=True) and not in the local Hugging Face cache"
        if offline
        else f"it could not be fetched ({type(error).__name__}: {detail})"
    )
    return CheckpointNotAvailableError(
        f"DiT checkpoint {what} is not available: {reason}. Download it once with network access "
        f"(e.g. `huggingface-cli download {repo_id}`) or pass a local path instead: an official "
        ".pt/.pth/.safetensors state dict or a diffusers model/pipeline folder."
    )



def download_hub_file(repo_id: str, filename: str, offline: bool) -> Path:
    """A file of a hub repository, from the local cache or (online) downloaded."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
    except Exception as error:
        raise not_available(repo_id, filename, offline, error) from error


def hub_cached(repo_id: str) -> bool:
    """Whether a snapshot of ``repo_id`` is in the local Hugging Face cache (no network)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return False
    return True


def download_hint(repo_id: str) -> str:
    """The command that downloads ``repo_id`` into the local cache."""
    return f"`hf download {repo_id}`"


def not_fetched(repo_id: str, error: BaseException) -> CheckpointNotAvailableError:
    """The error for a hub id that diffusers could not load."""
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return CheckpointNotAvailableError(
        f"{repo_id!r} could not be loaded from the Hugging Face hub ({type(error).__name__}: {detail}). Check the "
        f"id and your network, download it with {download_hint(repo_id)}, or pass a local copy with --model PATH"
    )
