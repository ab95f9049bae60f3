"""Finding and preparing a real ComfyUI checkout for the integration tests.

The trees are found by the one rule of scripts/comfyui.py ($COMFYUI_PATH, a ':'-separated list;
else the ComfyUI this pack sits in; else ~/ComfyUI and ~/ComfyUI-<version>); a pytest run tests
the first one (scripts/test.sh runs pytest once per tree, each with COMFYUI_PATH set to it).
Tests marked ``comfyui``, ``e2e`` or ``browser`` are skipped with the reason when none is found.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUBS = Path(__file__).resolve().parent / "stubs"
# Packages ComfyUI imports at start-up that the test environment may lack (see each stub's docstring).
STUBBED = ("torchvision", "spandrel", "torchaudio")


def _rule():
    spec = importlib.util.spec_from_file_location("tlora_comfyui_rule", ROOT / "scripts" / "comfyui.py")
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def find_comfyui() -> tuple[Path | None, str]:
    """(path, how it was found) of the first tree, or (None, why not)."""
    trees, why = _rule().find_trees()
    return (trees[0].path, trees[0].found_by) if trees else (None, why)


def comfyui_version(path: Path) -> str:
    return _rule().comfyui_version(path)


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # a broken torchvision raises RuntimeError, not ImportError
        sys.modules.pop(module, None)
        return False


def extra_pythonpath() -> list[str]:
    """Paths a ComfyUI process (in- or out-of-process) needs before its own: the test-only
    stand-ins in tests/stubs/<name>/ (torchvision, spandrel, torchaudio) when the real one can't be
    imported (see the stubs' docstrings), and the kit they share."""
    missing = [str(STUBS / name) for name in STUBBED if not importable(name)]
    return [*missing, str(STUBS / "kit")] if missing else []


def prepare_in_process(path: Path) -> None:
    """Make ``import comfy`` work in this process, CPU only, like ComfyUI's main.py would."""
    for position, extra in enumerate([str(path)] + extra_pythonpath()):
        if extra not in sys.path:
            sys.path.insert(position, extra)
    from comfy.cli_args import args

    args.cpu = True
    args.disable_api_nodes = True
