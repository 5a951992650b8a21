#!/usr/bin/env bash
# The study (docs/results.md): variants of syncmask_jax/study.py x seeds on SynthFashion,
# each pretrained, evaluated and fine-tuned, then the report.
#   ./launch/study.sh --study=published --publish     # the sweep behind docs/results.md
#   ./launch/study.sh --variants=syncmask,random_masks --seeds=0,1 --steps=600   # a trial
#   ./launch/study.sh --study=published --no_run      # re-write its report from the runs
# The trial's 600 steps give SyncMask's masks 300 steps after SynthFashion's 300-step
# warm-up of random masks (fewer would compare two identical models: refused); two seeds
# give its paired claims a verdict. The report goes to WORKDIR/report/; only --publish
# (with a named study) writes docs/ and the README.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
exec "$VENV/bin/python" -m syncmask_jax.report --jobs=2 "$@"
