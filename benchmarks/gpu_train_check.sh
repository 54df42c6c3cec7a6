#!/usr/bin/env bash
# One GPU check of training-step speed (issue 15 item 7, issue 23 item 4), about 6 minutes on one card:
# NAFNet and ConStyleNAFNet, upstream's step against irtoolkit's in fp32 (the default: NCHW on CUDA) and fp32
# channels-last, bf16 autocast NCHW and channels-last, and bf16 + train.compile + channels-last, with the achieved
# TFLOP/s against the card's dense bf16 peak. The two channels-last arms decide train.channels_last: auto on CUDA
# (today: NCHW there, unmeasured; channels-last on the CPU, docs/performance.md).
#
#   UPSTREAM=.upstream PEAK_TFLOPS=989 bash benchmarks/gpu_train_check.sh > gpu_check.md
#   bash benchmarks/gpu_train_check.sh --dry-run        # prerequisites and the command, no GPU needed
#   DEVICE=cpu BATCH=2 SIZE=32 ITERS=1 WARMUP=1 bash benchmarks/gpu_train_check.sh  # the whole run, small, on the CPU
#   (BATCH >= 2: upstream's ConStyle head is a BatchNorm1d, which refuses one sample in training)
#
# A fresh GPU machine needs only this repository, upstream's code and the wheels its Python lacks:
# - UPSTREAM holds read-only checkouts IRConStyle (Dongqi-Fan/IRConStyle) and NAFNet (megvii-research/NAFNet),
#   never committed: a git-ignored folder carried with the run, e.g. .upstream/ (`git archive` of each).
# - irtoolkit is imported from the checkout (PYTHONPATH), not installed. Whatever `import irtoolkit` lacks there
#   (basicsr and its small dependencies) comes as wheels in .whl/ (git-ignored), installed with pip --no-index into
#   /tmp/site when the Python cannot import basicsr; torch, torchvision, numpy, scipy, opencv, yaml come with the
#   machine's Python.
# PEAK_TFLOPS: the card's dense bf16 peak (H100/H200 SXM: 989). BATCH / SIZE / ITERS / WARMUP / DEVICE override the
# step; TIMEOUT the whole run's limit in seconds (default 420); PYTHON the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
UPSTREAM=${UPSTREAM:-.upstream}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
BATCH=${BATCH:-16}
SIZE=${SIZE:-256}
ITERS=${ITERS:-10}
WARMUP=${WARMUP:-3}
DEVICE=${DEVICE:-cuda}
TIMEOUT=${TIMEOUT:-420}
PY=${PYTHON:-python3}
DRY_RUN=0
case "${1:-}" in
    --dry-run) DRY_RUN=1 ;;
    '') ;;
    *) echo "gpu_train_check.sh: unknown argument $1 (only --dry-run)" >&2; exit 2 ;;
esac

for sub in IRConStyle NAFNet; do
    [ -d "$UPSTREAM/$sub" ] || { echo "gpu_train_check.sh: $UPSTREAM/$sub missing (UPSTREAM: folder of upstream" \
        "checkouts, see the header)" >&2; exit 2; }
done
if ! $PY -c 'import importlib.util as u, sys; sys.exit(u.find_spec("basicsr") is None)'; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_train_check.sh: $PY has no basicsr and there are no wheels in" \
        ".whl/ to install it from" >&2; exit 2; }
    if [ "$DRY_RUN" = 1 ]; then
        echo "would install into /tmp/site:" .whl/*.whl
    else
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY_RUN" = 0 ] || $PY -c 'import importlib.util as u, sys; sys.exit(u.find_spec("basicsr") is None)'; then
    $PY -c 'import irtoolkit, torch; print("irtoolkit", irtoolkit.__version__, "torch", torch.__version__)'
fi

AMP='"amp": {"enabled": true, "dtype": "bf16"}'
CL='"channels_last": true'
NCHW='"channels_last": false'  # the default on CUDA (train.channels_last: auto)
# one process per (configuration, implementation); compile time falls in the warm-up steps
CMD=($PY benchmarks/bench_train.py --device "$DEVICE" --vs-upstream "$UPSTREAM" --batch "$BATCH" --size "$SIZE"
     --warmup "$WARMUP" --iters "$ITERS" --repeats 1 --peak-tflops "$PEAK_TFLOPS"
     --ours "fp32_nchw={$NCHW}" "fp32_cl={$CL}" "bf16_nchw={$AMP, $NCHW}" "bf16_cl={$AMP, $CL}" "bf16_compile_cl={$AMP, \"compile\": true, $CL}")
if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' timeout "$TIMEOUT" "${CMD[@]}"; echo
    exit 0
fi
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
    $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
fi
timeout "$TIMEOUT" "${CMD[@]}"
