"""tlora_core is pure torch: it must never pull in ComfyUI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMFY_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes", "execution")


def test_importing_tlora_core_loads_no_comfy_module():
    code = (
        "import sys; import tlora_core, tlora_core.adapter, tlora_core.formats, tlora_core.schedule, "
        "tlora_core.functional\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in %r)\n"
        "print(','.join(bad))" % (COMFY_MODULES,)
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_tlora_core_source_has_no_comfy_import():
    for path in (ROOT / "tlora_core").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] not in COMFY_MODULES, f"{path.name}: {line}"
