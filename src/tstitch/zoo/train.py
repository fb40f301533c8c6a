# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Training of the embedded family and of the digits classifier, reproducible from a seed.

Every model sees the same data (all 1,797 digits, scaled to [-1, 1]) and the same noise schedule
(:func:`tstitch.zoo.scheduler_config`); 10% label dropout to the null class 10 (built into the DiT, done
here in the loop for the U-Nets) trains the null class used by classifier-free guidance. Training uses
AdamW with warm-up and cosine decay, and keeps an EMA of the weights (diffusers' ``EMAModel``); the EMA
weights are the ones saved.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..utils import ensure_writable_dir, write_json
from . import CLASSIFIER_NAME, FAMILY, UNetSpec, build_model, save_weights, scheduler_config
from .classifier import DigitsClassifier
from .data import NUM_CLASSES, load_digits_tensors

logger = logging.getLogger(__name__)

__all__ = ["train_diffusion", "train_classifier", "train_zoo"]

#: Probability that a training label is replaced by the null class (the DiT's own ``class_dropout_prob``).
LABEL_DROPOUT = 0.1


def _lr_lambda(warmup: int, total: int, floor: float = 0.1):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def train_diffusion(
    name: str,
    steps: int | None = None,
    *,
    seed: int = 0,
    batch_size: int = 256,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one member of the family; returns the EMA model (eval mode) and a summary."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    spec = FAMILY[name] if name in FAMILY else None
    if spec is None:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(FAMILY)}")
    steps = spec.train_steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device)
    torch.manual_seed(seed)  # initialisation and the DiT's label dropout
    drop_labels = isinstance(spec, UNetSpec)  # the U-Nets' label dropout is done here
    images, labels = (t.to(device) for t in load_digits_tensors())
    model = build_model(name).to(device).train()
    noise_scheduler = DDPMScheduler(**scheduler_config())
    noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(min(250, steps // 10 + 1), steps))
    ema = EMAModel(model.parameters(), decay=ema_decay)
    generator = torch.Generator(device).manual_seed(seed + 1)

    start = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress)
    for step in bar:
        index = torch.randint(0, len(images), (batch_size,), generator=generator, device=device)
        clean, y = images[index], labels[index]
        if drop_labels:
            dropped = torch.rand(batch_size, generator=generator, device=device) < LABEL_DROPOUT
            y = torch.where(dropped, torch.full_like(y, NUM_CLASSES), y)
        noise = torch.randn(clean.shape, generator=generator, device=device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator,
                          device=device)
        noisy = noise_scheduler.add_noise(clean, noise, t)
        loss = F.mse_loss(model(noisy, timestep=t, class_labels=y).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(model.parameters())
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    seconds = time.perf_counter() - start
    ema.copy_to(model.parameters())
    model.eval().requires_grad_(False)
    summary = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "ema_decay": ema_decay,
        "seed": seed,
        "device": str(device),
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / steps, 5),
        "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 5),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, summary


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations by up to one pixel (zero = background = -1 padding)."""
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=generator, device=images.device).tolist()
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]


def train_classifier(
    steps: int = 2000,
    *,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train the digits classifier on 80% of the digits; the summary holds the held-out accuracy."""
    device = torch.device(device)
    torch.manual_seed(seed)
    images, labels = (t.to(device) for t in load_digits_tensors())
    generator = torch.Generator(device).manual_seed(seed + 1)
    order = torch.randperm(len(images), generator=generator, device=device)
    split = int(0.8 * len(images))
    train_idx, test_idx = order[:split], order[split:]
    model = DigitsClassifier(NUM_CLASSES).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(100, steps, floor=0.0))
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc="train classifier", disable=not progress):
        index = train_idx[torch.randint(0, split, (batch_size,), generator=generator, device=device)]
        batch = _shift(images[index], generator)
        batch = batch + 0.05 * torch.randn(batch.shape, generator=generator, device=device)
        loss = F.cross_entropy(model.logits(batch), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        accuracy = (model.logits(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    return model, {
        "steps": steps,
        "seed": seed,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 2),
        "held_out_accuracy": round(accuracy, 4),
        "held_out_size": len(test_idx),
    }


def train_zoo(
    out_dir: str | os.PathLike,
    names: Sequence[str] | None = None,
    *,
    steps: int | None = None,
    classifier_steps: int = 2000,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the classifier and the family into ``out_dir`` (safetensors + ``manifest.json``).

    ``steps`` overrides every model's training length (a smoke run uses a handful). Every argument is checked
    before training, and nothing in ``out_dir`` changes until every model is trained. Members not in
    ``names`` whose weights are already in ``out_dir`` keep their manifest entry (listed under
    ``"kept_from_earlier_run"``), so the manifest always describes the files beside it.
    """
    names = list(FAMILY) if names is None else list(names)
    if not names:
        raise ValueError(f"names is empty; give members of the family: {', '.join(FAMILY)}")
    for name in names:
        if name not in FAMILY:
            raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(FAMILY)}")
    if len(set(names)) != len(names):
        raise ValueError(f"names repeat a member: {names}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if classifier_steps < 1:
        raise ValueError(f"classifier_steps must be >= 1, got {classifier_steps}")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a torch device ({error})") from None
    out = ensure_writable_dir(out_dir)
    previous = _previous_manifest(out / "manifest.json")

    # train everything first: an error or Ctrl-C part-way leaves the folder as it was
    classifier, classifier_info = train_classifier(classifier_steps if steps is None else max(steps, 10),
                                                   seed=seed, device=device, progress=progress)
    logger.info("classifier: held-out accuracy %.4f", classifier_info["held_out_accuracy"])
    trained = {}
    for name in names:
        model, info = train_diffusion(name, steps, seed=seed, device=device, progress=progress)
        info["config"] = FAMILY[name].config()
        trained[name] = (model, info)
        logger.info("%s: %d steps, %.1f s, loss %.4f", name, info["steps"], info["seconds"], info["final_loss"])

    kept = {name: entry for name, entry in previous.get("models", {}).items()
            if name in FAMILY and name not in trained and (out / f"{name}.safetensors").is_file()}
    manifest: dict[str, Any] = {"seed": seed, "scheduler": scheduler_config(), "models": {}}
    for name in FAMILY:
        if name in trained:
            manifest["models"][name] = trained[name][1]
        elif name in kept:
            manifest["models"][name] = kept[name]
    manifest["classifier"] = classifier_info
    if kept:
        manifest["kept_from_earlier_run"] = sorted(kept, key=list(FAMILY).index)
    save_weights(classifier, out / f"{CLASSIFIER_NAME}.safetensors", {"summary": classifier_info})
    for name, (model, info) in trained.items():
        save_weights(model, out / f"{name}.safetensors", {"config": FAMILY[name].config(), "summary": info})
    write_json(out / "manifest.json", manifest)
    return manifest


def _previous_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        logger.warning("%s is unreadable (%s): it is replaced", path, error)
        return {}
    return stored if isinstance(stored, dict) else {}
