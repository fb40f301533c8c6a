# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Region-level stitching for DiTs (HybridStitch's hybrid stage): see :mod:`tstitch.regions.hybrid`.

``hybrid.py``: :class:`HybridDenoiser` (the hybrid step, its key/value cache, the mask rule, the record);
``dit.py``: a DiT's forward on a subset of its tokens with the other tokens' keys and values given.
"""

from .dit import large_on_tokens, patchify, unpatchify
from .hybrid import RULES, FullStepCache, HybridCall, HybridDenoiser, HybridRecord

__all__ = [
    "HybridDenoiser", "HybridCall", "HybridRecord", "FullStepCache", "RULES", "large_on_tokens", "patchify",
    "unpatchify",
]
