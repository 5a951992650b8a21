#!/usr/bin/env bash
# Sets up a virtual environment (if needed) and runs the test suite on 8 fake CPU devices.
# This is the README's test command and what CI runs. The venv gets the locked versions
# (requirements/lock-py311-test.txt, through launch/venv.sh); UNLOCKED=1 ./launch/test.sh
# runs the suite against the newest releases instead, in .venv-latest.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=test
source launch/venv.sh
export JAX_PLATFORMS=cpu
# -n 2: the two cores; tests that need 8 devices set XLA_FLAGS themselves (conftest.py).
exec "$VENV/bin/python" -m pytest -x -q -n 2 "$@"
