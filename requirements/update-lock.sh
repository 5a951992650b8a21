#!/usr/bin/env bash
# Regenerates the locks from pyproject.toml: the newest releases its ranges admit, exact
# versions with hashes, for the Python that runs this script (the file names carry it).
#   requirements/lock-pyXY-test.txt  runtime + the test extra (launch/test.sh, CI)
#   requirements/lock-pyXY.txt       runtime only (launch/local.sh), the same versions
# torch is pinned to its CPU build (requirements/torch-cpu.txt), which pip finds through
# --find-links or PyTorch's CPU index (README, "Tests"). pip-tools runs from a throwaway
# venv, so the project's venvs are not touched.
#   ./requirements/update-lock.sh                       # refresh every pin
#   ./requirements/update-lock.sh --upgrade-package jax # or: move one package, keep the rest
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
tag="py$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
"$PYTHON" -m venv "$tools"
"$tools/bin/pip" install -q "pip==26.3" "pip-tools==7.6.2"
export CUSTOM_COMPILE_COMMAND="./requirements/update-lock.sh"
# --upgrade: without it pip-compile keeps the pins already in the output file.
upgrade=(--upgrade)
[ $# -gt 0 ] && upgrade=("$@")
common=(--quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url
        --no-emit-find-links)
# The test lock includes setuptools and wheel (the editable build's requirements), so
# the launch scripts build the package without fetching unpinned build tools.
"$tools/bin/pip-compile" "${common[@]}" "${upgrade[@]}" --extra test \
  --build-deps-for editable -c requirements/torch-cpu.txt \
  -o "requirements/lock-$tag-test.txt" pyproject.toml
"$tools/bin/pip-compile" "${common[@]}" --build-deps-for editable \
  -c "requirements/lock-$tag-test.txt" -o "requirements/lock-$tag.txt" pyproject.toml
echo "wrote requirements/lock-$tag-test.txt and requirements/lock-$tag.txt"
