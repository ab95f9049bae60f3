#!/usr/bin/env bash
# Prepare what bench/gpu.sh needs on an offline GPU machine. Run HERE (a machine with ComfyUI and
# PyPI access), from anywhere; writes into the repository root (both paths are git-ignored):
#   .bench/ComfyUI/  a copy of ComfyUI (no .git, no tests, no tokenizer data: the benchmarks build
#                    UNets with random weights and never load a text encoder)
#   .whl/            the wheels the GPU machine lacks for the benchmark path: torchsde and its
#                    dependency trampoline (comfy.k_diffusion imports torchsde) and av (PyAV: the
#                    pack's nodes import comfy_api.latest, which imports av at import time)
# The GPU machine already has torch, torchvision, transformers, einops, safetensors, scipy, aiohttp,
# yarl, psutil, pyyaml, pillow, tqdm, numpy; nothing else is imported on the benchmark path
# (checked with bench/import_check.py). Total kept under 55 MiB (checked at the end).
#
#   COMFYUI_PATH=/root/ComfyUI bash bench/prepare_gpu.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="${COMFYUI_PATH:-/root/ComfyUI}"
LIMIT_MIB=55
PY=${PYTHON:-python3}
WHEELS=(torchsde==0.2.6 trampoline==0.1.2 av==18.1.0)

[ -f "$SRC/comfy/model_patcher.py" ] || { echo "prepare_gpu: no ComfyUI at $SRC (set COMFYUI_PATH)" >&2; exit 1; }
cd "$ROOT"

rm -rf .bench/ComfyUI
mkdir -p .bench/ComfyUI
tar -C "$SRC" -cf - \
    --exclude=./.git --exclude=./.github --exclude=./.ci --exclude=./tests --exclude=./tests-unit \
    --exclude=__pycache__ --exclude='*.pyc' --exclude=./output --exclude=./input --exclude=./temp \
    --exclude=./user --exclude=./custom_nodes --exclude=./models \
    --exclude='./comfy/sd1_tokenizer' --exclude='./comfy/text_encoders/*_tokenizer' \
    . | tar -C .bench/ComfyUI -xf -
mkdir -p .bench/ComfyUI/custom_nodes .bench/ComfyUI/models
echo "prepare_gpu: ComfyUI $(grep -m1 __version__ .bench/ComfyUI/comfyui_version.py | cut -d'"' -f2) copied to .bench/ComfyUI ($(du -sh .bench/ComfyUI | cut -f1))"

rm -rf .whl
mkdir -p .whl
for w in "${WHEELS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$w"
done
ls -l .whl

# what travels: the repository's files (tracked and untracked, not ignored) + .bench/ComfyUI + .whl
repo_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
bench_bytes=$(du -sb .bench/ComfyUI | cut -f1)
whl_bytes=$(du -sb .whl | cut -f1)
total=$((repo_bytes + bench_bytes + whl_bytes))
awk -v r="$repo_bytes" -v b="$bench_bytes" -v w="$whl_bytes" -v t="$total" -v l="$LIMIT_MIB" 'BEGIN {
    m = 1048576; printf "prepare_gpu: repo %.1f MiB + .bench/ComfyUI %.1f MiB + .whl %.1f MiB = %.1f MiB (limit %d MiB)\n", r/m, b/m, w/m, t/m, l }'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "prepare_gpu: too big to carry" >&2
    exit 1
fi
echo "prepare_gpu: carry .bench/ComfyUI and .whl, then run on the GPU machine:"
echo "  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && bash bench/gpu.sh"
