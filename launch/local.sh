#!/usr/bin/env bash
# The main job on one machine: sets up a virtual environment (first run only), then
# pretrains SyncMask on SynthFashion and evaluates at the end.
#   ./launch/local.sh                              # defaults: configs/synthfashion.py
#   ./launch/local.sh configs/synthfashion.py:recipe=albef runs/albef --config.total_steps=100
#   ./launch/local.sh --config.total_steps=30      # overrides alone: the default config and workdir
set -euo pipefail
cd "$(dirname "$0")/.."
# The config and the workdir are the leading arguments that are not flags; each has its default.
CONFIG=configs/synthfashion.py
WORKDIR=runs/synthfashion
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then CONFIG="$1"; shift; fi
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then WORKDIR="$1"; shift; fi
source launch/venv.sh
exec "$VENV/bin/python" -m syncmask_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
