# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""What a ``--model`` source holds, read from its config files before any weights are loaded: a
class-conditional model (a DiT file, folder or hub id, an embedded name), a text-to-image pipeline, or a bare
denoiser folder (a small model only). :func:`tstitch.models.loading.load_models` decides with it how to load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from .families import family_of_class, family_of_name
from .hub import REPO_FILE, REPO_ID, CheckpointNotAvailableError, download_hint, hub_cached, offline_mode

__all__ = ["detect_kind"]


def detect_kind(source: str, *, local_files_only: bool | None = None) -> Literal["class", "pipeline", "denoiser"]:
    """What ``source`` holds: a class-conditional DiT (``"class"``), a text-to-image pipeline
    (``"pipeline"``) or a bare denoiser folder (``"denoiser"``, usable as a small model only)."""
    embedded = family_of_name(source)
    if embedded is not None:
        return embedded.kind
    path = Path(source).expanduser()
    if path.is_file():
        return "class"
    if path.is_dir():
        return _kind_from_configs(lambda name: path / name if (path / name).is_file() else None, source)
    if REPO_FILE.match(source):
        return "class"
    if not REPO_ID.match(source):
        raise FileNotFoundError(f"model {source!r} not found: no such file or folder, and not a hub id 'owner/name'")
    offline = offline_mode(local_files_only)

    def fetch(name: str) -> Path | None:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(source, name, local_files_only=offline))
        except Exception:
            return None

    try:
        return _kind_from_configs(fetch, source)
    except ValueError:
        if offline and not hub_cached(source):
            raise CheckpointNotAvailableError(
                f"{source!r} is not in the local Hugging Face cache and the hub is off (HF_HUB_OFFLINE=1 or "
                f"local_files_only); download it once with network access ({download_hint(source)}) or pass a "
                "local path"
            ) from None
        raise


def _kind_from_configs(find: Any, source: str) -> Literal["class", "pipeline", "denoiser"]:
    for name in ("model_index.json", "config.json", "transformer/config.json"):
        found = find(name)
        if found is None:
            continue
        try:
            class_name = json.loads(Path(found).read_text()).get("_class_name", "")
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{source}: unreadable {name} ({error})") from error
        family = family_of_class(class_name)
        if family is not None and family.kind == "class":
            return "class"
        return "pipeline" if name == "model_index.json" else "denoiser"
    raise ValueError(f"{source}: neither a diffusers pipeline nor a model (no model_index.json or config.json)")
