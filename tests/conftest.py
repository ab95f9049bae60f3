"""Test set-up shared by every suite.

The pack is imported the way ComfyUI imports it: as a package (here named ``tlora_nodes``)
loaded from the repository root, so relative imports and module identity match production.
The repository root itself is never put on sys.path, because its ``nodes/`` package would
shadow ComfyUI's ``nodes`` module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tlora_nodes"


def load_pack():
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(
        PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


load_pack()
