#!/usr/bin/env bash
# The main job: ComfyUI with this pack on http://127.0.0.1:${PORT:-8188}, set up on first use.
# Finds ComfyUI like the tests do: $COMFYUI_PATH, the ComfyUI/custom_nodes this pack sits in,
# or ~/ComfyUI. Installs into .venv the pack's needs and ComfyUI's own requirements (never
# another torch), links the pack into ComfyUI/custom_nodes, starts ComfyUI (--cpu without a GPU).
# Extra arguments go to ComfyUI's main.py.
set -euo pipefail
pack=$(cd "$(dirname "$0")/.." && pwd)

comfy=${COMFYUI_PATH:-}
if [ -z "$comfy" ]; then
  if [ "$(basename "$(dirname "$pack")")" = custom_nodes ]; then
    comfy=$(dirname "$(dirname "$pack")")
  elif [ -f "$HOME/ComfyUI/main.py" ]; then
    comfy=$HOME/ComfyUI
  fi
fi
if [ ! -f "${comfy:-/nonexistent}/main.py" ]; then
  echo "tlora-nodes: no ComfyUI found. Clone it (git clone https://github.com/comfyanonymous/ComfyUI ~/ComfyUI)" >&2
  echo "             or set COMFYUI_PATH to your ComfyUI folder, then run this again." >&2
  exit 1
fi

cd "$pack"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
# ComfyUI's requirements without the torch family (kept as installed) and the optional extras
# that would pull a torchvision build of their own (spandrel: upscale models).
grep -vE '^(torch|torchvision|torchaudio|spandrel)([<>=~ ].*)?$|^#|^$' "$comfy/requirements.txt" >.venv/comfyui-requirements.txt
"${pip[@]}" -r requirements.txt -r .venv/comfyui-requirements.txt

if [ "$(cd "$(dirname "$pack")" && pwd)" != "$(cd "$comfy/custom_nodes" && pwd)" ]; then
  ln -sfn "$pack" "$comfy/custom_nodes/tlora-nodes"
fi

extra=()
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || extra+=(--cpu)
# Without torchvision/spandrel some core node files fail to import, and the frontend then can't
# create any model-loader node; stand-ins that fail loudly if used keep the rest working.
for name in torchvision spandrel; do
  if ! .venv/bin/python -c "import $name" 2>/dev/null; then
    echo "tlora-nodes: $name is not importable here; ComfyUI runs with a stand-in (models that need it are unavailable)." >&2
    export PYTHONPATH="$pack/tests/stubs/$name${PYTHONPATH:+:$PYTHONPATH}"
  fi
done
echo "tlora-nodes: starting ComfyUI $comfy on http://127.0.0.1:${PORT:-8188}"
exec .venv/bin/python "$comfy/main.py" --listen 127.0.0.1 --port "${PORT:-8188}" "${extra[@]}" "$@"
