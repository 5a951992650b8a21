#!/usr/bin/env bash
# The study (docs/results.md): every variant of syncmask_jax/study.py x 5 seeds on
# SynthFashion, each pretrained, evaluated and fine-tuned, then the report.
#   ./launch/study.sh --publish                         # the sweep behind docs/results.md
#   ./launch/study.sh --variants=syncmask,random_masks --seeds=0 --steps=300
#   ./launch/study.sh --no_run                          # re-write the report from the runs
# The report goes to runs/study/report/; only --publish writes docs/ and the README.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
exec "$VENV/bin/python" -m syncmask_jax.report --workdir=runs/study --jobs=2 "$@"
