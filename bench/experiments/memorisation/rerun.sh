#!/usr/bin/env bash
# Every result in this folder, in order: the experiment (results.json, results.md, grid.png), the
# follow-up with longer T-LoRA training (longer/), and the diagnosis (why.json).
# Arguments (e.g. --threads 1, --comfyui PATH) go to all three; PYTHON picks the interpreter.
set -euo pipefail
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
"$PY" "$HERE/run.py" "$@"
"$PY" "$HERE/run.py" --methods "T-LoRA" "T-LoRA, r_min = R/4" --steps 1200 1600 \
    --loras "$HERE/.cache/loras-longer" --out "$HERE/longer" --no-grid "$@"
"$PY" "$HERE/why.py" "$@" | tee "$HERE/.cache/why.txt"
