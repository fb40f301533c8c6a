# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Whether a small model can stand in for a pipeline's large model: the config fields that must agree."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["check_compatible", "COMPATIBLE_FIELDS", "CONDITIONING_FIELDS"]

_MISSING = object()

#: Config fields that must agree between stitched models (compared when both configs have them).
COMPATIBLE_FIELDS = (
    ("in_channels", "latent channels"),
    ("out_channels", "output channels (learned sigma)"),
    ("sample_size", "sample size"),
    ("num_embeds_ada_norm", "class count"),
    ("num_class_embeds", "class count"),
    ("cross_attention_dim", "cross-attention width"),
    ("joint_attention_dim", "cross-attention width"),
    ("caption_channels", "cross-attention width"),
    ("pooled_projection_dim", "pooled text width"),
    ("encoder_hid_dim", "text projection width"),
    ("addition_embed_type", "added conditioning"),
    ("addition_time_embed_dim", "added conditioning"),
    ("projection_class_embeddings_input_dim", "added conditioning"),
    ("time_cond_proj_dim", "guidance embedding"),
    ("prediction_type", "prediction type"),
)

#: The fields that describe the conditioning a model takes: not compared for a model with its own conditioning
#: (an adapter, or two models that each turn the call's labels into their own contexts).
CONDITIONING_FIELDS = frozenset({
    "cross_attention_dim", "joint_attention_dim", "caption_channels", "pooled_projection_dim", "encoder_hid_dim",
    "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
})


def _config_value(model: nn.Module, key: str) -> Any:
    value = getattr(model, "config", {}).get(key, _MISSING) if hasattr(model, "config") else _MISSING
    if key in ("in_channels", "out_channels") and isinstance(model.__dict__.get(key), int):
        return model.__dict__[key]  # the effective value (DiT stores out_channels=None in its config)
    return value


def check_compatible(large: nn.Module, small: nn.Module, name: str = "small model", *,
                     own_conditioning: bool = False) -> None:
    """Raise ``ValueError`` naming the first config field where ``small`` cannot stand in for ``large``.

    With ``own_conditioning`` (``small`` has a conditioning adapter), or when both models say they turn the
    call's conditioning into their own inputs (``owns_conditioning = True``, e.g. an LDM U-Net with its own
    class embedder), the :data:`CONDITIONING_FIELDS` may differ.
    """
    own_conditioning = own_conditioning or (
        getattr(large, "owns_conditioning", False) is True and getattr(small, "owns_conditioning", False) is True
    )
    for key, meaning in COMPATIBLE_FIELDS:
        if own_conditioning and key in CONDITIONING_FIELDS:
            continue
        want, got = _config_value(large, key), _config_value(small, key)
        if want is _MISSING or got is _MISSING:
            continue
        if isinstance(want, list):
            want = tuple(want)
        if isinstance(got, list):
            got = tuple(got)
        if want != got:
            raise ValueError(
                f"{name} does not match the pipeline's model: its {meaning} (config.{key}) is {got!r}, "
                f"the pipeline's is {want!r}"
            )
