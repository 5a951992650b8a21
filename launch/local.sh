#!/usr/bin/env bash
# The main job on one machine: sets up a virtual environment (first run only), then
# pretrains SyncMask on SynthFashion and evaluates at the end.
#   ./launch/local.sh                              # defaults: configs/synthfashion.py
#   ./launch/local.sh configs/synthfashion.py:recipe=albef runs/albef --config.total_steps=100
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/synthfashion.py}"
WORKDIR="${2:-runs/synthfashion}"
shift $(( $# > 2 ? 2 : $# ))
source launch/venv.sh
exec "$VENV/bin/python" -m syncmask_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
