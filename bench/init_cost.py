"""Set-up cost of a new T-LoRA: ``TLoRA.create`` (one full SVD per adapted layer, SPEC §3) for a
model's layer shapes, as T-LoRA Train runs it (``svd_device`` = the model's device).

    python bench/init_cost.py --arch sdxl --device cuda --rank 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(c.UNET_CONFIGS), default="sd15")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--min-rank", type=int, default=32)
    p.add_argument("--comfyui", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    comfyui = c.start(args)
    device = c.torch_device(args)

    import comfy.model_patcher
    import comfy.supported_models

    from tlora_nodes.nodes import model_kinds
    from tlora_nodes.tlora_core import TLoRA, TLoRAConfig

    config_class = getattr(comfy.supported_models, c.CONFIG_CLASSES[args.arch])
    model_config = config_class(dict(c.UNET_CONFIGS[args.arch], dtype=torch.float16))
    with torch.device("meta"):  # only the layer shapes are needed
        model = model_config.get_model({})
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    shapes = model_kinds.layer_shapes(model_kinds.find_targets(patcher, "bench"))
    config = TLoRAConfig(rank=args.rank, min_rank=args.min_rank, model_family=model_kinds.kind_of(patcher, "bench").family)
    seconds, _ = c.timed(device, lambda: TLoRA.create(config, shapes, seed=0, svd_device=device))
    result = {"benchmark": "init_cost", "arch": args.arch, "layers": len(shapes), "rank": args.rank,
              "seconds": seconds, "machine": c.machine_info(device, comfyui)}
    print(f"TLoRA.create for {args.arch} ({len(shapes)} layers, rank {args.rank}), SVD on {device}: {seconds:.1f}s")
    c.write_json(args.json, result)


if __name__ == "__main__":
    main()
