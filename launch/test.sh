#!/usr/bin/env bash
# Sets up a virtual environment (if needed) and runs the test suite on 8 fake CPU devices.
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
# torch is test-only (PyTorch parity); pin the CPU build so no CUDA wheels are pulled.
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q -e ".[test]"
export JAX_PLATFORMS=cpu
# -n 2: the two cores; tests that need 8 devices set XLA_FLAGS themselves (conftest.py).
exec "$VENV/bin/python" -m pytest -x -q -n 2 "$@"
