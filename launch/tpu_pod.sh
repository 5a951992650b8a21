#!/usr/bin/env bash
# Pretraining on a TPU pod slice (JAX multi-controller: jax.distributed.initialize() finds
# the peers from the TPU metadata). From a clone of this repository, on a laptop:
#   TPU=my-v4-32 ZONE=us-central2-b ./launch/tpu_pod.sh configs/fashiongen.py gs://bucket/fg \
#       --config.data.root=/mnt/fashiongen --config.data.vocab_path=gs://bucket/bert/vocab.txt
# 1. The committed code (git archive of HEAD) goes to every worker and is installed there,
#    into ~/syncmask_jax/<commit>/ with its own venv (the lock, then jax[tpu] at the lock's
#    jax version); a second launch of the same commit installs nothing.
# 2. The run starts detached on every worker (setsid nohup): closing the laptop, or the
#    ssh session dropping, does not stop it. Worker i logs to
#    ~/syncmask_jax/runs/<run>/worker-<i>.log, copied to WORKDIR/logs/ every minute.
# 3. Arguments reach the workers as typed: each is shell-quoted once (printf %q), so
#    overrides with spaces, commas or parentheses survive.
# Prints the commands for each worker, running nothing (no gcloud needed):
#   DRY_RUN=1 WORKERS=4 TPU=my-v4-32 ZONE=us-central2-b ./launch/tpu_pod.sh CONFIG WORKDIR ...
# RUN names the run (default: the workdir's last component); WORKERS skips asking gcloud
# for the slice's worker count; PYTHON is the workers' interpreter for the venv (the lock
# is made for python3.11).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
CONFIG="$1"; WORKDIR="$2"; shift 2
cd "$(dirname "$0")/.."
RUN="${RUN:-$(basename "${WORKDIR%/}")}"
PYTHON="${PYTHON:-python3.11}"
commit="$(git rev-parse --short=12 HEAD)"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "note: uncommitted changes are not sent; the workers run commit $commit" >&2
fi
tarball="syncmask_jax-$commit.tar.gz"
home="~/syncmask_jax"  # expanded by each worker's shell
code="$home/$commit"
rundir="$home/runs/$RUN"
workers="${WORKERS:-}"
if [ -z "$workers" ] && [ -n "${DRY_RUN:-}" ]; then
  echo "DRY_RUN: set WORKERS to the slice's worker count" >&2; exit 2
elif [ -z "$workers" ]; then
  endpoints=$(gcloud compute tpus tpu-vm describe "$TPU" --zone="$ZONE" \
    --format='value(networkEndpoints[].ipAddress)')
  workers=$(tr ';' '\n' <<< "$endpoints" | grep -c .)
fi

# Every argument quoted once, for the worker's shell.
q() { printf '%q ' "$@"; }
train=$(q .venv/bin/python -m syncmask_jax.main --distributed --config="$CONFIG" \
  --workdir="$WORKDIR" --config.compilation_cache_dir="$WORKDIR/xla_cache" "$@")

# What worker $1 runs: install (once per commit), then start the run detached.
worker_script() {
  local i="$1" log="$rundir/worker-$1.log" python bucket_log
  python=$(q "$PYTHON")
  bucket_log=$(q "$WORKDIR/logs/worker-$1.log")
  cat <<EOF
set -euo pipefail
mkdir -p $code $rundir && cd $code
[ -f .unpacked ] || { tar -xzf $home/$tarball && touch .unpacked; }
if [ ! -f .venv/.tpu-installed ]; then
  PYTHON=$python bash -c 'source launch/venv.sh'
  .venv/bin/python -m pip install -q "jax[tpu]==\$(.venv/bin/pip show jax | sed -n 's/^Version: //p')"
  touch .venv/.tpu-installed
fi
if [ -f $rundir/pid ] && kill -0 -- -\$(cat $rundir/pid) 2>/dev/null; then
  echo "worker $i: run $RUN is already running (pid \$(cat $rundir/pid))" >&2; exit 1
fi
cat > $rundir/worker.sh <<'SCRIPT'
upload() { .venv/bin/python -m syncmask_jax.paths cp $log $bucket_log || true; }
# A stop (SIGTERM to the group) reaches the trainer, which saves a checkpoint and exits;
# this wrapper waits for that, then uploads the log a last time.
trap 'echo "SIGTERM: waiting for the trainer to save and exit"' TERM
$train &
trainer=\$!
( while sleep 60; do upload; done ) &
while :; do wait \$trainer; rc=\$?; kill -0 \$trainer 2>/dev/null || break; done
upload
exit \$rc
SCRIPT
setsid nohup bash $rundir/worker.sh > $log 2>&1 < /dev/null &
echo \$! > $rundir/pid
echo "worker $i: started $RUN (pid \$!), log $log"
EOF
}

run() {
  if [ -n "${DRY_RUN:-}" ]; then q "$@"; echo; else "$@"; fi
}

if [ -z "${DRY_RUN:-}" ]; then
  git archive --format=tar.gz -o "/tmp/$tarball" HEAD
fi
echo "# all workers: the code of commit $commit"
run gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="mkdir -p $home"
run gcloud compute tpus tpu-vm scp "/tmp/$tarball" "$TPU:$home/" --zone="$ZONE" --worker=all
pids=()
for ((i = 0; i < workers; i++)); do
  echo "# worker $i of $workers"
  if [ -n "${DRY_RUN:-}" ]; then
    run gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker="$i" \
      --command="$(worker_script "$i")"
  else
    run gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker="$i" \
      --command="$(worker_script "$i")" & pids+=($!)
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
cat <<EOF
# follow: gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=0 --command='tail -f $rundir/worker-0.log'
#     or: the copies in $WORKDIR/logs/ (updated every minute)
# stop (each worker's trainer saves a checkpoint first; the same launch resumes):
#   gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command='kill -TERM -- -\$(cat $rundir/pid)'
EOF
