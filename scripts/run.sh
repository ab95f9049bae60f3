#!/usr/bin/env bash
# The main job: ComfyUI with this pack on http://127.0.0.1:${PORT:-8188}, set up on first use.
#
# ComfyUI: the first tree scripts/comfyui.py finds ($COMFYUI_PATH, the ComfyUI/custom_nodes this
# pack sits in, ~/ComfyUI or ~/ComfyUI-<version>, newest first); none: the newest tested ComfyUI
# is cloned into ~/ComfyUI-<version> (from $TLORA_COMFYUI_URL, default upstream).
# Python: ComfyUI's own (its venv/.venv, or a python3 that already imports its requirements; on
# a GPU machine that is your CUDA build), else an environment under ~/.cache/tlora-nodes/envs
# built once per set of requirements (torch from $TORCH_SPEC, default torch==2.13.0, CPU).
# The pack is linked into ComfyUI/custom_nodes; --cpu is added without a GPU. Extra arguments go
# to ComfyUI's main.py.
set -euo pipefail
pack=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

comfy=$("$python" "$pack/scripts/comfyui.py" trees | head -n 1 | cut -f1)
if [ -z "$comfy" ]; then
  [ -n "${COMFYUI_PATH:-}" ] && exit 1  # comfyui.py said which entry is wrong
  comfy=$("$python" "$pack/scripts/comfyui.py" fetch) || exit 1  # it said what to do
fi

own=$("$python" "$pack/scripts/comfyui.py" own-python "$comfy")
if [ -n "$own" ]; then
  run_python=$own
  # the pack's needs (ComfyUI's requirements already include them): installed only if missing
  "$run_python" -c "import safetensors, einops, numpy" 2>/dev/null \
    || "$run_python" -m pip install -q --disable-pip-version-check -r "$pack/requirements.txt"
else
  run_python=$("$python" "$pack/scripts/comfyui.py" python "$comfy")
fi

if [ "$(cd "$(dirname "$pack")" && pwd)" != "$(cd "$comfy/custom_nodes" && pwd)" ]; then
  ln -sfn "$pack" "$comfy/custom_nodes/tlora-nodes"
fi

extra=()
"$run_python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || extra+=(--cpu)
# Packages some core files import at start-up that this Python may lack (an environment built
# here has no torchvision/torchaudio build for its CPU torch): stand-ins that fail loudly if used
# keep the rest working. A ComfyUI Python of your own has the real ones.
stubs=()
for name in torchvision torchaudio spandrel; do
  if ! "$run_python" -c "import $name" 2>/dev/null; then
    echo "tlora-nodes: $name is not importable here; ComfyUI runs with a stand-in (what needs it is unavailable)." >&2
    stubs+=("$pack/tests/stubs/$name")
  fi
done
if [ ${#stubs[@]} -gt 0 ]; then
  stubs+=("$pack/tests/stubs/kit")
  export PYTHONPATH="$(IFS=:; echo "${stubs[*]}")${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "tlora-nodes: starting ComfyUI $comfy with $run_python on http://127.0.0.1:${PORT:-8188}"
exec "$run_python" "$comfy/main.py" --listen 127.0.0.1 --port "${PORT:-8188}" "${extra[@]}" "$@"
