# Sourced by the launch scripts (from the repository root): the project's virtual
# environment in $VENV, made on first use and filled from a lock of exact versions with
# hashes (requirements/lock-pyXY.txt; LOCK=test takes lock-pyXY-test.txt, which adds the
# test extra). It installs only when the venv is new or the lock or pyproject.toml changed
# since the last install ($VENV/.lock-stamp-* holds their hash), and quietly.
#   UNLOCKED=1: the newest releases that pyproject.toml's ranges admit instead, in
#   .venv-latest (torch stays at its CPU pin), reinstalled on every launch.
#   PYTHON: the interpreter for a new venv (default python3).
if [ -n "${UNLOCKED:-}" ]; then
  VENV="${VENV:-.venv-latest}"
else
  VENV="${VENV:-.venv}"
fi
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# pip, less one warning per package about extra index folders that lack it (a machine's
# pip.conf can name such folders; the warning is harmless and repeats ~100 times).
_pip() {
  "$VENV/bin/python" -m pip "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
_extra="${LOCK:+-$LOCK}"
if [ -n "${UNLOCKED:-}" ]; then
  _spec="."
  [ -n "${LOCK:-}" ] && _spec=".[$LOCK]"
  _pip install -q --upgrade pip
  _pip install -q --upgrade --upgrade-strategy eager \
    -c requirements/torch-cpu.txt -e "$_spec"
  "$VENV/bin/python" -m pip freeze --exclude-editable > "$VENV/unlocked-freeze.txt"
  echo "UNLOCKED: newest releases installed in $VENV (list: $VENV/unlocked-freeze.txt)" >&2
else
  _tag="$("$VENV/bin/python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')"
  _lock="requirements/lock-$_tag$_extra.txt"
  if [ ! -f "$_lock" ]; then
    echo "No lock for this Python ($_tag): $_lock is missing. Use Python 3.11" \
      "(PYTHON=python3.11 with a new VENV), make the lock with" \
      "PYTHON=python3.X ./requirements/update-lock.sh, or install unlocked with UNLOCKED=1." >&2
    exit 1
  fi
  _hash="$(cat "$_lock" pyproject.toml | sha256sum | cut -d' ' -f1)"
  _stamp="$VENV/.lock-stamp-$_tag$_extra"
  if [ "$(cat "$_stamp" 2>/dev/null)" != "$_hash" ]; then
    echo "Installing $_lock into $VENV" >&2
    rm -f "$_stamp"
    # --no-deps: the lock is complete (pip-compile's closure), so nothing unlocked gets in;
    # the lock carries setuptools and wheel, hence no build isolation for our own package.
    _pip install -q --no-deps --require-hashes -r "$_lock"
    _pip install -q --no-deps --no-build-isolation -e .
    echo "$_hash" > "$_stamp"
  fi
fi
