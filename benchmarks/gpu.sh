#!/usr/bin/env bash
# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
#
# The fast paths on one CUDA GPU, in one command (about 6 minutes on an H100; see docs/performance.md):
#   1. the paper's DiT-S/2 -> DiT-XL/2 table (256x256, 8 images, 100 DDIM steps, guidance 1.5, fractions 0, 0.2,
#      ..., 1, 3 repetitions): fp32 eager against the CUDA fast path (bf16 with float32 latents, torch.compile
#      and a CUDA graph per model, TF32, fused attention), speed-up, achieved TFLOP/s against the bf16 dense
#      peak, the latent difference at r = 0.4, peak memory with and without offloading the idle model;
#   2. the quality guard: digits-FID of the embedded family at r = 0.4 (1000 samples), fp32 against the fast path;
#   3. the CUDA-only tests (tests/test_fastpaths.py);
#   4. the cost of a region step (tstitch.regions, docs/regions.md) against a full DiT-XL/2 step, batch 1 and 8,
#      mask fractions 0.1-0.5 (fp32 eager, about 1 minute): regions_cost.json.
# Every step writes its files as it goes (fastpaths.json/.png/.md after every repetition, quality.json/.md,
# tests.txt, log.txt) into $OUT (set by the device tool), else benchmarks/results/gpu/.
#
# The GPU machine reaches no package index: it runs from the working tree and the wheels in .whl/ (diffusers and
# importlib_metadata, pure Python; torch with CUDA, numpy, safetensors, huggingface_hub, scipy, matplotlib,
# torchmetrics are already there). Make them first, on a machine with PyPI:
#   benchmarks/gpu.sh wheels
# then, on the device tool: run(command="benchmarks/gpu.sh", carry=[".whl"], timeout_s=540).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "wheels" ]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
    exit $?
fi

OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
echo "tstitch GPU check: running from this working tree$(ls .whl/*.whl >/dev/null 2>&1 && echo ' and the wheels in .whl/') (no package index)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the wheels in .whl/ failed"; exit 1; }
    export PYTHONPATH="src:/tmp/site"
else
    export PYTHONPATH="src"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'diffusers', diffusers.__version__); assert torch.cuda.is_available(), 'torch sees no CUDA device'" || exit 1

status=0
# 1. the paper's table: no repetition (about 40 s each, predicted) starts that would end after TABLE_BUDGET seconds
#    from the start, model building and the compile warm-up (about 1-2 minutes) included; memory runs follow.
timeout 240 python3 benchmarks/fastpaths.py --suite gpu-paper --budget "${TABLE_BUDGET:-180}" --out "$OUT" \
    || { status=$?; echo "table: exit $status"; }
# 2. the quality guard (digits-FID, fp32 against the fast path).
timeout 50 python3 benchmarks/fastpaths.py --suite gpu-paper --quality --no-timing --out "$OUT" || { status=$?; echo "quality: exit $status"; }
# 3. the CUDA-only tests.
timeout 50 python3 -m pytest -q -p no:cacheprovider tests/test_fastpaths.py -k "cuda or graphed" 2>&1 | tee "$OUT/tests.txt" | tail -5
[ "${PIPESTATUS[0]}" = 0 ] || { status=1; echo "CUDA tests: failed (see tests.txt)"; }
# 4. the region step's cost (fp32 eager).
timeout 150 python3 benchmarks/regions_cost.py --device cuda --reps 5 --out "$OUT/regions_cost.json" \
    || { status=$?; echo "regions: exit $status"; }
[ -f "$OUT/fastpaths.md" ] && cat "$OUT/fastpaths.md"
[ -f "$OUT/quality.md" ] && cat "$OUT/quality.md"
exit $status
