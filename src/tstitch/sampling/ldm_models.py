# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The LDM model wrappers: a CompVis class embedder (:class:`ClassEmbedder`) and a U-Net plus its own embedder
called like a class-conditional diffusers model (:class:`ClassConditionedUNet`). The published sampler
(:mod:`tstitch.sampling.ldm_official`), the LDM checkpoints, the LDM family and the embedded U-Net pair use them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

__all__ = ["ClassConditionedUNet", "ClassEmbedder"]


class ClassEmbedder(nn.Module):
    """CompVis ``ClassEmbedder``: a label table; ``forward(labels)`` gives the ``(B, 1, d)`` context."""

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embed_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels.long().reshape(-1))[:, None, :]


class ClassConditionedUNet(nn.Module):
    """A U-Net plus its own class embedder, called like a class-conditional diffusers model.

    ``forward(sample, timestep, class_labels=...)`` builds ``encoder_hidden_states = embedder(labels)``
    (``(B, 1, d)``); labels equal to ``null_class`` (default: the embedder's number of classes, e.g. 1000)
    get the unconditional context instead: zeros by default, or what :meth:`set_unconditional` stored: one
    ``(d,)`` vector for every null row, or ``(k, 1, d)`` rows for exactly ``k`` null rows, in batch order
    (the published random-uniform contexts). An explicit ``encoder_hidden_states`` is passed through.

    Its ``config`` is the U-Net's with ``num_class_embeds`` set to the class count (so that guidance finds
    the null label); ``owns_conditioning`` tells :func:`tstitch.compat.check_compatible` that two such models
    may have different context widths (each embeds the labels itself); ``denoiser_module`` names the U-Net
    inside for the model families and the caches (:func:`tstitch.caching.base.inner_denoiser`).
    """

    owns_conditioning = True

    def __init__(self, unet: nn.Module, embedder: nn.Module, null_class: int | None = None):
        super().__init__()
        self.unet = unet
        self.embedder = embedder
        num_classes = getattr(getattr(embedder, "embedding", None), "num_embeddings", None)
        self.null_class = null_class if null_class is not None else num_classes
        width = getattr(getattr(embedder, "embedding", None), "embedding_dim", None)
        self.unconditional: torch.Tensor | None = None if width is None else torch.zeros(width)

    @property
    def config(self) -> Any:
        from diffusers.configuration_utils import FrozenDict

        return FrozenDict({**self.unet.config, "num_class_embeds": self.null_class})

    @property
    def denoiser_module(self) -> nn.Module:
        return self.unet

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def set_unconditional(self, context: torch.Tensor | Literal["zeros"]) -> None:
        """The context for null labels: ``"zeros"``, a ``(d,)`` vector, or ``(k, 1, d)`` rows (in order)."""
        if isinstance(context, str):
            if context != "zeros":
                raise ValueError(f"unconditional context must be 'zeros' or a tensor, got {context!r}")
            context = torch.zeros(self.unconditional.shape[-1])
        self.unconditional = context.detach()

    def contexts(self, class_labels: torch.Tensor) -> torch.Tensor:
        """``(B, 1, d)`` contexts for ``class_labels``, the unconditional one for null labels."""
        labels = class_labels.long().reshape(-1)
        null = labels == self.null_class if self.null_class is not None else torch.zeros_like(labels, dtype=torch.bool)
        context = self.embedder(torch.where(null, torch.zeros_like(labels), labels)).clone()
        if null.any():
            if self.unconditional is None:
                raise ValueError("null labels given but no unconditional context is set")
            rows = self.unconditional.to(context).reshape(-1, context.shape[-1])
            count = int(null.sum())
            if rows.shape[0] not in (1, count):
                raise ValueError(f"{count} null labels but {rows.shape[0]} unconditional context rows")
            context[null] = rows.expand(count, -1)[:, None, :]
        return context

    def forward(self, sample: torch.Tensor, timestep: Any, class_labels: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if encoder_hidden_states is None:
            if class_labels is None:
                raise ValueError("ClassConditionedUNet needs class_labels (or encoder_hidden_states)")
            encoder_hidden_states = self.contexts(class_labels.to(sample.device))
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states.to(sample.dtype), **kwargs)
