# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Region-level stitching for DiTs: a hybrid step in which the large model computes only some tokens.

A :class:`HybridDenoiser` takes a small and a large ``DiTTransformer2DModel`` and is called like the large model
(``hidden_states, timestep, class_labels, return_dict``), so it is one more model of an ordinary stitch::

    hybrid = HybridDenoiser(small, pipe.transformer, mask_fraction=0.3)
    tstitch.stitch(pipe, [small, hybrid], Plan.parse("XL4 > H8 > S8", names=["S", "H", "XL"]))
    hybrid.attach(pipe)          # unstitch(pipe) then removes its hooks; its record follows the pipeline's runs

At a hybrid step the small model denoises every token; the large model runs its blocks (queries, MLP, norms)
on ``ceil(mask_fraction * num_tokens)`` tokens per sample only. Their attention is over all tokens: fresh keys
and values for the selected tokens, and for the others the keys and values of the large model's **last full
call on this batch**, captured by forward hooks on each block's ``to_k``/``to_v`` (and its output tokens on
``proj_out_2``) during any full call of the large model. The output (noise and, for learned-sigma DiTs, the
variance channels) is the large model's on the selected patches and the small model's elsewhere.

**Mask rule** (``rule="difference"``): per sample, the tokens where the small model's prediction now differs
most from the large model's prediction at its last full call (L2 over the patch's noise channels, the large
model's patch size), the top ``ceil(mask_fraction * N - 1e-9)``; ties go to the lower token index (a stable
sort). A callable ``rule(small_tokens, large_tokens) -> scores (batch, N)`` may replace it. With classifier-free
guidance the doubled batch ``[uncond; cond]`` gets one mask per row (each row its own top-k): the denoiser does
not know the batch layout, and a row's mask follows that row's own disagreement.

**The cache** is valid for a call with the same latent shape, dtype and device whose timestep is not above the
cached one (timesteps fall within a run; a higher one means a new run). Without a valid cache a hybrid call
runs the large model on every token (which also fills the cache) and records ``mode="fallback"``. The cache
is left as the full call wrote it (hybrid calls do not write their fresh keys into it). It holds two
``(batch, tokens, width)`` tensors per block: about 66 MB per sample for DiT-XL/2 in float32.

**U-Nets** (not implemented): the equivalent is a region mask on each resolution's feature maps, running the
large U-Net's convolutions only on the masked tiles plus a halo of the receptive field per layer (which grows
with depth, so at the 8x8 and 16x16 levels a 30% mask covers nearly everything), with the unmasked features
taken from the last full step, and sparse or gathered-tile convolutions. Its attention layers could use the
token scheme above. On a CPU, gathered-tile convolutions lose the dense im2col/oneDNN efficiency and the
halos add 2-3x the masked area at the low resolutions, so it would not pay at 30% masks; it pays on GPUs only
with sparse-convolution kernels (SIGE-style) and small masks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from ..compat import check_compatible
from ..stitcher import get_stitch
from .dit import check_dit, large_on_tokens, noise_tokens, patchify, unpatchify

__all__ = ["HybridDenoiser", "HybridCall", "HybridRecord", "FullStepCache", "RULES"]

logger = logging.getLogger(__name__)

Rule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _difference(small_tokens: torch.Tensor, large_tokens: torch.Tensor) -> torch.Tensor:
    """Per-token L2 distance ``(batch, N)`` between two ``(batch, N, patch_values)`` predictions."""
    return (small_tokens.float() - large_tokens.float()).square().sum(-1)


#: Mask rules by name: ``rule(small_tokens, large_tokens) -> scores (batch, N)``; the highest scores get the large
#: model. Tokens carry the noise channels only.
RULES: dict[str, Rule] = {"difference": _difference}


@dataclass
class HybridCall:
    """One call of a :class:`HybridDenoiser`.

    ``mode``: ``"region"`` (small model everywhere, large on ``tokens``), ``"fallback"`` (no valid cache: the large
    model on every token), ``"full"`` (``mask_fraction`` selects every token) or ``"small"`` (it selects none).
    ``tokens``: per batch row, the token indices (row-major patches of the large model) the large model computed.
    ``stitch_call``: the call's index in the stitched run's record (``get_record(pipe).calls``) when attached.
    """

    mode: str
    mask_fraction_used: float
    num_tokens: int
    tokens: list[list[int]]
    timestep: list[float]
    stitch_call: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class HybridRecord:
    """The calls of a :class:`HybridDenoiser` since its last run began (attached) or its last :meth:`reset`."""

    calls: list[HybridCall] = field(default_factory=list)

    @property
    def mask_fraction_used(self) -> list[float]:
        """The share of tokens the large model computed, per call."""
        return [call.mask_fraction_used for call in self.calls]

    def reset(self) -> None:
        self.calls.clear()

    def as_dict(self) -> dict[str, Any]:
        return {"calls": [call.as_dict() for call in self.calls]}


@dataclass
class FullStepCache:
    """The large model's last full call: keys and values per block, output tokens, input shape and timestep."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    tokens: torch.Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    timestep: torch.Tensor | None


def _timesteps(timestep: Any, batch: int) -> torch.Tensor | None:
    if timestep is None:
        return None
    values = torch.as_tensor(timestep).detach().flatten().float().cpu()
    return values.expand(batch).clone() if values.numel() == 1 else values


def _shown(t: torch.Tensor | None) -> str:
    """A call's timesteps for a log line: one number when the batch shares it (the usual case), else the range."""
    if t is None or not t.numel():
        return "?"
    low, high = float(t.min()), float(t.max())
    return f"{low:g}" if low == high else f"{low:g}..{high:g} ({t.numel()} samples)"


class HybridDenoiser(nn.Module):
    """A denoiser with the large model's call signature that runs the large model on a token subset.

    Args:
        small: a DiT whose outputs can stand in for ``large``'s (``tstitch.compat.check_compatible``).
        large: a ``DiTTransformer2DModel`` (adaLN-zero blocks, unfused projections).
        mask_fraction: share of tokens, in ``[0, 1]``, the large model computes at a hybrid step.
        rule: a name in :data:`RULES` or a callable ``(small_tokens, large_tokens) -> scores``.

    Forward hooks on ``large`` capture its keys and values at every full call; :meth:`remove` (or leaving a
    ``with`` block, or ``unstitch`` after :meth:`attach`) takes them off. ``config``, ``dtype`` and ``device`` are
    the large model's. :attr:`record` holds one :class:`HybridCall` per call.
    """

    def __init__(self, small: nn.Module, large: nn.Module, mask_fraction: float = 0.3,
                 rule: str | Rule = "difference"):
        super().__init__()
        check_dit(large)
        check_compatible(large, small, "small")
        if isinstance(mask_fraction, bool) or not isinstance(mask_fraction, (int, float)) or not (
            0.0 <= float(mask_fraction) <= 1.0
        ):
            raise ValueError(f"mask_fraction must be a number in [0, 1], got {mask_fraction!r}")
        if isinstance(rule, str) and rule not in RULES:
            raise ValueError(f"rule {rule!r} is not one of {', '.join(RULES)} (or give a callable)")
        self.small = small
        self.large = large
        self.mask_fraction = float(mask_fraction)
        self.rule: Rule = RULES[rule] if isinstance(rule, str) else rule
        self.in_channels = int(large.config.in_channels)
        self.out_channels = int(large.out_channels)
        self.training = large.training  # like the models it holds (this flag alone, not the submodules')
        self._tstitch_name = f"hybrid@{self.mask_fraction:g}"
        self.record = HybridRecord()
        self._cache: FullStepCache | None = None
        self._pending: dict[str, Any] | None = None
        self._embedded = -1
        self._own_call = False
        self._stitch_call: int | None = None
        self._attached: list[Any] = []
        self._handles = self._install_hooks()

    # -- what stitch(), sample() and compat read ------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.large.config

    @property
    def dtype(self) -> torch.dtype:
        return self.large.dtype

    @property
    def device(self) -> torch.device:
        return self.large.device

    def extra_repr(self) -> str:
        return f"mask_fraction={self.mask_fraction:g}"

    # -- the cache hooks ------------------------------------------------------------------------------------
    def _install_hooks(self) -> list[Any]:
        blocks = self.large.transformer_blocks
        handles = [self.large.pos_embed.register_forward_hook(self._on_embed),
                   blocks[0].norm1.register_forward_pre_hook(self._on_start)]
        for i, block in enumerate(blocks):
            handles.append(block.attn1.to_k.register_forward_hook(self._keeper("keys", i)))
            handles.append(block.attn1.to_v.register_forward_hook(self._keeper("values", i)))
        handles.append(self.large.proj_out_2.register_forward_hook(self._on_end))
        return handles

    def _on_embed(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._embedded = output.shape[1]  # the call's token count: a capture must see every token

    def _on_start(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if self._own_call or x.shape[1] != self._embedded:  # ours, or a token subset (large_on_tokens)
            self._pending = None
            return
        timestep = args[1] if len(args) > 1 else None
        n = len(self.large.transformer_blocks)
        self._pending = {"keys": [None] * n, "values": [None] * n, "timestep": _timesteps(timestep, x.shape[0])}

    def _keeper(self, kind: str, index: int) -> Callable:
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not self._own_call and self._pending is not None:
                self._pending[kind][index] = output.detach()
        return keep

    def _on_end(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        pending, self._pending = self._pending, None
        if self._own_call or pending is None or any(t is None for t in (*pending["keys"], *pending["values"])):
            return
        self._cache = self._make_cache(pending["keys"], pending["values"], output.detach(), pending["timestep"])

    def _make_cache(self, keys: list, values: list, tokens: torch.Tensor, timestep: torch.Tensor | None
                    ) -> FullStepCache:
        p = self.large.patch_size
        side = math.isqrt(tokens.shape[1]) * p
        shape = (tokens.shape[0], self.in_channels, side, side)
        return FullStepCache(keys, values, tokens, shape, tokens.dtype, tokens.device, timestep)

    def _cache_for(self, x: torch.Tensor, timestep: torch.Tensor | None) -> FullStepCache | None:
        cache = self._cache
        if cache is None or cache.shape != tuple(x.shape) or cache.dtype != x.dtype or cache.device != x.device:
            return None
        if timestep is not None and cache.timestep is not None and bool((timestep > cache.timestep).any()):
            return None
        return cache

    @property
    def cache(self) -> FullStepCache | None:
        """The large model's last full call (keys, values, output tokens), or ``None``."""
        return self._cache

    def reset(self) -> None:
        """Forget the cached full step and the record."""
        self._cache = None
        self._pending = None
        self.record.reset()

    def remove(self) -> None:
        """Take the cache hooks off the large model, leave the stitches it was attached to, drop the cache."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for denoiser, callback in self._attached:
            if callback in denoiser.before_call:
                denoiser.before_call.remove(callback)
            if denoiser.extensions.get(self._extension_key) is self:
                del denoiser.extensions[self._extension_key]
        self._attached.clear()
        self._cache = None
        self._pending = None

    def __enter__(self) -> HybridDenoiser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # -- attaching to a stitch ------------------------------------------------------------------------------
    @property
    def _extension_key(self) -> str:
        return f"regions:{id(self)}"

    def attach(self, stitched: Any) -> HybridDenoiser:
        """Follow the runs of a stitched pipeline (or ``StitchedDenoiser``) that has this denoiser among its models:
        the record starts anew with each run and gives each call's index in the run's record; ``unstitch`` calls
        :meth:`remove`."""
        denoiser = get_stitch(stitched)
        if not any(model is self for model in denoiser.models):
            raise ValueError("this HybridDenoiser is not one of the stitch's models: stitch it first")
        if any(attached is denoiser for attached, _ in self._attached):
            return self

        def before_call(model_index: int) -> None:
            calls = len(denoiser.record.calls)
            if calls == 0:  # the first call of a run (the stitch's record was just reset): a fresh record, and no
                self.reset()  # cache left from another run (any full call of the large model fills it)
            if denoiser.models[model_index] is self:
                self._stitch_call = calls

        denoiser.before_call.append(before_call)
        denoiser.extensions[self._extension_key] = self
        self._attached.append((denoiser, before_call))
        return self

    def detach(self, stitched: Any) -> None:
        """Stop following the runs of ``stitched`` (attached with :meth:`attach`); the hooks stay."""
        denoiser = get_stitch(stitched)
        for attached, callback in list(self._attached):
            if attached is denoiser:
                if callback in denoiser.before_call:
                    denoiser.before_call.remove(callback)
                denoiser.extensions.pop(self._extension_key, None)
                self._attached.remove((attached, callback))

    # -- the call -------------------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, timestep: Any = None, class_labels: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None, return_dict: bool = True) -> Any:
        """The hybrid step (see the module's docstring); returns what the large model would."""
        output = self._hybrid(hidden_states, timestep, class_labels, cross_attention_kwargs)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    def _hybrid(self, x: torch.Tensor, timestep: Any, class_labels: Any, cross_kwargs: Any) -> torch.Tensor:
        p = self.large.patch_size
        batch, _, height, width = x.shape
        n = (height // p) * (width // p)
        k = math.ceil(self.mask_fraction * n - 1e-9)
        t = _timesteps(timestep, batch)
        cache = self._cache_for(x, t) if 0 < k < n else None
        stitch_call, self._stitch_call = self._stitch_call, None
        if k == 0:
            output = self._small(x, timestep, class_labels, cross_kwargs)
            return self._note("small", 0, n, [[] for _ in range(batch)], t, stitch_call, output)
        if cache is None:
            mode = "full" if k == n else "fallback"
            if mode == "fallback":
                logger.info("hybrid step at timestep %s: no full large-model step cached for this batch; the large "
                            "model ran on every token", _shown(t))
            every = torch.arange(n, device=x.device).expand(batch, n)
            self._own_call = True
            try:
                tokens, keys, values = large_on_tokens(self.large, x, timestep, class_labels, every, None)
            finally:
                self._own_call = False
            self._cache = self._make_cache(keys, values, tokens, t)
            output = unpatchify(tokens, p, self.out_channels, height, width)
            return self._note(mode, n, n, every.tolist(), t, stitch_call, output)
        small = self._small(x, timestep, class_labels, cross_kwargs)
        small_tokens = patchify(small, p)
        scores = self.rule(noise_tokens(small_tokens, p, self.in_channels),
                           noise_tokens(cache.tokens, p, self.in_channels))
        chosen = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        chosen = torch.sort(chosen, dim=1).values
        self._own_call = True
        try:
            tokens, _, _ = large_on_tokens(self.large, x, timestep, class_labels, chosen, cache)
        finally:
            self._own_call = False
        index = chosen.unsqueeze(-1).expand(-1, -1, small_tokens.shape[-1])
        merged = small_tokens.scatter(1, index, tokens.to(small_tokens.dtype))
        output = unpatchify(merged, p, self.out_channels, height, width)
        return self._note("region", k, n, chosen.tolist(), t, stitch_call, output)

    def _small(self, x: torch.Tensor, timestep: Any, class_labels: Any, cross_kwargs: Any) -> torch.Tensor:
        kwargs = {} if cross_kwargs is None else {"cross_attention_kwargs": cross_kwargs}
        result = self.small(x, timestep=timestep, class_labels=class_labels, return_dict=False, **kwargs)
        return result[0] if isinstance(result, (tuple, list)) else getattr(result, "sample", result)

    def _note(self, mode: str, k: int, n: int, tokens: list, t: torch.Tensor | None, stitch_call: int | None,
              output: torch.Tensor) -> torch.Tensor:
        timesteps = [] if t is None else t.tolist()
        self.record.calls.append(HybridCall(mode, k / n, n, tokens, timesteps, stitch_call))
        return output

