"""Dry import check: everything the benchmarks import, and nothing else.

Prints the third-party top-level modules that got imported (what a machine must have) with their
versions. Exit status 0 when the whole benchmark path imports.

    python bench/import_check.py [--device cpu|cuda] [--comfyui PATH]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--comfyui", default=None)
    args = p.parse_args()
    comfyui = c.find_comfyui(args.comfyui)
    c.setup_comfyui(comfyui, args.device)
    c.load_pack()

    import torch

    import comfy.model_management
    import comfy.sample
    import comfy.sd
    import comfy.supported_models
    from comfy_extras.nodes_train import TrainLoraNode  # noqa: F401

    from tlora_nodes.nodes import patching  # noqa: F401
    from tlora_nodes.nodes.train import TLoRATrain  # noqa: F401
    from tlora_nodes.tlora_core import export_lora  # noqa: F401

    std = set(sys.stdlib_module_names)
    mine = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "latent_preview", "node_helpers",
            "protocol", "tlora_nodes", "_common", "comfyui_version", "app", "utils", "nodes"}
    tops = sorted({m.split(".")[0] for m in sys.modules} - std - mine)
    dists = importlib.metadata.packages_distributions()
    rows = []
    for top in tops:
        if top.startswith("_"):
            continue
        names = dists.get(top, [])
        version = ""
        for n in names:
            try:
                version = importlib.metadata.version(n)
                break
            except importlib.metadata.PackageNotFoundError:
                pass
        mod = sys.modules.get(top)
        where = getattr(mod, "__file__", None) or ""
        rows.append(f"  {top:22s} {version:14s} {where}")
    print(f"ComfyUI {c.comfyui_version(comfyui)} at {comfyui}")
    print(f"device: {comfy.model_management.get_torch_device()}  torch {torch.__version__}")
    print("third-party modules imported:")
    print("\n".join(rows))
    if args.device == "cuda":
        x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        print(f"cuda ok: {torch.cuda.get_device_name(0)}, bf16 matmul {tuple((x @ x).shape)}")
        import comfy.ldm.modules.attention as attention

        print(f"attention: {attention.optimized_attention.__name__}")
    print("import check: OK")


if __name__ == "__main__":
    main()
