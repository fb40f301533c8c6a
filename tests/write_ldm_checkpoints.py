# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Write random-weight stand-ins of the three LDM-S -> LDM files in their real layouts (CompVis Lightning
``.ckpt``): ``DIR/ldm_s.ckpt``, ``DIR/ldm.ckpt`` and ``DIR/vq-f8/model.ckpt``.

    python tests/write_ldm_checkpoints.py DIR           # the published shapes (about 1.9 GB in all)
    python tests/write_ldm_checkpoints.py DIR --tiny    # the same layouts at tiny widths (tests)

The real files cannot be downloaded here; these exercise ``tstitch sample --preset ldm-s-ldm`` end to end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ldm_reference import UNetSpec, VQSpec, random_unet_state_dict, random_vq_state_dict  # noqa: E402

#: (model_channels, context_dim) of LDM-S and LDM; tiny: the smallest widths of the same layout.
SHAPES = {False: {"ldm_s.ckpt": (64, 256), "ldm.ckpt": (256, 512)},
          True: {"ldm_s.ckpt": (32, 8), "ldm.ckpt": (32, 16)}}
VQ = {False: VQSpec(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attention=(False, False, False, True),
                    n_embed=16384),
      True: VQSpec(ch=32, ch_mult=(1, 2), num_res_blocks=1, attention=(False, True), n_embed=16)}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise FileExistsError(f"{path} exists; not overwriting it")
    partial = path.with_name(path.name + ".partial")
    torch.save({"state_dict": tensors, "global_step": 0}, partial)
    partial.rename(path)


def write_ldm_checkpoints(folder: Path, tiny: bool = False, seed: int = 0) -> list[Path]:
    """Write the three files under ``folder``; returns their paths."""
    paths = []
    for i, (name, (channels, context)) in enumerate(SHAPES[tiny].items()):
        spec = UNetSpec(model_channels=channels, channel_mult=(1, 2, 4), num_res_blocks=2, attention=(True,) * 3,
                        num_head_channels=32, context_dim=context)
        tensors = {f"model.diffusion_model.{k}": v for k, v in random_unet_state_dict(spec, seed + i).items()}
        generator = torch.Generator().manual_seed(seed + 10 + i)
        tensors["cond_stage_model.embedding.weight"] = torch.randn(1000, context, generator=generator)
        _save(tensors, folder / name)
        paths.append(folder / name)
    _save(random_vq_state_dict(VQ[tiny], seed + 20), folder / "vq-f8" / "model.ckpt")
    paths.append(folder / "vq-f8" / "model.ckpt")
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    for written in write_ldm_checkpoints(args.folder, args.tiny):
        print(written, f"{written.stat().st_size / 1e6:.1f} MB")
