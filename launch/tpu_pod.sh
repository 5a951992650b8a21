#!/usr/bin/env bash
# Runs the same command on every worker of a TPU pod slice (JAX multi-controller:
# jax.distributed.initialize() finds the peers from the TPU metadata). Compiled executables
# are cached in WORKDIR/xla_cache, so a restart skips compiling.
#   TPU=my-v4-32 ZONE=us-central2-b ./launch/tpu_pod.sh configs/fashiongen.py gs://bucket/run \
#       --config.data.root=/mnt/fashiongen --config.data.vocab_path=/mnt/bert/vocab.txt
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
CONFIG="$1"; WORKDIR="$2"; shift 2
REPO="${REPO:-\$HOME/syncmask_jax}"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  set -e; cd $REPO
  [ -x .venv/bin/python ] || (python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]')
  .venv/bin/python -m syncmask_jax.main --distributed --config=$CONFIG --workdir=$WORKDIR \
    --config.compilation_cache_dir=$WORKDIR/xla_cache $*"
