# Sourced by the launch scripts (from the repository root): the project's virtual
# environment in $VENV (default .venv), made and filled on first use.
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q -e .
