"""Finding and preparing a real ComfyUI checkout for the integration tests.

Looked up in order: $COMFYUI_PATH, the ComfyUI this pack sits in (ComfyUI/custom_nodes/<pack>),
~/ComfyUI. Tests marked ``comfyui`` are skipped with the reason when none is found.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUBS = Path(__file__).resolve().parent / "stubs"


def _is_comfyui(path: Path) -> bool:
    return (path / "comfy" / "model_patcher.py").is_file() and (path / "folder_paths.py").is_file()


def find_comfyui() -> tuple[Path | None, str]:
    """(path, how it was found) or (None, why not)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser()
        if _is_comfyui(path):
            return path, f"COMFYUI_PATH={path}"
        return None, f"COMFYUI_PATH={env} is not a ComfyUI checkout (no comfy/model_patcher.py)"
    if ROOT.parent.name == "custom_nodes" and _is_comfyui(ROOT.parent.parent):
        return ROOT.parent.parent, f"the ComfyUI this pack sits in ({ROOT.parent.parent})"
    home = Path.home() / "ComfyUI"
    if _is_comfyui(home):
        return home, f"~/ComfyUI ({home})"
    return None, "no ComfyUI found (set COMFYUI_PATH, or put the pack in ComfyUI/custom_nodes, or use ~/ComfyUI)"


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # a broken torchvision raises RuntimeError, not ImportError
        sys.modules.pop(module, None)
        return False


def extra_pythonpath() -> list[str]:
    """Paths a ComfyUI process (in- or out-of-process) needs before its own: the test-only
    stand-in for torchvision and/or spandrel (tests/stubs/<name>/) when the real one can't be
    imported (see the stubs' docstrings)."""
    return [str(STUBS / name) for name in ("torchvision", "spandrel") if not importable(name)]


def prepare_in_process(path: Path) -> None:
    """Make ``import comfy`` work in this process, CPU only, like ComfyUI's main.py would."""
    for position, extra in enumerate([str(path)] + extra_pythonpath()):
        if extra not in sys.path:
            sys.path.insert(position, extra)
    from comfy.cli_args import args

    args.cpu = True
    args.disable_api_nodes = True


def comfyui_version(path: Path) -> str:
    text = (path / "comfyui_version.py").read_text() if (path / "comfyui_version.py").exists() else ""
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"
