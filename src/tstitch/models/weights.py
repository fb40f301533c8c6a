# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Weight files read safely, and weights put into a freshly built model with every key and shape checked: what
the DiT checkpoints (:mod:`tstitch.models.checkpoints`) and the CompVis LDM checkpoints
(:mod:`tstitch.models.ldm_checkpoints`) share.

Files are read with ``torch.load(weights_only=True)`` or safetensors: nothing in a file is executed. A reader
may allow a few named classes (``safe_globals``: the argparse arguments of DiT training checkpoints) and may have
the objects of named modules (``inert_modules``: the Lightning and OmegaConf objects a Lightning ``.ckpt`` keeps
beside its weights) unpickled as inert placeholders, which keep their state and run nothing.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..outputs import path_problem
from .checks import check_float_tensors

__all__ = ["LIGHTNING_MODULES", "block_indices", "build_from_weights", "first_few", "read_lightning_state_dict",
           "read_safetensors", "read_torch_file", "shape_of"]

logger = logging.getLogger(__name__)

#: Module prefixes whose pickled objects a Lightning ``.ckpt`` holds beside its weights (callbacks keyed by
#: class, hyper-parameters): read as inert placeholders by :func:`read_lightning_state_dict`.
LIGHTNING_MODULES = ("pytorch_lightning", "lightning", "lightning_fabric", "omegaconf", "typing")


# -- reading files -----------------------------------------------------------------------------------------


class _Placeholder:
    """Stands in for a pickled Lightning/OmegaConf object: accepts any construction, keeps its state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _how_it_starts(path: Path) -> str:
    """`` (it starts with b'...')`` for a file that is not a PyTorch archive or pickle at all, else ``""``."""
    with path.open("rb") as handle:
        start = handle.read(16)
    return "" if start[:2] == b"PK" or start[:1] == b"\x80" else f" (it starts with {start!r})"


def read_torch_file(path: Path, *, safe_globals: Sequence[type] = (), inert_modules: Sequence[str] = ()) -> Any:
    """What a PyTorch file holds, read with ``weights_only=True`` (``safe_globals`` allowed too; objects of
    ``inert_modules`` as inert placeholders). ``ValueError`` for a truncated or corrupt file and for a file
    holding any other Python object, naming them."""
    allowed = list(safe_globals)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from error
        refused = error
    except Exception as error:  # zip, EOF and unpickling errors all mean the same here
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?){_how_it_starts(path)}: "
                         f"{type(error).__name__}: {error}") from error
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (not zip) file: torch's own message names the object
        names = []
    names = [n for n in names if n not in {f"{g.__module__}.{g.__qualname__}" for g in allowed}]
    foreign = [n for n in names if n.split(".")[0] not in inert_modules]
    if not names or foreign:
        what = ", ".join(foreign or names) or str(refused).splitlines()[0]
        raise ValueError(f"{path}: the checkpoint holds Python objects that safe loading (weights_only=True) "
                         f"refuses ({what}); re-save just the state dict.")
    stand_ins = [(type(n.rsplit(".", 1)[-1], (_Placeholder,), {}), n) for n in names]
    logger.info("%s: %d Lightning/OmegaConf objects read as inert placeholders", path, len(names))
    with torch.serialization.safe_globals([*allowed, *stand_ins]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch's message runs to many lines: keep the one that says why
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else "")
            raise ValueError(f"{path}: cannot read the checkpoint safely: {reason}") from error


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file and its metadata; ``ValueError`` for an unreadable or empty file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {error}") from error
    if not tensors:
        raise ValueError(f"{path}: the safetensors file holds no tensors")
    return tensors, metadata


def read_lightning_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning ``.ckpt`` (its ``state_dict``) or of a plain state dict file (``ValueError``
    for unreadable files, pickled code, no tensors; ``FileNotFoundError`` for a missing file)."""
    path = Path(path).expanduser()
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(f"LDM checkpoint {problem}")
    if path.exists() and not path.is_file():
        raise ValueError(f"LDM checkpoint {str(path)!r} is not a plain file (a folder, a FIFO ...): give the .ckpt")
    if not path.is_file():
        raise FileNotFoundError(f"LDM checkpoint {str(path)!r} not found: no such file")
    if path.suffix.lower() == ".safetensors":
        obj: Any = read_safetensors(path)[0]
    else:
        obj = read_torch_file(path, inert_modules=LIGHTNING_MODULES)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, Mapping) else {}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path}: no state dict found (expected tensors, possibly under 'state_dict'); found {keys}")
    return tensors


# -- reading shapes ----------------------------------------------------------------------------------------


def shape_of(sd: Mapping[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    """The shape of ``sd[key]``; ``ValueError`` naming the key when the file lacks it."""
    if key not in sd:
        raise ValueError(f"{where}: missing key {key!r}")
    return tuple(sd[key].shape)


def block_indices(sd: Mapping[str, Any], prefix: str) -> list[int]:
    """The block numbers ``i`` of the keys ``<prefix><i>.*``, in order."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pattern.match(k)] if m})


def first_few(keys: Sequence[str], limit: int = 6) -> str:
    """The first ``limit`` keys, and how many there are in all when there are more."""
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


# -- building ----------------------------------------------------------------------------------------------


def build_from_weights(cls: Any, config: Mapping[str, Any], sd: Mapping[str, torch.Tensor], where: str) -> Any:
    """``cls(**config)`` holding the weights ``sd``, in eval mode: every tensor floating point and of the model's
    shape, no key missing and none left over (``ValueError`` naming them). The caller's random state is kept."""
    check_float_tensors(sd, where)  # int or bool tensors would be cast silently
    with torch.random.fork_rng(devices=[]):  # building must not move the caller's random state
        model = cls(**config)
    expected = model.state_dict()
    wrong = [f"{key} is {tuple(value.shape)} in the file, {tuple(expected[key].shape)} in the model"
             for key, value in sd.items() if key in expected and tuple(value.shape) != tuple(expected[key].shape)]
    if wrong:
        raise ValueError(f"{where}: {len(wrong)} tensor(s) have the wrong shape for the architecture read from the "
                         f"file: {'; '.join(wrong[:4])}")
    result = model.load_state_dict(dict(sd), strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = [f"{name} {first_few(keys, 8)}" for name, keys in (("missing", result.missing_keys),
                                                                   ("unexpected", result.unexpected_keys)) if keys]
        raise ValueError(f"{where}: weights do not fit a {cls.__name__} ({'; '.join(parts)})")
    return model.eval()
