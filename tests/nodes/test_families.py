"""Every family of nodes/model_kinds.py with a tiny model of ComfyUI's own class, its shift node and
a real sampler: the rank of every model call, train → file → load → apply, and the plain export
read by ComfyUI's stock LoRA loader. Families ComfyUI 0.3.64 lacks are skipped there."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfyui

IMAGE = ["sdxl", "flux", "sd3", "auraflow", "flux2", "chroma", "chroma_radiance", "qwen_image", "lumina2", "z_image",
         "hidream", "kandinsky5_image"]


def model_of(tiny, kind: str, seed: int = 0):
    if not tiny.available(kind):
        pytest.skip(f"this ComfyUI has no {(tiny.BASE.get(kind) or tiny.ALL_FAMILIES[kind])[0]} model class")
    model = tiny.build(kind, seed=seed)
    return tiny.with_shift(model, kind) if kind in tiny.SHIFT else model


def apply(helpers, model, adapter, strength=1.0):
    from tlora_nodes.nodes.apply import TimestepAwareApply

    return helpers.run_node(TimestepAwareApply, model=model, tlora=adapter, strength_model=strength)[0]


@pytest.mark.parametrize("kind", IMAGE)
def test_every_model_call_uses_the_rank_of_its_own_sigma(tiny, helpers, kind):
    model = model_of(tiny, kind)
    adapter = helpers.make_adapter(model, rank=8, min_rank=2)
    patched = apply(helpers, model, adapter)
    log = helpers.CallLog(patched)
    tiny.sample(patched, kind, sampler="heun", scheduler="simple", steps=3, cfg=2.0)
    seen = log.assert_each_call_used_its_sigmas_rank(model, adapter.schedule)
    assert len(seen) > 1  # the schedule really moved over the run


@pytest.mark.parametrize("kind", IMAGE)
def test_trained_model_equals_load_then_apply_of_its_file(tiny, helpers, loras_dir, kind):
    from tlora_nodes.nodes.load import TLoRALoad
    from tlora_nodes.nodes.train import TLoRATrain

    model = model_of(tiny, kind)
    latents = {"samples": torch.randn(1, *tiny.LATENT[kind], generator=torch.Generator().manual_seed(5))}
    trained, adapter, loss, _previews = helpers.run_node(
        TLoRATrain, hidden={}, model=model, latents=latents, positive=tiny.conditioning(kind)[0], steps=2,
        learning_rate=0.02, rank=4, min_rank=2, schedule_power=1.0, variant="T-LoRA", init="principal", batch_size=1,
        seed=0, save_every=0, filename_prefix=f"tlora/{kind}", resume_from="none", training_dtype="fp32",
        gradient_checkpointing=True,
    )
    assert len(loss["loss"]) == 2 and adapter.config.model_family == kind
    loaded = helpers.run_node(TLoRALoad, lora_name=f"tlora/{kind}_00001_.safetensors", min_rank=0, schedule_power=0.0)[0]
    got = tiny.sample(trained, kind, steps=2, scheduler="simple")
    want = tiny.sample(apply(helpers, model, loaded), kind, steps=2, scheduler="simple")
    assert torch.equal(got, want)
    assert not torch.equal(got, tiny.sample(model, kind, steps=2, scheduler="simple"))  # it learned something


@pytest.mark.parametrize("kind", IMAGE)
def test_without_schedule_it_equals_the_stock_lora_loader_on_the_plain_export(tiny, helpers, kind):
    import comfy.sd

    from tlora_nodes.nodes import model_kinds
    from tlora_nodes.tlora_core import export_lora

    model = model_of(tiny, kind)
    adapter = helpers.make_adapter(model, rank=4, min_rank=4)
    key_map = model_kinds.key_map(model, "test")
    stock, _ = comfy.sd.load_lora_for_models(model, None, export_lora(adapter, None, "fp32", "comfyui", key_map), 0.7, 0)
    fused = {t.module for t in model_kinds.find_targets(model, "test").values()}
    assert set(k.removesuffix(".weight") for k in stock.patches) == fused  # every adapted weight, nothing else
    sigma = float(model.get_model_object("model_sampling").percent_to_sigma(0.4))
    got = helpers.denoise_at(apply(helpers, model, adapter, 0.7), kind, sigma)
    want = helpers.denoise_at(stock, kind, sigma)
    plain = helpers.denoise_at(model, kind, sigma)
    effect = (want - plain).abs().max().item()
    assert effect > 0
    torch.testing.assert_close(got - plain, want - plain, rtol=1e-3, atol=1e-3 * effect)


def test_a_tlora_of_a_family_with_the_same_layer_shapes_is_told_apart(tiny, helpers):
    chroma, flux2 = model_of(tiny, "chroma"), model_of(tiny, "flux2")
    adapter = helpers.make_adapter(chroma, rank=4, min_rank=2)
    from tlora_nodes.nodes import model_kinds

    assert adapter.shapes().items() <= model_kinds.layer_shapes(model_kinds.find_targets(flux2, "t")).items()
    with pytest.raises(ValueError, match="trained for Chroma, but the MODEL is FLUX.2"):
        apply(helpers, flux2, adapter)


def test_latents_of_another_family_are_refused_before_any_step(tiny, helpers, loras_dir):
    from tlora_nodes.nodes.train import TLoRATrain

    model = model_of(tiny, "sd3")
    with pytest.raises(ValueError, match="T-LoRA Train: the latents have 4 channels, this SD3 / SD3.5 model needs 16"):
        helpers.run_node(
            TLoRATrain, hidden={}, model=model, latents={"samples": torch.zeros(1, 4, 8, 8)}, positive=tiny.conditioning("sd3")[0],
            steps=2, learning_rate=0.02, rank=4, min_rank=2, schedule_power=1.0, variant="T-LoRA", init="last", batch_size=1,
            seed=0, save_every=0, filename_prefix="tlora/x", resume_from="none", training_dtype="fp32", gradient_checkpointing=False,
        )
    assert not any(loras_dir.rglob("*.safetensors"))


def test_a_class_the_table_lacks_is_adapted_when_its_blocks_have_known_shapes(tiny, helpers, caplog):
    """A FLUX-like class under a name the table doesn't list (as a newer ComfyUI may add): the
    generic entry adapts it by the double- and single-stream rules, and says which layers."""
    from tlora_nodes.nodes import model_kinds

    model = tiny.build("flux")
    config = model.model.model_config
    config.__class__ = type("NewFluxLike", (type(config),), {})

    with caplog.at_level("INFO"):
        kind = model_kinds.kind_of(model, "test")
    assert kind.family == "generic:NewFluxLike" and kind.rules == ("double-stream", "single-stream")
    assert "double_blocks" in caplog.text and "single_blocks" in caplog.text
    targets = model_kinds.find_targets(model, "test")
    assert sorted(targets)[:3] == ["double_blocks.0.img_attn.proj", "double_blocks.0.img_attn.qkv.k", "double_blocks.0.img_attn.qkv.q"]
    assert len(targets) == 10  # 7 per double block + 3 per single block


def test_a_class_whose_blocks_have_no_known_shape_is_refused_with_the_list(tiny, helpers):
    from tlora_nodes.nodes import model_kinds

    model = tiny.build("sd15")
    model.model.model_config = type("StableCascade_C", (), {"unet_config": {}})()
    with pytest.raises(ValueError, match="can't adapt a StableCascade_C model: .*\\(SD1.5, .*FLUX.2, .*Wan 2.1"):
        model_kinds.kind_of(model, "test")
