#!/usr/bin/env bash
# Training under SLURM: one task per GPU; rank, world size and master address come from SLURM's environment.
#   GPUS=16 GPUS_PER_NODE=8 tools/slurm_train.sh PARTITION JOB_NAME options/train/x.yml [--auto_resume ...]
# SIGTERM (pre-emption, scancel) makes the runner write a checkpoint first; resubmit with --auto_resume.
set -euo pipefail
PARTITION=${1:?usage: tools/slurm_train.sh PARTITION JOB_NAME OPTIONS.yml [args...]}
JOB_NAME=${2:?usage: tools/slurm_train.sh PARTITION JOB_NAME OPTIONS.yml [args...]}
CONFIG=${3:?usage: tools/slurm_train.sh PARTITION JOB_NAME OPTIONS.yml [args...]}
shift 3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-4}
SRUN_ARGS=${SRUN_ARGS:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
# shellcheck disable=SC2086
exec srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
    "$PY" -u "$ROOT/irtoolkit/train.py" -opt "$CONFIG" --launcher slurm "$@"
