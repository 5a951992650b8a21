#!/usr/bin/env bash
# Makes .venv-lavis at the repository root: Salesforce LAVIS 1.0.2 and what its ALBEF and
# BLIP models import, from requirements/lock-py311-lavis.txt (exact versions with hashes,
# installed with --no-deps). For tests/reference/*.py only; the project's own venvs are
# launch/venv.sh's. Idempotent: it installs only when the venv is new or the lock changed
# since the last install (.venv-lavis/.lock-stamp holds the lock's hash), and quietly.
#   tests/reference/lavis_env.sh
#   .venv-lavis/bin/python tests/reference/make_albef_reference.py
# torch is the CPU build (torch==2.13.0+cpu): pip finds it through --find-links or
# PyTorch's CPU index, e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
#   PYTHON: the interpreter for a new venv (default python3; it must be Python 3.11).
#   VENV: the venv's folder (default .venv-lavis).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv-lavis}"
LOCK=requirements/lock-py311-lavis.txt
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
tag="$("$VENV/bin/python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')"
if [ "$tag" != py311 ]; then
  echo "$VENV has Python $tag; $LOCK is for Python 3.11 (PYTHON=python3.11, new VENV)" >&2
  exit 1
fi
hash="$(sha256sum "$LOCK" | cut -d' ' -f1)"
stamp="$VENV/.lock-stamp"
if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
  exit 0
fi
# pip, less one warning per package about extra index folders that lack it.
_pip() {
  "$VENV/bin/python" -m pip "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
echo "Installing $LOCK into $VENV" >&2
rm -f "$stamp"
# The build tools first: fairscale and iopath are source packages, built without
# isolation (so with the pinned setuptools and wheel, nothing unpinned is fetched).
tools="$(mktemp)"
trap 'rm -f "$tools"' EXIT
grep -E '^(setuptools|wheel)==' "$LOCK" > "$tools"
_pip install -q --no-deps --require-hashes -r "$tools"
_pip install -q --no-deps --no-build-isolation --require-hashes -r "$LOCK"
echo "$hash" > "$stamp"
