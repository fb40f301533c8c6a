# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Per-model conditioning: a stitched model that does not share the pipeline's (or the loop's) conditioning.

An *adapter* is a callable ``adapter(kwargs) -> kwargs``: given the keyword arguments of a denoiser call (the
large model's signature, positional arguments bound to their names: ``sample``, ``timestep``,
``encoder_hidden_states``, ``class_labels``, ``added_cond_kwargs``, ...), it returns the arguments of its
model's call. ``tstitch.stitch(pipe, small, 0.4, conditioning=[adapter])`` gives ``small`` its adapter; a
model without one (``None``) gets the call unchanged, exactly as without this feature.

:class:`TextEncoderConditioning` is the ready-made adapter for a text-to-image pair whose small model has
its own text encoder: it encodes the pipeline call's prompt and negative prompt with that encoder once per
call and hands the small model those embeddings (``[negative; prompt]`` under classifier-free guidance, as
diffusers' pipelines batch them). It learns the prompt from the pipeline itself: while stitched, the
pipeline's ``encode_prompt`` is wrapped (:func:`capture_prompts`), so every adapter with a ``set_prompt``
method sees the prompt, negative prompt and images per prompt of each call before the denoising starts.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["Adapter", "TextEncoderConditioning", "adapted_call", "capture_prompts", "release_prompts", "per_model"]

logger = logging.getLogger(__name__)

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


class TextEncoderConditioning:
    """A small text-to-image model's own text encoder: its embeddings of the pipeline call's prompts.

    Args:
        tokenizer, text_encoder: the small model's (a transformers tokenizer and text encoder, e.g. CLIP).
        key: the call argument to replace (``encoder_hidden_states``).

    :meth:`set_prompt` (called by the pipeline's wrapped ``encode_prompt``, once per call) encodes the prompts;
    each denoiser call of the model then gets them in place of the large model's: the prompts' embeddings for
    a batch of ``N`` images, ``[negative; prompt]`` for a guided batch of ``2N``.
    """

    def __init__(self, tokenizer: Any, text_encoder: Any, *, key: str = "encoder_hidden_states"):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.key = key
        self.prompt_embeds: torch.Tensor | None = None
        self.negative_embeds: torch.Tensor | None = None
        self.calls = 0  # encodings made (one per pipeline call)

    @property
    def width(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(len(texts), tokens, width)``: the last hidden state, as diffusers' SD pipelines use it."""
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(ids.to(device))[0]

    def set_prompt(self, prompt: str | Sequence[str] | None, negative_prompt: str | Sequence[str] | None = None,
                   num_images_per_prompt: int = 1) -> None:
        """Encode a pipeline call's prompts (``None``: the call gave embeddings, not text)."""
        self.prompt_embeds = self.negative_embeds = None
        if prompt is None:
            return
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if negative_prompt is not None else ""
        negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts")
        repeat = max(int(num_images_per_prompt or 1), 1)
        self.prompt_embeds = self.encode(prompts).repeat_interleave(repeat, dim=0)
        self.negative_embeds = self.encode(negatives).repeat_interleave(repeat, dim=0)
        self.calls += 1

    def __call__(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        context = kwargs.get(self.key)
        if self.prompt_embeds is None:
            raise ValueError("TextEncoderConditioning has no prompt to encode: call the pipeline with prompt= "
                             "(text), not prompt_embeds=")
        count = self.prompt_embeds.shape[0]
        batch = context.shape[0] if isinstance(context, torch.Tensor) else count
        if batch == count:
            own = self.prompt_embeds
        elif batch == 2 * count:
            own = torch.cat([self.negative_embeds, self.prompt_embeds])  # diffusers' order: unconditional first
        else:
            raise ValueError(f"{self.key} has batch {batch}; the captured prompts give {count} (or {2 * count} "
                             "with guidance)")
        like = context if isinstance(context, torch.Tensor) else own
        return {**kwargs, self.key: own.to(device=like.device, dtype=like.dtype)}


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
