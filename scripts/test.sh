#!/usr/bin/env bash
# Every test suite, against every ComfyUI found (scripts/comfyui.py says how they are found).
#
# Per ComfyUI tree: its own environment (built on first use under ~/.cache/tlora-nodes/envs,
# reused while the requirements stay the same), then pytest with COMFYUI_PATH set to that tree.
# The first tree runs everything (core tests included); the others the ComfyUI tiers
# (integration, end-to-end, browser). No ComfyUI found: the newest tested one is cloned
# (scripts/comfyui.py fetch); without network the ComfyUI tiers are skipped, with the reason.
# Ends with a summary per ComfyUI version and a total line. Extra arguments go to every pytest
# run instead of the defaults (e.g. `bash scripts/test.sh tests/core`).
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
started=$(date +%s)

mapfile -t trees < <("$python" scripts/comfyui.py trees | cut -f1)
if [ ${#trees[@]} -eq 0 ] && [ -z "${COMFYUI_PATH:-}" ]; then
  if fetched=$("$python" scripts/comfyui.py fetch); then
    trees=("$fetched")
  fi  # else: comfyui.py printed what to do; the ComfyUI tiers are skipped
fi

# --- Browser tests only: Debian's chromium for playwright (tests/e2e/test_browser.py) ----------
# Never playwright's own browser download. Skipped when chromium is already there, when
# $CHROMIUM points at a browser, or when apt-get isn't usable (not root, not Debian); the
# browser tests then skip with the reason.
if [ ${#trees[@]} -gt 0 ] && [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "scripts/test.sh: could not install chromium; browser tests will be skipped" >&2
  else
    echo "scripts/test.sh: no chromium and no apt-get as root; browser tests will be skipped" >&2
  fi
fi
# --- end of the browser block ---------------------------------------------------------------

summaries=$(mktemp -d)
trap 'rm -rf "$summaries"' EXIT
status=0
run() {  # run LABEL TREE-or-empty PYTEST-ARGS...
  local label=$1 tree=$2; shift 2
  local env_python
  env_python=$("$python" scripts/comfyui.py python ${tree:+"$tree"}) || { echo "scripts/test.sh: no environment for $label" >&2; status=1; return; }
  echo "== tests against $label =="
  env ${tree:+COMFYUI_PATH="$tree"} TLORA_TEST_SUMMARY="$summaries/$(date +%s%N).json" "$env_python" -m pytest "$@"
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=1; fi  # 5: nothing collected (a filter matched nothing)
}

if [ ${#trees[@]} -eq 0 ]; then
  run "no ComfyUI (core tests; the ComfyUI tiers are skipped)" "" "$@"
else
  for i in "${!trees[@]}"; do
    tree=${trees[$i]}
    if [ $# -gt 0 ]; then
      run "$tree" "$tree" "$@"
    elif [ "$i" -eq 0 ]; then
      run "$tree" "$tree"
    else
      run "$tree" "$tree" -m "comfyui or e2e or browser"
    fi
  done
fi

"$python" tests/run_summary.py "$summaries" "$(( $(date +%s) - started ))" || status=1
exit $status
