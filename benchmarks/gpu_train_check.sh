#!/usr/bin/env bash
# One GPU check of training-step speed (issue 15, item 7), at most ~5 minutes on one card:
# NAFNet and ConStyleNAFNet, upstream's step against irtoolkit's in fp32, bf16 autocast, and
# bf16 + train.compile + train.channels_last, with the achieved TFLOP/s against the card's dense bf16 peak.
#
#   UPSTREAM=/tmp/up15 PEAK_TFLOPS=989 bash benchmarks/gpu_train_check.sh > gpu_check.md
#
# UPSTREAM holds read-only checkouts IRConStyle (Dongqi-Fan/IRConStyle) and NAFNet (megvii-research/NAFNet), never
# committed (on the device machine: a git-ignored folder carried with the run, e.g. .upstream/). PEAK_TFLOPS: the
# card's dense bf16 peak (H100/H200 SXM: 989). BATCH / SIZE / ITERS override the step size and the timed steps.
set -euo pipefail
cd "$(dirname "$0")/.."
UPSTREAM=${UPSTREAM:-.upstream}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
BATCH=${BATCH:-16}
SIZE=${SIZE:-256}
ITERS=${ITERS:-10}
PY=${PYTHON:-python}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
AMP='"amp": {"enabled": true, "dtype": "bf16"}'
# one process per (configuration, implementation); compile time falls in the warm-up steps
timeout 280 env PYTHONPATH="$PWD" $PY benchmarks/bench_train.py --device cuda --vs-upstream "$UPSTREAM" \
    --batch "$BATCH" --size "$SIZE" --warmup 3 --iters "$ITERS" --repeats 1 --peak-tflops "$PEAK_TFLOPS" \
    --ours 'fp32={}' "bf16={$AMP}" "bf16_compile_cl={$AMP, \"compile\": true, \"channels_last\": true}"
