# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The Inception-v3 network of FID (the TensorFlow graph of 2015-12-05, in the layout of its published PyTorch
ports), with its weights from a local file; nothing is downloaded.

Why a port here and not torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's network, which loads the same
weights file through ``feature_extractor_weights_path``): torch-fidelity imports torchvision, and the only
torchvision for torch 2.13 that the package index offers (0.28.0) is the CUDA build. Installed next to the CPU
torch (tried on 2026-11-26 in a fresh venv: pip keeps ``torch 2.13.0+cpu``), its operators do not load
(``RuntimeError: operator torchvision::nms does not exist``), and since torchmetrics imports torchvision and
torch-fidelity whenever they are installed, ``import torchmetrics`` itself then fails: the dependency would
break every metric of the package on CPU machines. Revisit when a CPU torchvision for the pinned torch is
installable. On one random weights file, torch-fidelity 0.4.0's ``FeatureExtractorInceptionV3`` (its module
loaded alone, past the package's torchvision import) and this port gave the same pool features and unbiased
logits up to 3e-8 (float32 round-off) at 8 x 8 and 32 x 32 inputs, and identical ones at 299 x 299.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

#: Environment variable naming the local Inception weights file.
INCEPTION_WEIGHTS_ENV = "TSTITCH_INCEPTION_WEIGHTS"
#: The FID Inception weights (pytorch-fid's name; torch-fidelity ships the same network as
#: ``weights-inception-2015-12-05-6726825d.pth``).
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)


def resize_like_tensorflow(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` as TensorFlow 1's ``resize_bilinear`` (no half-pixel centres).

    Output pixel ``o`` samples the input at ``o * in / out``, which is what the FID graph does (and what
    ``F.interpolate`` does not).
    """
    if images.ndim < 2 or len(size) != 2 or min(size) < 1:
        raise ValueError(f"resize needs images (..., H, W) and a size (height, width) >= 1, got images of shape "
                         f"{tuple(images.shape)} and size {size!r}")
    out = images
    for axis, (length, target) in enumerate(zip(images.shape[-2:], size, strict=True)):
        if length == target:
            continue
        source = torch.arange(target, dtype=torch.float64) * (length / target)
        low = source.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        weight = (source - low).to(images.dtype).to(images.device)
        dim = out.ndim - 2 + axis
        shape = [1] * out.ndim
        shape[dim] = target
        weight = weight.reshape(shape)
        out = out.index_select(dim, low.to(images.device)) * (1 - weight) + \
            out.index_select(dim, high.to(images.device)) * weight
    return out


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: Inception's basic unit."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the average.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):  # 35 x 35 grid: 1x1, 5x5, double 3x3, pooled 1x1
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class _ReduceB(nn.Module):  # 35 -> 17 grid reduction
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _MixedC(nn.Module):  # 17 x 17 grid: factorised 7x7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for i in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{i}")(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_avg_pool(x)),
        ], 1)


class _ReduceD(nn.Module):  # 17 -> 8 grid reduction
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):  # 8 x 8 grid: expanded 3x3 branches; the last block max-pools (as the FID graph)
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3Features(nn.Module):
    """The Inception-v3 of FID: uint8 images in, 2048-d pool features and 1008 unbiased logits out.

    Module names follow the published PyTorch port, so the file ``pt_inception-2015-12-05-6726825d.pth``
    (pytorch-fid) or ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity) loads as it is (see
    :func:`load_inception`). Input: ``(N, 3, H, W)`` uint8 (or float in 0..255), resized to 299 x 299 as
    TensorFlow 1 does and scaled to ``(x - 128) / 128``. Built randomly initialised; call :func:`load_inception`
    for the real network.
    """

    num_features = 2048
    num_logits = 1008
    input_size = 299

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReduceB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _ReduceD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)
        self.fc = nn.Linear(2048, self.num_logits)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionV3Features:
        return super().train(False)  # batch norm always uses its running statistics

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pool features (N, 2048), unbiased logits (N, 1008))`` of ``images``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the Inception network takes images (N, 3, H, W), got shape {tuple(images.shape)}")
        x = resize_like_tensorflow(images.float(), (self.input_size, self.input_size))
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool = x.mean(dim=(2, 3))
        return pool, pool @ self.fc.weight.T  # logits without the bias, as Inception Score uses them


def _weights_help() -> str:
    return (f"set {INCEPTION_WEIGHTS_ENV} or pass --inception-weights: the file {INCEPTION_WEIGHTS_FILE} "
            f"(download it on a machine with internet access from {INCEPTION_WEIGHTS_URLS[0]} or, the same "
            f"network, {INCEPTION_WEIGHTS_URLS[1]})")


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path``, else ``$TSTITCH_INCEPTION_WEIGHTS``; ``FileNotFoundError`` saying
    where to get it when neither names an existing file."""
    path = path or os.environ.get(INCEPTION_WEIGHTS_ENV)
    if not path:
        raise FileNotFoundError(f"no Inception weights given for FID / Inception Score: {_weights_help()}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"Inception weights {path} not found: {_weights_help()}")
    return Path(path)


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionV3Features:
    """The FID Inception network with its weights from ``path`` (default: ``$TSTITCH_INCEPTION_WEIGHTS``).

    Raises ``FileNotFoundError`` saying where to get the file when none is given or it is missing, and
    ``ValueError`` when the file does not hold this network.
    """
    path = find_inception_weights(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling errors have no common base class
            raise ValueError(f"cannot read Inception weights {path}: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    model = InceptionV3Features()
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that do not fit
        raise ValueError(f"{path} is not the FID Inception network ({error}); {_weights_help()}") from error
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path} is not the FID Inception network: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}; {_weights_help()}")
    return model.to(device)


