"""tlora_core.save_lora's files in ComfyUI's own stock LoRA loader: every key is mapped, and the
weights change by ΔW(r) to the storage dtype's rounding (fp16/bf16), for each model family."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.comfyui

BOUND = {"fp16": 1e-3, "bf16": 5e-3}


def stock_weight_deltas(model, path: str) -> dict[str, torch.Tensor]:
    """ΔW per patched weight as ComfyUI's LoraLoader applies the file (strength 1)."""
    import comfy.sd
    import comfy.utils

    lora = comfy.utils.load_torch_file(path)
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    keys = list(patched.patches)
    before = {k: comfy.utils.get_attr(model.model, k).detach().clone() for k in keys}
    patched.patch_model()
    try:
        return {k: comfy.utils.get_attr(patched.model, k).detach().double() - before[k].double() for k in keys}
    finally:
        patched.unpatch_model()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "flux"])
@pytest.mark.parametrize("storage", ["fp16", "bf16"])
def test_stock_loader_applies_the_export_exactly(tiny, helpers, tmp_path, kind, storage):
    from tlora_nodes.nodes import model_kinds
    from tlora_nodes.tlora_core import save_lora

    model = tiny.build(kind)
    variant = "vanilla" if kind == "flux" else "tlora"
    adapter = helpers.make_adapter(model, variant=variant, rank=8, min_rank=2, scale=0.01)
    targets = model_kinds.find_targets(model, "test")
    for rank in (8, 3):
        path = str(tmp_path / f"{kind}_{rank}.safetensors")
        save_lora(path, adapter, rank=rank, storage_dtype=storage)
        deltas = stock_weight_deltas(model, path)
        weights = {t.module + ".weight" for t in targets.values()}
        assert set(deltas) == weights  # every layer's key reached its weight, nothing else
        mask = torch.cat([torch.ones(rank), torch.zeros(8 - rank)])
        for name, layer in adapter.items():
            target = targets[name]
            got = deltas[target.module + ".weight"]
            if target.rows is not None:
                got = got[target.rows[0] : target.rows[0] + target.rows[1]]
            want = copy.deepcopy(layer).double().delta_weight(mask.double()).detach()
            assert relative(got, want) <= BOUND[storage], (name, relative(got, want))


def test_flux_diffusers_key_style_also_loads_in_comfyui(tiny, helpers, tmp_path):
    from tlora_nodes.nodes import model_kinds
    from tlora_nodes.tlora_core import save_lora

    model = tiny.build("flux")
    adapter = helpers.make_adapter(model, variant="vanilla", rank=4, min_rank=1)
    path = str(tmp_path / "peft.safetensors")
    save_lora(path, adapter, storage_dtype="fp32", key_style="diffusers")
    deltas = stock_weight_deltas(model, path)
    targets = model_kinds.find_targets(model, "test")
    for name, layer in adapter.items():
        target = targets[name]
        got = deltas[target.module + ".weight"]
        if target.rows is not None:
            got = got[target.rows[0] : target.rows[0] + target.rows[1]]
        assert relative(got, layer.delta_weight(torch.ones(4)).detach().double()) < 1e-5
