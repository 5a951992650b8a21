#!/usr/bin/env bash
# The project's Python from any shell, nothing activated: the venv of launch/venv.sh
# (made and kept in step with the lock as the other launch scripts do), run in the
# caller's directory, so relative paths (configs/, runs/) mean what they do there.
#   ./launch/run.sh -m syncmask_jax.evaluate --config=configs/synthfashion.py --workdir=runs/synthfashion
#   ./launch/run.sh -m tensorboard.main --logdir runs/synthfashion
set -euo pipefail
# venv.sh works in the repository root; its VENV comes back as an absolute path.
VENV="$(cd "$(dirname "$0")/.." && source launch/venv.sh >&2 && cd "$VENV" && pwd)"
exec "$VENV/bin/python" "$@"
