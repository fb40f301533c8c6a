# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch sample``: sample images with a stitch of a preset or of your own models (parsing and printing)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from ..models.presets import MODES, PRESETS, describe_presets
from ..names import EMBEDDED_MODELS, SCHEDULER_NAMES, scheduler_name
from .checks import (
    SEED,
    add_overwrite,
    cache_option,
    device,
    existing_folder,
    integer,
    one_of,
    out_folder,
    plan_option,
    real,
    text,
)

#: Models with fewer parameters than this run on one CPU thread unless --threads says otherwise.
TINY = 10_000_000

EPILOG = """\
examples:
  # offline, on a CPU, in a few seconds: the embedded digits family, 40% of the steps on the small model,
  # and the large model alone from the same noise for comparison
  tstitch sample --preset digits --fraction 0.4 --compare --out outputs/digits

  # the paper's headline pair (downloads DiT-XL/2 and the VAE from the Hugging Face hub; DiT-S/2 was
  # released by the T-Stitch authors as a file, dit_s_256.pt: download it and point --checkpoint-dir at it)
  tstitch sample --preset dit-s-xl --checkpoint-dir pretrained_models --fraction 0.4 --class-labels 207 88

  # three models, published sampler with DDPM, 50 steps
  tstitch sample --preset dit-s-b-xl --fractions 0.3 0.2 --scheduler ddpm --steps 50

  # Stable Diffusion 1.5 with BK-SDM-Tiny for the first 40% of the steps
  tstitch sample --preset sd15-bksdm-tiny --prompt "a squirrel in the park" --device cuda

  # your own checkpoints, smallest first (official .pt/.safetensors files, diffusers folders, hub ids)
  tstitch sample --model my/dit_s.pt --model facebook/DiT-XL-2-256 --fraction 0.3 --steps 50

  # the per-step plan found by `tstitch tune` (S8 > XL11 > S1: the small model also takes the last step)
  tstitch tune --out runs/tune --models digits-s digits-b digits-xl
  tstitch sample --preset digits-s-b-xl --plan runs/tune/plan.json --compare

  # feature caching on top: First Block Cache on the large model, TaylorSeer on the small one
  tstitch sample --preset digits --fraction 0.4 --cache first-block:0.05 --cache digits-s=taylorseer:3

  # what the presets hold
  tstitch sample --list-presets

Files written to --out: grid.png (one row per run, the same noise in each column), sample-000.png ...
(one per image), large-000.png ... with --compare, summary.json (settings, steps and seconds per
model) and tstitch-outputs.json (what tstitch wrote there: other files of those names are refused unless
--overwrite, and a rerun removes its own stale images; see docs/refused-inputs.md). Models that are
not available offline (HF_HUB_OFFLINE=1) are named in the error, with how to get them."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="sample images with a stitch of a preset or of your own models",
        description="Sample images with trajectory stitching: the small model(s) run the first, noisy fraction "
        "of the denoising steps and the large model the rest. Choose the models with --preset (the published "
        "pairs, or the embedded digits family that works offline) or with --model (repeat it, smallest first).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = parser.add_argument_group("models")
    models.add_argument("--preset", type=one_of("preset", list(PRESETS)),
                        help=f"a named model pair: {', '.join(PRESETS)} (see --list-presets)")
    models.add_argument("--model", action="append", metavar="PATH_OR_ID",
                        help="a model, repeated smallest first (the last is the large model): an official DiT "
                        f".pt/.safetensors file, a diffusers folder, a hub id, or {'/'.join(EMBEDDED_MODELS)}. "
                        "With --preset: replaces the preset's models, one per model")
    models.add_argument("--checkpoint-dir", metavar="DIR", type=existing_folder,
                        help="folder with downloaded checkpoint files (dit_s_256.pt, dit_b_256.pt, "
                        "DiT-XL-2-256x256.pt); also searched: $TSTITCH_CHECKPOINT_DIR, ./pretrained_models")
    models.add_argument("--vae", metavar="PATH_OR_ID", help="VAE for DiT latents (default stabilityai/sd-vae-ft-ema)")
    models.add_argument("--timestep-embedding", choices=("auto", "official", "diffusers"),
                        help="timestep features of DiTs given with --model: official DiT or diffusers numerics "
                        "(default auto: official for official .pt files; presets use official)")
    models.add_argument("--list-presets", action="store_true", help="print the presets and exit")

    schedule = parser.add_argument_group("stitching and sampling")
    fraction = schedule.add_mutually_exclusive_group()
    fraction.add_argument("--fraction", type=real(0, 1), metavar="R",
                          help="share of the steps run by the small model, two models (default: the preset's, 0.4)")
    fraction.add_argument("--fractions", type=real(0, 1), nargs="+", metavar="R",
                          help="shares of the small models, smallest first, for three or more models")
    fraction.add_argument("--plan", type=plan_option, metavar="PLAN",
                          help="which model runs each step: a plan file (tstitch.save_plan's JSON, or the folder of "
                          "`tstitch tune --out`), a per-step plan with the models' short names ('S8 > XL12', "
                          "'XL8 > H8 > S9' with --region), or an adaptive plan ('adaptive(small-first, "
                          "x0-change>0.15, 0.2..0.6)', two models, each sample switching at its own step); its models "
                          "must be the run's, and a per-step plan's step count the run's --steps (default: the plan's)")
    schedule.add_argument("--region", type=real(0, 1), metavar="MASK",
                          help="region-level stitching (DiTs): add the hybrid model H, the first small model on every "
                          "token and the large model on this share of them, before the large model; use H in a "
                          "per-step --plan (docs/regions.md)")
    schedule.add_argument("--steps", type=integer(1, 1000),
                          help="sampling steps, in [1, 1000] (default: the preset's; DiT 100, digits 25, "
                          "Stable Diffusion the pipeline's 50)")
    schedule.add_argument("--scheduler", type=one_of("scheduler", SCHEDULER_NAMES, scheduler_name),
                          help=f"{', '.join(SCHEDULER_NAMES)} (default: the preset's or the pipeline's "
                          "own)")
    schedule.add_argument("--mode", choices=MODES,
                          help="diffusers: the bare loop with a diffusers scheduler; official: the published DiT "
                          "sampler (ddim/ddpm, respaced timesteps, guidance on 3 channels) to reproduce the paper "
                          "(default: official for the DiT presets, diffusers otherwise)")
    schedule.add_argument("--guidance", type=real(0, 100), metavar="SCALE",
                          help="classifier-free guidance scale in [0, 100] (default: DiT 1.5, digits 1.0, SD the "
                          "pipeline's)")
    schedule.add_argument("--cache", action="append", type=cache_option, metavar="[MODEL=]SPEC",
                          help="feature caching, repeatable: SPEC for the large model, MODEL=SPEC (a name or index "
                          "of the models) for one model; SPEC is first-block:THRESHOLD or "
                          "taylorseer:INTERVAL[:WARMUP[:ORDER]] (DiTs), deepcache:INTERVAL (U-Nets), or none. Each "
                          "model keeps its own cache state, reset every run (docs/caching.md)")
    schedule.add_argument("--compare", action="store_true",
                          help="also sample with the large model alone from the same noise; print both times")
    schedule.add_argument("--no-warmup", action="store_true",
                          help="skip the short untimed run that keeps one-off costs out of the timings")

    what = parser.add_argument_group("what to sample")
    what.add_argument("--class-labels", type=integer(0), nargs="+", metavar="Y",
                      help="class labels, one image each (class-conditional models; default: the preset's)")
    what.add_argument("--prompt", action="append", metavar="TEXT", type=text,
                      help="prompt, repeatable (text-to-image pipelines)")
    what.add_argument("--negative-prompt", metavar="TEXT", help="negative prompt (text-to-image pipelines)")
    what.add_argument("--num-images", type=integer(1, 10_000), metavar="N",
                      help="images to sample, at most 10,000 (default one per label/prompt; labels and prompts "
                      "repeat to fill it)")
    what.add_argument("--batch-size", type=integer(1), metavar="B", help="images per model call (default: all at once)")
    what.add_argument("--size", type=integer(64, 4096), metavar="PIXELS",
                      help="image height and width, a multiple of 8 (text-to-image pipelines)")
    what.add_argument("--seed", type=SEED, default=0, help="seed of the initial noise, in [0, 2**63 - 1] "
                      "(default: %(default)s)")

    run_group = parser.add_argument_group("where")
    run_group.add_argument("--device", default="auto", type=device(allow_auto=True),
                           help="torch device: cpu, cuda, cuda:1 ... "
                           "(default: cuda if available)")
    run_group.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                           help="precision (default auto: float16 for pipelines on CUDA, else float32)")
    run_group.add_argument("--offline", action="store_true", help="never use the network (like HF_HUB_OFFLINE=1)")
    run_group.add_argument("--threads", type=integer(1, 1024), metavar="N",
                           help="CPU threads for torch (default: 1 for models under 10M parameters on a CPU, "
                           "where threads only add overhead; torch's own default otherwise)")
    run_group.add_argument("--out", default="outputs/sample", type=out_folder,
                           help="output folder (default: %(default)s)")
    add_overwrite(run_group)
    run_group.add_argument("--no-progress", action="store_true", help="hide progress bars")
    fast = parser.add_argument_group(
        "fast paths", "on CUDA, class-conditional models in the bare loop run by default in bf16 (float32 latents), "
        "torch.compile'd, through a CUDA graph per model, with TF32 and the fused attention kernels; on a CPU and in "
        "--mode official nothing changes. Each option can be switched off.")
    fast.add_argument("--no-fast-paths", action="store_true", help="none of them (fp32 eager, as on a CPU)")
    fast.add_argument("--no-bf16", action="store_true", help="keep the models' precision (--dtype)")
    fast.add_argument("--no-compile", action="store_true", help="no torch.compile")
    fast.add_argument("--no-cuda-graphs", action="store_true", help="no CUDA graphs")
    fast.add_argument("--no-tf32", action="store_true", help="no TF32 for float32 matrix products")
    fast.add_argument("--attention", choices=("auto", "flash", "math"), default="flash",
                      help="attention kernels allowed (default: %(default)s, the fused ones)")
    parser.set_defaults(func=run)


def _fast_paths(args: argparse.Namespace, device: Any) -> Any:
    """The fast paths of this run: the device's default (nothing on a CPU) less what the flags switch off."""
    from ..models.fastpaths import FastPaths

    if args.no_fast_paths:
        return None
    return FastPaths.for_device(device, **({} if device.type != "cuda" else dict(
        dtype=None if args.no_bf16 or args.dtype != "auto" else "bf16", compile=not args.no_compile,
        cuda_graphs=not args.no_cuda_graphs, tf32=not args.no_tf32, attention=args.attention)))


def _check_args(args: argparse.Namespace) -> None:
    if not args.preset and not args.model:
        raise ValueError("choose models: --preset NAME (see --list-presets) or --model PATH_OR_ID, repeated "
                         "smallest first")
    if args.fractions and sum(args.fractions) > 1.0 + 1e-6:
        raise ValueError(f"--fractions sum to {sum(args.fractions):g}, more than 1")
    if args.negative_prompt is not None and not args.prompt:
        raise ValueError("--negative-prompt applies with --prompt (text-to-image pipelines)")
    if args.size is not None and args.size % 8:
        raise ValueError(f"--size must be a multiple of 8, got {args.size}")
    if args.preset and args.timestep_embedding:
        raise ValueError("--timestep-embedding applies to --model without --preset (presets use the official one)")
    if not args.preset and args.checkpoint_dir:
        raise ValueError("--checkpoint-dir applies to presets; give files directly with --model PATH")
    _check_plan_args(args)
    if args.preset:
        if PRESETS[args.preset].kind == "pipeline" and importlib.util.find_spec("transformers") is None:
            raise ValueError(f"preset {args.preset!r} is a Stable Diffusion pipeline: its text encoder needs the "
                             "transformers package, which is not installed. Install the extra: "
                             "pip install 'tstitch[sd]'")


def _check_plan_args(args: argparse.Namespace) -> None:
    """--plan and --region against the other flags (and the preset), before any model is loaded."""
    from ..models.loaded import OFFICIAL_MODES

    preset = PRESETS[args.preset] if args.preset else None
    mode = args.mode or (preset.mode if preset is not None and not args.model else None)
    adaptive = getattr(args.plan, "adaptive", None) is not None
    if adaptive:
        if preset is not None and preset.kind == "pipeline":
            raise ValueError(f"--plan {args.plan}: adaptive plans run class-conditional models in tstitch sample, "
                             f"not the pipeline preset {args.preset!r}")
        if mode in OFFICIAL_MODES:
            raise ValueError(f"--plan {args.plan}: an adaptive plan runs in the bare loop, not the published DiT "
                             f"sampler (mode {mode!r}): use --mode diffusers")
        if args.cache:
            raise ValueError(f"--plan {args.plan}: an adaptive plan splits a batch between the models; feature "
                             "caches (--cache) do not follow the split: drop --cache")
    if args.region is None:
        return
    if preset is not None and (preset.kind == "pipeline" or preset.family not in ("dit", "digits")):
        raise ValueError(f"--region (region-level stitching) needs class-conditional DiTs; preset {args.preset!r} "
                         f"is {'a pipeline' if preset.kind == 'pipeline' else 'a ' + preset.family + ' family'}")
    if args.plan is None or adaptive:
        raise ValueError("--region adds the hybrid model H: give a per-step --plan that uses it, e.g. "
                         "--plan 'XL8 > H8 > S9'")
    if mode in OFFICIAL_MODES:
        raise ValueError(f"--region: a per-step plan runs in the bare loop, not the published DiT sampler (mode "
                         f"{mode!r}): use --mode diffusers")
    if args.cache:
        raise ValueError("--region: feature caches (--cache) do not apply to the hybrid model's runs; drop --cache")


def _with_region(loaded: Any, mask_fraction: float) -> Any:
    """``loaded`` with the hybrid model (the first small model and the large one) before the large model."""
    from dataclasses import replace

    from ..experiments.sample_plans import HYBRID
    from ..models.loaded import ClassConditionalModels
    from ..regions import HybridDenoiser

    if not isinstance(loaded, ClassConditionalModels):
        raise ValueError(f"--region (region-level stitching) needs class-conditional DiTs, not the pipeline "
                         f"{loaded.label}")
    try:
        hybrid = HybridDenoiser(loaded.models[0], loaded.large, mask_fraction=mask_fraction)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--region (region-level stitching) needs DiTs: {error}") from None
    return replace(loaded, models=[*loaded.models[:-1], hybrid, loaded.large],
                   names=[*loaded.names[:-1], HYBRID, loaded.names[-1]])


def _named_plan(text: str, names: list[str]) -> Any:
    """A per-step plan's text over the models' short names (``S``, ``XL``, ``H``)."""
    from ..experiments.sample_plans import plan_names
    from ..plan import Plan

    short = plan_names(names)
    try:
        return Plan.parse(text, short)
    except ValueError as error:
        raise ValueError(f"--plan {text!r}: {error}") from None


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def _describe_run(run) -> str:
    parts = [f"{n} {s} steps" for n, s in zip(run.model_names, run.steps_per_model, strict=True) if s]
    per_model = ", ".join(f"{n} {_fmt_seconds(t)}" for n, t, s in
                          zip(run.model_names, run.model_seconds, run.steps_per_model, strict=True) if s)
    return f"{' + '.join(parts)}: {_fmt_seconds(run.seconds)} (in the denoisers: {per_model})"


def _request(args: argparse.Namespace, device: Any) -> Any:
    """The flags as a :class:`SampleOptions` request, checked as it is made (before any model is loaded);
    the caches are added once the models' names are known."""
    from ..experiments.run_spec import SampleOptions

    return SampleOptions(
        fractions=[args.fraction] if args.fraction is not None else args.fractions,
        plan=None if isinstance(args.plan, str) else args.plan,
        num_steps=args.steps, scheduler=args.scheduler, mode=args.mode, guidance_scale=args.guidance,
        class_labels=args.class_labels, prompts=args.prompt, negative_prompt=args.negative_prompt,
        num_images=args.num_images, batch_size=args.batch_size, seed=args.seed, size=args.size,
        progress=not args.no_progress, warmup=not args.no_warmup, fast=_fast_paths(args, device),
    )


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        print(describe_presets())
        return 0
    _check_args(args)
    from dataclasses import replace

    import torch

    from ..caching import parse_cache_option
    from ..experiments.generate import generate
    from ..experiments.images import save_images
    from ..models.loading import load_models, load_preset
    from ..outputs import OutputFolder
    from ..utils import staged_writes

    device = _device(args.device)
    options = _request(args, device)
    # refuse an unwritable folder, or files tstitch did not write there, before loading anything
    folder = OutputFolder(args.out, "sample", names=("grid.png", "summary.json"),
                          patterns=("sample-[0-9][0-9][0-9]*.png", "large-[0-9][0-9][0-9]*.png"),
                          overwrite=args.overwrite)
    folder.check()
    out = folder.path
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    offline = True if args.offline else None
    if args.preset:
        loaded = load_preset(args.preset, device=device, dtype=dtype, local_files_only=offline,
                             checkpoint_dir=args.checkpoint_dir, models=args.model, vae=args.vae)
    else:
        loaded = load_models(args.model, device=device, dtype=dtype, local_files_only=offline, vae=args.vae,
                             timestep_embedding=args.timestep_embedding or "auto")
    if args.region is not None:
        loaded = _with_region(loaded, args.region)
    if isinstance(args.plan, str):  # a per-step plan's text, read with the models' short names
        options = replace(options, plan=_named_plan(args.plan, list(loaded.names)))
    threads = args.threads
    if threads is None and device.type == "cpu" and sum(p.numel() for p in loaded.large.parameters()) < TINY:
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    if args.cache:
        options = replace(options, cache=parse_cache_option(args.cache, list(loaded.names)))
    args.on_interrupt = f"nothing was written to {out}"
    result = generate(loaded, options, compare=args.compare)
    args.on_interrupt = f"{out} may hold a mix of this run's images and earlier ones; run the command again"
    folder.begin()
    with staged_writes():  # all renamed at the end: a full disk half-way leaves the earlier run's files as they were
        written = save_images(result, out)
    args.on_interrupt = None
    others = folder.finish(written)

    spec = result.spec
    shares = ", ".join(f"{n} {f:g}" for n, f in zip(spec.model_names, result.stitched.fractions, strict=True))
    if result.stitched.plan is not None:
        shares = f"plan {result.stitched.plan} ({shares} of the steps)"
    guidance = "default" if spec.guidance_scale is None else f"{spec.guidance_scale:g}"
    threads_used = torch.get_num_threads()
    print(f"{loaded.label}: {shares}")
    print(f"  {spec.scheduler or 'pipeline scheduler'} {spec.num_steps} steps, mode {spec.mode}, guidance {guidance}, "
          f"{spec.num_images} images, seed {spec.seed}, {device} {str(loaded.large.dtype).replace('torch.', '')}"
          + (f", {threads_used} thread{'s' if threads_used > 1 else ''}" if device.type == "cpu" else ""))
    print(f"fast paths: {spec.fast_paths}")
    if spec.cache:
        print(f"cache:     {', '.join(f'{name} {cache}' for name, cache in spec.cache)}")
    print(f"stitched:  {_describe_run(result.stitched)}")
    per_sample = result.stitched.per_sample or {}
    if "switch_steps" in per_sample:
        print(f"switch steps per sample: {' '.join(map(str, per_sample['switch_steps']))}")
    if "hybrid_calls" in per_sample:
        used = [call["mask_fraction_used"] for call in per_sample["hybrid_calls"]]
        print(f"hybrid:    {len(used)} calls, mask fraction used {min(used):g}..{max(used):g}" if used else
              "hybrid:    no calls")
    if result.baseline is not None:
        print(f"{result.baseline.model_names[-1]} alone: {_describe_run(result.baseline)}")
        print(f"speed-up:  {result.speedup:.2f}x end to end ({result.stitched.seconds / result.baseline.seconds:.2f}x "
              f"the time), {result.denoiser_speedup:.2f}x in the denoisers")
    images = [p.name for p in written if p.name.endswith(".png") and p.name != "grid.png"]
    print(f"wrote {out / 'grid.png'}, {len(images)} images ({images[0]} ...) and {out / 'summary.json'}")
    if others:
        print(f"note: {out} also holds {', '.join(others)}, not from this run")
    sys.stdout.flush()
    return 0
