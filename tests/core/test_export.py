"""Plain-LoRA export: exact in fp16/bf16, one rank, key styles, key maps, and nothing half-written."""

from __future__ import annotations

import copy
import functools
import os

import pytest
import torch
from safetensors.torch import load_file

from tlora_nodes.tlora_core import LoraTarget, TLoRA, TLoRAConfig, export_lora, save_lora
from tlora_nodes.tlora_core import export
from tlora_nodes.tlora_core.functional import balanced_factors

# SD-XL-like widths (self- and cross-attention); R = 64 as in the paper
SHAPES = {"x.attn1.to_q": (640, 640), "x.attn2.to_k": (2048, 1280)}
RANK = 64
# early: a tenth of one AdamW step at lr 1e-4 away from init, where the Ortho branches cancel to
# about 1e-3 of their size; late: well trained
STAGES = {"early": 1e-5, "late": 3e-3}
BOUND = {"fp16": 1e-3, "bf16": 5e-3}


def trained(variant: str, stage: str, shapes=None, rank=RANK, family="sdxl") -> TLoRA:
    if shapes is None:  # the SD-XL-sized adapters are built once (the Ortho init's SVDs take seconds)
        return copy.deepcopy(_sdxl_sized(variant, stage))
    return _build(variant, stage, shapes, rank, family)


@functools.cache
def _sdxl_sized(variant: str, stage: str) -> TLoRA:
    return _build(variant, stage, SHAPES, RANK, "sdxl")


def _build(variant: str, stage: str, shapes, rank: int, family: str) -> TLoRA:
    config = TLoRAConfig(variant=variant, rank=rank, min_rank=rank // 2, model_family=family)
    adapter = TLoRA.create(config, shapes, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * STAGES[stage])
    return adapter


def mask_of(r: int, rank: int = RANK) -> torch.Tensor:
    return torch.cat([torch.ones(r), torch.zeros(rank - r)])


def exact_delta(layer, r: int, rank: int = RANK) -> torch.Tensor:
    """ΔW(r) by TLoRALayer.delta_weight on a float64 copy: the float32 parameters' exact ΔW (in
    float32 the Ortho branches' own cancellation costs ~1e-4 of ΔW early in training)."""
    return copy.deepcopy(layer).double().delta_weight(mask_of(r, rank).double()).detach()


def rebuilt(sd: dict, key: str) -> torch.Tensor:
    """What ComfyUI's stock loader adds: alpha / rank · up @ down."""
    down, up = sd[f"{key}.lora_down.weight"].double(), sd[f"{key}.lora_up.weight"].double()
    return float(sd[f"{key}.alpha"]) / down.shape[0] * (up @ down)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def two_branch(layer, r: int, dtype: torch.dtype) -> torch.Tensor:
    """The export before exact factoring: [λP, −λ0P0] and [Q; Q0] cast apart."""
    down, up = layer.lora_factors(r)
    return up.detach().to(dtype).double() @ down.detach().to(dtype).double()


@pytest.mark.parametrize("storage", ["fp16", "bf16"])
@pytest.mark.parametrize("stage", ["early", "late"])
@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
@pytest.mark.parametrize("r", [RANK, RANK // 2])
def test_export_rebuilds_delta_within_the_dtypes_own_rounding(variant, stage, storage, r):
    adapter = trained(variant, stage)
    sd = export_lora(adapter, rank=r, storage_dtype=storage)
    for name, layer in adapter.items():
        want = exact_delta(layer, r)
        got = rebuilt(sd, "lora_unet_" + name.replace(".", "_"))
        assert relative(got, want) <= BOUND[storage], (name, relative(got, want))
        # against the float32 ΔW as training computes it, the float32 rounding of the two
        # branches is added (about 1e-4 early for T-LoRA)
        as_trained = layer.delta_weight(mask_of(r)).detach().double()
        assert relative(got, as_trained) <= BOUND[storage] + 1e-3


def test_the_two_branch_export_fails_the_bound_the_exact_one_meets():
    """The test bites: casting the Ortho branches apart loses most of an early ΔW in fp16."""
    layer = trained("tlora", "early").layer("x.attn1.to_q")
    want = exact_delta(layer, RANK)
    assert relative(two_branch(layer, RANK, torch.float16), want) > 0.1
    assert relative(two_branch(layer, RANK, torch.bfloat16), want) > 1.0
    vanilla = trained("vanilla", "early").layer("x.attn1.to_q")  # up near zero: fp16 subnormals
    assert relative(two_branch(vanilla, RANK, torch.float16), exact_delta(vanilla, RANK)) > BOUND["fp16"]


def test_export_ranks_are_at_most_r_for_vanilla_and_2r_for_tlora():
    for variant, per_component in (("vanilla", 1), ("tlora", 2)):
        adapter = trained(variant, "late")
        for r in (1, 7, RANK):
            sd = export_lora(adapter, rank=r)
            for name in adapter.names:
                key = "lora_unet_" + name.replace(".", "_")
                assert sd[f"{key}.lora_down.weight"].shape[0] == per_component * r
                assert float(sd[f"{key}.alpha"]) == per_component * r


def test_zero_delta_at_init_exports_one_zero_component_without_nan():
    for variant in ("tlora", "vanilla"):
        adapter = TLoRA.create(TLoRAConfig(variant=variant, rank=8, min_rank=2), {"a.to_q": (16, 24)}, seed=0)
        for storage in ("fp32", "fp16", "bf16"):
            sd = export_lora(adapter, storage_dtype=storage)
            down, up, alpha = sd["lora_unet_a_to_q.lora_down.weight"], sd["lora_unet_a_to_q.lora_up.weight"], sd["lora_unet_a_to_q.alpha"]
            assert down.shape == (1, 16) and up.shape == (24, 1) and float(alpha) == 1.0
            assert not down.any() and not up.any() and torch.isfinite(down).all() and torch.isfinite(up).all()


def test_tiny_fp16_delta_is_scaled_into_range_and_alpha_undoes_it():
    """A ΔW of ~1e-8 (after a minute step) has factors inside fp16's subnormal range; scaled by a
    power of two, with alpha carrying the scale back, it is still exact to fp16's rounding."""
    adapter = trained("tlora", "early")
    with torch.no_grad():
        for name, layer in adapter.items():
            layer.p.copy_(layer.p0 + (layer.p - layer.p0) * 0.01)
            layer.q.copy_(layer.q0 + (layer.q - layer.q0) * 0.01)
            layer.lam.copy_(layer.lam0 + (layer.lam - layer.lam0) * 0.01)
    sd = export_lora(adapter, storage_dtype="fp16")
    for name, layer in adapter.items():
        key = "lora_unet_" + name.replace(".", "_")
        assert float(sd[f"{key}.alpha"]) < sd[f"{key}.lora_down.weight"].shape[0]  # scaled
        assert relative(rebuilt(sd, key), exact_delta(layer, RANK)) <= BOUND["fp16"]
    late = export_lora(trained("tlora", "late"), storage_dtype="fp16")
    assert all(float(v) == late[k.replace(".alpha", ".lora_down.weight")].shape[0] for k, v in late.items() if k.endswith(".alpha"))


def test_balanced_factors_share_the_scale_and_handle_more_components_than_rows():
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randn(4, 10, generator=g, dtype=torch.float64)
    d, u = balanced_factors(down, up)
    assert d.shape == (4, 6) and u.shape == (4, 4)  # rank of a 4 x 6 product
    torch.testing.assert_close(u @ d, up @ down, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.linalg.norm(u, dim=0), torch.linalg.norm(d, dim=1))  # √s on both sides
    with pytest.raises(ValueError, match=r"down \(k, in\) and up \(out, k\); got \(10, 6\) and \(4, 9\)"):
        balanced_factors(down, up[:, :9])


@pytest.mark.parametrize("rank", [0, 65, -1, 2.5, True])
def test_export_rank_outside_1_to_R_is_named_and_nothing_is_written(tmp_path, rank):
    adapter = trained("vanilla", "late")
    with pytest.raises(ValueError, match=rf"export rank \({rank!r}\) must be a whole number from 1 to the adapter's rank \(64\)"):
        save_lora(str(tmp_path / "a.safetensors"), adapter, rank=rank)
    assert os.listdir(tmp_path) == []


def test_key_styles_for_unets_and_flux():
    unet = trained("vanilla", "late", shapes={"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (8, 8)}, rank=4)
    flux = trained("vanilla", "late", shapes={"transformer_blocks.0.attn.to_q": (8, 8)}, rank=4, family="flux")
    assert set(export_lora(unet)) == {
        f"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.{s}" for s in ("lora_up.weight", "lora_down.weight", "alpha")
    }
    assert set(export_lora(unet, key_style="diffusers")) == {
        f"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.{s}" for s in ("lora_A.weight", "lora_B.weight")
    }
    assert set(export_lora(flux, key_style="diffusers")) == {
        f"transformer.transformer_blocks.0.attn.to_q.{s}" for s in ("lora_A.weight", "lora_B.weight")
    }
    sd = export_lora(flux, key_style="diffusers")
    layer = flux.layer("transformer_blocks.0.attn.to_q")
    got = sd["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"].double() @ sd["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"].double()
    assert relative(got, exact_delta(layer, 4, 4)) < 1e-6  # no alpha: scale 1
    with pytest.raises(ValueError, match="key style 'peft' unknown"):
        export_lora(unet, key_style="peft")


def test_key_map_callable_mapping_and_fused_row_slices():
    """A caller's naming, e.g. FLUX q/k/v as row slices of one fused qkv weight."""
    shapes = {f"transformer_blocks.0.attn.{p}": (8, 8) for p in ("to_q", "to_k", "to_v")} | {"transformer_blocks.0.attn.to_out.0": (8, 8)}
    adapter = trained("tlora", "late", shapes=shapes, rank=3, family="flux")
    fused = {f"transformer_blocks.0.attn.{p}": LoraTarget("lora_unet_double_blocks_0_img_attn_qkv", (8 * i, 8), 24) for i, p in enumerate(("to_q", "to_k", "to_v"))}
    fused["transformer_blocks.0.attn.to_out.0"] = "lora_unet_double_blocks_0_img_attn_proj"
    for key_map in (fused, fused.__getitem__):
        sd = export_lora(adapter, key_map=key_map)
        assert {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in sd} == {
            "lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_img_attn_proj"
        }
        qkv = rebuilt(sd, "lora_unet_double_blocks_0_img_attn_qkv")
        assert qkv.shape == (24, 8) and sd["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 3 * 6
        want = torch.cat([exact_delta(adapter.layer(f"transformer_blocks.0.attn.{p}"), 3, 3) for p in ("to_q", "to_k", "to_v")])
        assert relative(qkv, want) < 1e-6
    with pytest.raises(ValueError, match="overlap in rows"):
        export_lora(adapter, key_map=fused | {"transformer_blocks.0.attn.to_k": LoraTarget("lora_unet_double_blocks_0_img_attn_qkv", (4, 8), 24)})
    with pytest.raises(ValueError, match="2 layers map to one key 'same'"):
        export_lora(adapter, key_map=lambda name: "same" if name.endswith(("to_q", "to_k")) else name)
    with pytest.raises(ValueError, match="the key map has no entry for layer 'transformer_blocks.0.attn.to_out.0'"):
        export_lora(adapter, key_map={k: v for k, v in fused.items() if "to_out" not in k})
    with pytest.raises(ValueError, match=r"rows \(20, 8\) must lie inside total_rows \(24\)"):
        LoraTarget("k", (20, 8), 24)


def test_save_lora_writes_metadata_that_says_one_rank_at_every_step(tmp_path):
    adapter = trained("tlora", "late")
    path = str(tmp_path / "plain.safetensors")
    written = save_lora(path, adapter, rank=40, storage_dtype="bf16")
    sd = load_file(path)
    assert sd.keys() == written.keys() and all(torch.equal(sd[k], written[k]) for k in sd)
    assert all(v.dtype == (torch.float32 if k.endswith("alpha") else torch.bfloat16) for k, v in sd.items())
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["export_rank"] == "40" and meta["key_style"] == "comfyui" and meta["storage_dtype"] == "bf16"
    assert "one rank at every step" in meta["export_note"]
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_export_to_a_full_disk_leaves_nothing_under_the_name(tmp_path, monkeypatch):
    path = tmp_path / "plain.safetensors"
    path.write_bytes(b"previous export")

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_lora(str(path), trained("vanilla", "late"))
    assert path.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["plain.safetensors"]
