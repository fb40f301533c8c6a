# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Ready-made conditioning adapters (:mod:`tstitch.conditioning` says what an adapter is).

:class:`TextEncoderConditioning` is for a text-to-image pair whose small model has its own text encoder: it
encodes the pipeline call's prompt and negative prompt with that encoder once per call and hands the small model
those embeddings (``[negative; prompt]`` under classifier-free guidance, as diffusers' pipelines batch them).
It learns the prompts from the stitched pipeline's wrapped ``encode_prompt`` through its ``set_prompt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["TextEncoderConditioning"]


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
