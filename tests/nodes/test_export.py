"""T-LoRA Export: its file in models/loras through ComfyUI's own LoRA loader node equals the adapter
merged at the exported rank (an independent computation), for families of every rule; its
LORA_MODEL through 0.33's stock Load LoRA Model; the reference SD-XL layout; bad input."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfyui


def export(helpers, model, adapter, **overrides):
    from tlora_nodes.nodes.export import TLoRAExport

    inputs = dict(export_rank="custom_rank", custom_rank=3, storage_dtype="fp32", format="LoRA, ComfyUI / kohya keys",
                  filename_prefix="tlora/exported")
    inputs.update(overrides)
    return helpers.run_node(TLoRAExport, model=model, tlora=adapter, **inputs)


def relative_error(got, want, plain) -> float:
    return float((got - want).abs().max() / (want - plain).abs().max())


@pytest.mark.parametrize("kind", ["sd15", "flux", "sd3", "lumina2", "hidream"])
def test_the_exported_file_through_the_stock_lora_loader_equals_the_adapter_merged_at_that_rank(tiny, helpers, loras_dir, kind):
    import nodes as comfy_nodes

    if not tiny.available(kind):
        pytest.skip(f"this ComfyUI lacks the {kind} model class")
    model = tiny.build(kind)
    adapter = helpers.make_adapter(model, rank=6, min_rank=2)
    lora_model, = export(helpers, model, adapter, storage_dtype="fp16")
    assert sorted(p.name for p in (loras_dir / "tlora").iterdir()) == ["exported_00001_.safetensors"]
    stock = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "tlora/exported_00001_.safetensors", 1.0)[0]
    sigma = float(model.get_model_object("model_sampling").percent_to_sigma(0.5))
    want = helpers.denoise_at(helpers.merged_model(model, adapter, 3), kind, sigma)  # ΔW(3) added by hand
    got = helpers.denoise_at(stock, kind, sigma)
    assert relative_error(got, want, helpers.denoise_at(model, kind, sigma)) < 2e-3  # fp16 storage
    assert all(v.dtype == torch.float32 for v in lora_model.values())


def test_the_lora_model_output_feeds_comfyuis_load_lora_model_node(tiny, helpers, loras_dir):
    try:
        from comfy_extras.nodes_train import LoraModelLoader
    except ImportError:
        pytest.skip("this ComfyUI has no Load LoRA Model node")
    model = tiny.build("sdxl")
    adapter = helpers.make_adapter(model, rank=6, min_rank=2)
    lora_model, = export(helpers, model, adapter, export_rank="rank (as at low noise)")
    inputs = dict(model=model, lora=lora_model, strength_model=1.0)
    stock = (helpers.run_node(LoraModelLoader, **inputs) if hasattr(LoraModelLoader, "define_schema")
             else LoraModelLoader().load_lora_model(**inputs))[0]
    sigma = float(model.get_model_object("model_sampling").percent_to_sigma(0.5))
    want = helpers.denoise_at(helpers.merged_model(model, adapter, 6), "sdxl", sigma)
    assert relative_error(helpers.denoise_at(stock, "sdxl", sigma), want, helpers.denoise_at(model, "sdxl", sigma)) < 1e-4


def test_min_rank_export_is_the_adapter_at_high_noise_and_the_diffusers_style_loads_too(tiny, helpers, loras_dir):
    from safetensors.torch import load_file

    model = tiny.build("flux")
    adapter = helpers.make_adapter(model, variant="vanilla", rank=6, min_rank=2)
    export(helpers, model, adapter, export_rank="min_rank (as at high noise)", format="LoRA, diffusers / PEFT keys")
    tensors = load_file(str(loras_dir / "tlora" / "exported_00001_.safetensors"))
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    assert {v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight")} == {2}


def test_the_reference_sdxl_layout_is_a_run_folder_with_hparams(tiny, helpers, loras_dir):
    import yaml
    from safetensors.torch import load_file

    model = tiny.build("sdxl")
    adapter = helpers.make_adapter(model, rank=6, min_rank=2)
    adapter.training_steps = 40
    export(helpers, model, adapter, format="T-LoRA, reference SD-XL layout")
    run = loras_dir / "tlora" / "exported_00001_"
    weights = load_file(str(run / "checkpoint-40" / "pytorch_lora_weights.safetensors"))
    assert all(".processor." in k and "_lora." in k for k in weights) and len(weights) == 6 * len(adapter.names)
    hparams = yaml.safe_load((run / "logs" / "hparams.yml").read_text())
    assert (hparams["lora_rank"], hparams["min_rank"], hparams["alpha_rank_scale"]) == (6, 2, 1.0)
    export(helpers, model, adapter, format="T-LoRA, reference SD-XL layout")  # a second export: a new folder
    assert (loras_dir / "tlora" / "exported_00002_").is_dir()


def test_bad_exports_name_the_node_and_write_nothing(tiny, helpers, loras_dir, monkeypatch):
    model = tiny.build("sd3") if tiny.available("sd3") else None
    flux = tiny.build("flux")
    adapter = helpers.make_adapter(flux, rank=6, min_rank=2)
    with pytest.raises(ValueError, match="T-LoRA Export: export rank \\(9\\) must be a whole number from 1 to the adapter's rank \\(6\\)"):
        export(helpers, flux, adapter, custom_rank=9)
    with pytest.raises(ValueError, match="T-LoRA Export: .*reference SD-XL layout has no place"):
        export(helpers, flux, adapter, format="T-LoRA, reference SD-XL layout")
    if model is not None:
        sd3_adapter = helpers.make_adapter(model, rank=4, min_rank=2)
        with pytest.raises(ValueError, match="T-LoRA Export: diffusers/PEFT names are known here for .* not for SD3"):
            export(helpers, model, sd3_adapter, format="LoRA, diffusers / PEFT keys")
    with pytest.raises(ValueError, match="T-LoRA Export: this T-LoRA was trained for FLUX.1, but the MODEL is SD1.5"):
        export(helpers, tiny.build("sd15"), adapter)
    from tlora_nodes.tlora_core import export as core_export

    def full_disk(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core_export, "save_file", full_disk)
    with pytest.raises(OSError, match="T-LoRA Export: could not write the export .*No space left"):
        export(helpers, flux, adapter)
    assert not [p for p in loras_dir.rglob("*") if p.is_file()]  # nothing half-written under any name
