# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Per-model conditioning: a stitched model that does not share the pipeline's (or the loop's) conditioning.

An *adapter* is a callable ``adapter(kwargs) -> kwargs``: given the keyword arguments of a denoiser call (the
large model's signature, positional arguments bound to their names: ``sample``, ``timestep``,
``encoder_hidden_states``, ``class_labels``, ``added_cond_kwargs``, ...), it returns the arguments of its
model's call. ``tstitch.stitch(pipe, small, 0.4, conditioning=[adapter])`` gives ``small`` its adapter; a
model without one (``None``) gets the call unchanged, exactly as without this feature.

An adapter may also want the pipeline call's text: while stitched, the pipeline's ``encode_prompt`` is
wrapped (:func:`capture_prompts`), so every adapter with a ``set_prompt(prompt, negative_prompt,
num_images_per_prompt)`` method sees them before the denoising starts. The ready-made adapters are in
:mod:`tstitch.adapters` (``TextEncoderConditioning``: a small model's own text encoder).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Adapter", "adapted_call", "capture_prompts", "release_prompts", "per_model"]

#: ``adapter(kwargs) -> kwargs``: a denoiser call's keyword arguments -> one model's.
Adapter = Callable[[dict[str, Any]], dict[str, Any]]

_CAPTURE_ATTR = "_tstitch_prompt_capture"


def adapted_call(call: Callable[..., Any], adapter: Adapter, signature: inspect.Signature) -> Callable[..., Any]:
    """``call`` taking the arguments of a denoiser call (bound to ``signature``) through ``adapter``."""

    def run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs).arguments
        for name, parameter in signature.parameters.items():  # flatten a **kwargs parameter
            if parameter.kind is inspect.Parameter.VAR_KEYWORD and name in bound:
                bound.update(bound.pop(name))
        return call(**adapter(dict(bound)))

    return run


def capture_prompts(pipe: Any, adapters: Sequence[Any]) -> None:
    """Wrap ``pipe.encode_prompt`` so that each adapter with ``set_prompt`` sees every call's prompts."""
    listeners = [a for a in adapters if a is not None and hasattr(a, "set_prompt")]
    original = getattr(pipe, "encode_prompt", None)
    if not listeners:
        return
    if original is None:
        raise ValueError(f"{type(pipe).__name__} has no encode_prompt: a text-encoder adapter cannot see its prompts")
    signature = inspect.signature(original)

    @functools.wraps(original)
    def encode_prompt(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        for adapter in listeners:
            adapter.set_prompt(values.get("prompt"), values.get("negative_prompt"),
                               values.get("num_images_per_prompt", 1))
        return original(*args, **kwargs)

    object.__setattr__(pipe, "encode_prompt", encode_prompt)
    object.__setattr__(pipe, _CAPTURE_ATTR, encode_prompt)


def release_prompts(pipe: Any) -> None:
    """Undo :func:`capture_prompts` (a no-op when there is nothing to undo)."""
    wrapper = vars(pipe).pop(_CAPTURE_ATTR, None) if hasattr(pipe, "__dict__") else None
    if wrapper is not None and vars(pipe).get("encode_prompt") is wrapper:
        del pipe.__dict__["encode_prompt"]


def per_model(conditioning: Sequence[Adapter | None] | Adapter | None, num_models: int,
              pipe: Any = None) -> list[Adapter | None]:
    """One adapter (or ``None``) per model, the large model's ``None``, from one per small model; with ``pipe``,
    ``ValueError`` now if an adapter needs the prompts and the pipeline has no ``encode_prompt`` to give them."""
    if conditioning is None:
        return [None] * num_models
    given = list(conditioning) if isinstance(conditioning, (list, tuple)) else [conditioning]
    if len(given) != num_models - 1:
        raise ValueError(f"conditioning: {len(given)} adapters for {num_models - 1} small models (one per small "
                         "model, None for a model that shares the pipeline's conditioning)")
    for i, adapter in enumerate(given):
        if adapter is not None and not callable(adapter):
            raise ValueError(f"conditioning[{i}] must be callable (kwargs -> kwargs) or None, got "
                             f"{type(adapter).__name__}")
        if pipe is not None and hasattr(adapter, "set_prompt") and not callable(getattr(pipe, "encode_prompt", None)):
            raise ValueError(f"conditioning[{i}] encodes the prompts itself, but {type(pipe).__name__} has no "
                             "encode_prompt to take them from")
    return [*given, None]
