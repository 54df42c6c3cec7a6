#!/usr/bin/env bash
# Multi-GPU (or multi-process CPU) training on one or several nodes with torchrun.
#   tools/dist_train.sh NUM_PROCS options/train/x.yml [--auto_resume ...]
# Several nodes: NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 tools/dist_train.sh 8 x.yml   (and NODE_RANK=1 on host1)
set -euo pipefail
NPROC=${1:?usage: tools/dist_train.sh NUM_PROCS OPTIONS.yml [args...]}
CONFIG=${2:?usage: tools/dist_train.sh NUM_PROCS OPTIONS.yml [args...]}
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
exec "$PY" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-4321}" \
    --nproc_per_node="$NPROC" \
    "$ROOT/irtoolkit/train.py" -opt "$CONFIG" --launcher pytorch "$@"
