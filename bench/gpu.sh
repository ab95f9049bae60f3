#!/usr/bin/env bash
# The GPU benchmarks in one bounded run (full-size SDXL architecture, random weights, 1024², bf16).
# Prepared here with bench/prepare_gpu.sh (carries .bench/ComfyUI and .whl); on the GPU machine,
# from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site && bash bench/gpu.sh
# Writes *.json and *.log into $OUT (default .bench/out) and prints a summary. Every part runs under
# `timeout`; worst case about 7.5 minutes (45+240+150 s, then the optional parts only if time is
# left: they start before 330 s, 330 s and 390 s; the float32 apply run of part 1b adds up to 150 s
# when it starts), expected 5-7. A failed part does not stop the next one.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/.bench/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if ! timeout 60 "$PY" -c "import torch" 2>/dev/null && [ -x /opt/torch/.venv/bin/python ]; then
    PY=/opt/torch/.venv/bin/python  # the machine's torch environment, when python3 on PATH is another one
fi
export COMFYUI_PATH="${COMFYUI_PATH:-$ROOT/.bench/ComfyUI}"
export PYTHONUNBUFFERED=1
BUDGET_S=${BUDGET_S:-330}   # optional parts start only before this many seconds have gone
# Overridable only to rehearse this script on a CPU (e.g. DEVICE=cpu ARCH=sd15 RES=64 STEPS=1 DTYPE=fp32
# WHATIF=fused WARMUP=1 TRAIN_MEASURE=1 COMFY_MEASURE=1 LIMIT_SCALE=3 BUDGET_S=1500): the GPU run
# uses the defaults.
DEVICE=${DEVICE:-cuda}; ARCH=${ARCH:-sdxl}; RES=${RES:-1024}; STEPS=${STEPS:-25}; DTYPE=${DTYPE:-bf16}
# ARCH=qwen-image runs the full Qwen-Image (20B, 60 blocks: 41 GB of bf16 weights, twice in part 1 —
# it needs a GPU of ~100 GB, e.g. an H200); BLOCKS=N keeps N of its blocks.
BLOCKS=${BLOCKS:-}
WHATIF=${WHATIF:-activation,fused-lowp}; WARMUP=${WARMUP:-2}; TRAIN_MEASURE=${TRAIN_MEASURE:-5}; COMFY_MEASURE=${COMFY_MEASURE:-3}
LIMIT_SCALE=${LIMIT_SCALE:-1}  # multiplies every time limit (a slow CPU rehearsal needs more)
START=$SECONDS

part() {  # part NAME SECONDS command...: run with a hard limit, log to $OUT/NAME.log
    local name=$1 limit=$(( $2 * LIMIT_SCALE )); shift 2
    echo "=== $name (limit ${limit}s, at $((SECONDS - START))s) ==="
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - START))s ==="
    echo "$name $rc" >> "$OUT/exit_codes.txt"
}

: > "$OUT/exit_codes.txt"
{
    timeout 20 nvidia-smi || true
    echo "python: $($PY --version 2>&1) at $(command -v $PY)"
    timeout 60 $PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    echo "ComfyUI: $(grep -m1 __version__ "$COMFYUI_PATH/comfyui_version.py" 2>/dev/null)"
    echo "PYTHONPATH=${PYTHONPATH:-}"
    lscpu | grep -m1 "Model name" || true
} 2>&1 | tee "$OUT/machine.txt"

part import_check 45 $PY bench/import_check.py --device $DEVICE

# 1) Timestep-Aware Apply vs stock LoraLoader: 25 steps of euler at 1024², cfg 5 (cond+uncond in one
#    batch of 2), 3 interleaved repeats; as extra contenders the product held on its activation-side
#    path (what lowvram, fp8 and hook-LoRA models use: is it cheaper than merging per rank change?)
#    and the bench-only proposal fused-lowp (the same in bf16 instead of float32; own weight copy,
#    5 GB). --fast-init: adapter values without the SVD, timing-neutral (init_cost measures the SVD).
part apply_overhead 240 $PY bench/apply_overhead.py --arch $ARCH ${BLOCKS:+--blocks $BLOCKS} --device $DEVICE --dtype $DTYPE \
    --resolution $RES --steps $STEPS --repeats 3 --fast-init --whatif "$WHATIF" --profile \
    --json "$OUT/apply_overhead_$ARCH.json"

# 2) T-LoRA Train s/step and peak VRAM (rank 64, batch 1, gradient checkpointing), 2 warm-up steps
#    then 5 timed ones.
part train_tlora 150 $PY bench/train_step.py --arch $ARCH ${BLOCKS:+--blocks $BLOCKS} --device $DEVICE --dtype $DTYPE --resolution $RES \
    --gradient-checkpointing --contenders tlora --repeats 1 --warmup $WARMUP --measure $TRAIN_MEASURE --fast-init \
    --worker-timeout $((140 * LIMIT_SCALE)) --json "$OUT/train_step_${ARCH}_tlora.json"

# 1b) Optional, the first of the optional parts (it times the part of part 1's code path that changed
#    last): the same comparison in float32, where merged weights follow the rank incrementally
#    (only the components between the old and the new rank; bf16/fp16 are merged afresh per rank).
#    Not for qwen-image (its float32 weights twice would not fit).
if [ "$ARCH" != qwen-image ] && [ $((SECONDS - START)) -lt "$BUDGET_S" ]; then
    part apply_overhead_fp32 150 $PY bench/apply_overhead.py --arch $ARCH --device $DEVICE --dtype fp32 \
        --resolution $RES --steps $STEPS --repeats 3 --fast-init --json "$OUT/apply_overhead_${ARCH}_fp32.json"
else
    echo "=== apply_overhead_fp32 skipped: $((SECONDS - START))s gone (budget ${BUDGET_S}s) or ARCH=$ARCH ==="
fi

# 3) Optional, while the budget lasts, in this order: T-LoRA Train with PyTorch's non-reentrant
#    checkpointing (the code before reentrant checkpointing: the GPU figure of that change), ComfyUI's
#    TrainLoraNode with the same settings (for the ratio), the set-up cost of a real T-LoRA init
#    (560 SVDs on the GPU). Each starts only before the budget is spent, so the worst case stays.
if [ $((SECONDS - START)) -lt "$BUDGET_S" ]; then
    part train_nonreentrant 100 $PY bench/train_step.py --arch $ARCH --device $DEVICE --dtype $DTYPE --resolution $RES \
        --gradient-checkpointing --contenders tlora-nonreentrant --repeats 1 --warmup $WARMUP --measure $COMFY_MEASURE \
        --fast-init --worker-timeout $((90 * LIMIT_SCALE)) --json "$OUT/train_step_${ARCH}_tlora_nonreentrant.json"
else
    echo "=== train_nonreentrant skipped: $((SECONDS - START))s gone (budget ${BUDGET_S}s) ==="
fi
if [ $((SECONDS - START)) -lt "$BUDGET_S" ]; then
    part train_comfy 100 $PY bench/train_step.py --arch $ARCH --device $DEVICE --dtype $DTYPE --resolution $RES \
        --gradient-checkpointing --contenders comfy --repeats 1 --warmup $WARMUP --measure $COMFY_MEASURE \
        --worker-timeout $((90 * LIMIT_SCALE)) --json "$OUT/train_step_${ARCH}_comfy.json"
else
    echo "=== train_comfy skipped: $((SECONDS - START))s gone (budget ${BUDGET_S}s) ==="
fi
if [ $((SECONDS - START)) -lt $((BUDGET_S + 60 * LIMIT_SCALE)) ]; then
    part init_cost 60 $PY bench/init_cost.py --arch $ARCH --device $DEVICE --json "$OUT/init_cost_$ARCH.json"
else
    echo "=== init_cost skipped: $((SECONDS - START))s gone ==="
fi

echo "=== summary (total $((SECONDS - START))s) ==="
cat "$OUT/exit_codes.txt"
timeout 30 $PY bench/summarize.py "$OUT" | tee "$OUT/summary.txt"
