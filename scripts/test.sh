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

# --- Browser tests only: Debian's chromium for playwright (tests/e2e/test_browser.py) ----------
# Never playwright's own browser download. Skipped when chromium is already there, when
# $CHROMIUM points at a browser, or when apt-get isn't usable (not root, not Debian); the
# browser tests then skip with the reason.
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
            || echo "scripts/test.sh: could not install chromium; browser tests will be skipped" >&2
    else
        echo "scripts/test.sh: no chromium and no apt-get as root; browser tests will be skipped" >&2
    fi
fi
# --- end of the browser block ---------------------------------------------------------------

exec .venv/bin/python -m pytest "$@"
