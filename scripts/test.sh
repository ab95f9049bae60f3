#!/usr/bin/env bash
# Set up the test environment on first use (.venv) and run every test suite.
# ComfyUI integration, end-to-end and browser tests run when a ComfyUI checkout is found
# (COMFYUI_PATH, the ComfyUI/ this pack sits in, or ~/ComfyUI) and are skipped, with the
# reason, when it isn't. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first and on its own, so nothing below can pull a different (multi-GB) build.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
"${pip[@]}" -r requirements-test.txt

exec .venv/bin/python -m pytest "$@"
