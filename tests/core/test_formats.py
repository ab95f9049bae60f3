"""Files: our format's round trip, reference import, plain-LoRA export, and bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from tlora_nodes.tlora_core import (
    TLoRA,
    TLoRAConfig,
    TLoRAFileError,
    export_lora,
    load_tlora,
    save_lora,
    save_tlora,
)
from tlora_nodes.tlora_core import formats

from .sdxl_layout import attention_modules, reference_state_dict
from .test_adapter import SHAPES, perturb


def make(variant="tlora", family="sdxl", rank=20, min_rank=6):
    config = TLoRAConfig(variant=variant, rank=rank, min_rank=min_rank, schedule_power=1.5, model_family=family)
    adapter = perturb(TLoRA.create(config, SHAPES, seed=2))
    adapter.training_steps = 123
    return adapter


def same_parameters(a: TLoRA, b: TLoRA) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
def test_save_load_round_trip_is_bit_exact_with_metadata(tmp_path, variant):
    adapter = make(variant)
    path = str(tmp_path / "a.safetensors")
    save_tlora(path, adapter, extra_metadata={"seed": "7"})
    loaded = load_tlora(path)
    assert loaded.source == "tlora-nodes"
    assert loaded.adapter.config == adapter.config
    assert loaded.adapter.training_steps == 123
    assert loaded.adapter.names == adapter.names
    assert same_parameters(loaded.adapter, adapter)
    meta = loaded.metadata
    assert meta["variant"] == variant and meta["rank"] == "20" and meta["min_rank"] == "6"
    assert meta["schedule_power"] == "1.5" and meta["init"] == "last" and meta["model_family"] == "sdxl"
    assert meta["format_version"] == "1" and meta["training_steps"] == "123" and meta["seed"] == "7"
    assert json.loads(meta["layers"]) == [[n, i, o] for n, (i, o) in SHAPES.items()]


def test_the_timestep_range_of_an_expert_round_trips_and_older_files_mean_every_timestep(tmp_path):
    from tlora_nodes.tlora_core import summarize_tlora

    high = make().with_config(timestep_range=(875, 1000))
    path = str(tmp_path / "high.safetensors")
    save_tlora(path, high)
    loaded = load_tlora(path)
    assert loaded.adapter.config.timestep_range == (875, 1000) and loaded.adapter.config == high.config
    assert loaded.metadata["timestep_range"] == "875,1000"
    assert summarize_tlora(path).timestep_range == (875, 1000)
    whole = str(tmp_path / "whole.safetensors")
    save_tlora(whole, make())
    assert load_tlora(whole).metadata["timestep_range"] == "0,1000"
    assert load_tlora(whole).adapter.config.timestep_range is None
    tensors, metadata = formats._read(whole)
    del metadata["timestep_range"]  # as files written before ranges existed
    save_file(tensors, whole, metadata=metadata)
    assert "timestep_range" not in load_tlora(whole).metadata
    assert load_tlora(whole).adapter.config.timestep_range is None and summarize_tlora(whole).timestep_range is None


@pytest.mark.parametrize("storage", ["fp16", "bf16"])
def test_half_storage_round_trips_to_the_rounded_values(tmp_path, storage):
    adapter = make()
    path = str(tmp_path / "a.safetensors")
    save_tlora(path, adapter, storage_dtype=storage)
    loaded = load_tlora(path).adapter
    dtype = formats.STORAGE_DTYPES[storage]
    for key, value in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.to(dtype).float())
    assert os.path.getsize(path) < 0.6 * sum(v.numel() * 4 for v in adapter.state_dict().values())


def test_load_overrides_schedule_when_asked(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_tlora(path, make())
    loaded = load_tlora(path, min_rank=10, schedule_power=1.0).adapter
    assert (loaded.config.min_rank, loaded.config.schedule_power) == (10, 1.0)


def test_training_state_is_kept_apart_from_the_adapter(tmp_path):
    path = str(tmp_path / "ckpt.safetensors")
    state = {"optimizer.0.exp_avg": torch.randn(3), "rng.cpu": torch.arange(5, dtype=torch.uint8)}
    save_tlora(path, make(), training_state=state)
    loaded = load_tlora(path)
    assert loaded.training_state.keys() == state.keys()
    assert all(torch.equal(loaded.training_state[k], v) for k, v in state.items())


@pytest.mark.parametrize("variant,keys", [("vanilla", 1120), ("tlora", 3360)])
def test_reference_sdxl_file_imports_with_exact_key_set(tmp_path, variant, keys):
    sd = reference_state_dict(variant, rank=4)
    assert len(sd) == keys
    path = str(tmp_path / "pytorch_lora_weights.safetensors")
    save_file(sd, path)
    loaded = load_tlora(path, min_rank=2, schedule_power=1.0)
    adapter = loaded.adapter
    assert loaded.source == "reference"
    assert adapter.config.variant == variant and adapter.config.rank == 4 and adapter.config.min_rank == 2
    assert adapter.config.model_family == "sdxl"
    assert len(adapter.names) == 140 * 4
    modules = {m for m, _, _ in attention_modules()}
    assert {n.rsplit(".", 1)[0] if not n.endswith("to_out.0") else n[: -len(".to_out.0")] for n in adapter.names} == modules
    # values land in the right place, with the reference's orientation
    name = "down_blocks.2.attentions.1.transformer_blocks.9.attn2"
    layer = adapter.layer(f"{name}.to_k")
    assert (layer.in_features, layer.out_features) == (2048, 1280)
    key = f"{name}.processor.to_k_lora"
    if variant == "vanilla":
        assert torch.equal(layer.down, sd[f"{key}.down.weight"]) and torch.equal(layer.up, sd[f"{key}.up.weight"])
    else:
        assert torch.equal(layer.q, sd[f"{key}.q_layer.weight"]) and torch.equal(layer.p0, sd[f"{key}.base_p.weight"])
        assert torch.equal(layer.lam, sd[f"{key}.lambda_layer"][0])
        assert torch.equal(layer.lam0, sd[f"{key}.base_lambda"][0])
    out_layer = adapter.layer(f"{name}.to_out.0")
    assert out_layer.in_features == 1280


def test_reference_file_without_hparams_gets_the_reference_code_defaults(tmp_path):
    path = str(tmp_path / "pytorch_lora_weights.safetensors")
    save_file(reference_state_dict("vanilla", rank=4), path)
    loaded = load_tlora(path)
    assert (loaded.adapter.config.min_rank, loaded.adapter.config.schedule_power) == (1, 1.0)
    assert loaded.schedule.source == "default" and "no hparams.yml" in loaded.schedule.reason


def test_reference_file_with_a_missing_key_is_refused(tmp_path):
    sd = reference_state_dict("tlora", rank=4)
    del sd["mid_block.attentions.0.transformer_blocks.3.attn1.processor.to_v_lora.base_lambda"]
    path = str(tmp_path / "ref.safetensors")
    save_file(sd, path)
    with pytest.raises(TLoRAFileError, match=r"attn1\.to_v' lacks lam0"):
        load_tlora(path, min_rank=2)


def test_file_that_is_neither_says_what_it_found(tmp_path):
    path = str(tmp_path / "plain.safetensors")
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2), "lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(TLoRAFileError, match="neither a tlora-nodes file nor a reference.*2 tensors.*plain LoRA keys"):
        load_tlora(path)


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
@pytest.mark.parametrize("rank", [None, 1, 7, 20])
def test_export_gives_a_plain_lora_with_the_same_delta(tmp_path, variant, rank):
    adapter = make(variant)
    path = str(tmp_path / "plain.safetensors")
    save_lora(path, adapter, rank=rank, storage_dtype="fp32")
    sd = load_file(path)
    r = adapter.config.rank if rank is None else rank
    mask = torch.cat([torch.ones(r), torch.zeros(adapter.config.rank - r)])
    for name, layer in adapter.items():
        key = "lora_unet_" + name.replace(".", "_")
        up, down, alpha = sd[f"{key}.lora_up.weight"], sd[f"{key}.lora_down.weight"], sd[f"{key}.alpha"]
        k = down.shape[0]  # ΔW's own rank: at most r (Vanilla) or 2r (T-LoRA), and the layer's size
        assert k <= min(min(r, layer.rank) * (1 if variant == "vanilla" else 2), layer.in_features, layer.out_features)
        assert down.shape == (k, layer.in_features) and up.shape == (layer.out_features, k)
        assert float(alpha) == k  # ComfyUI scales by alpha / rank = 1
        torch.testing.assert_close(up @ down, layer.delta_weight(mask).detach(), rtol=1e-5, atol=1e-6)


def test_flux_export_uses_diffusers_transformer_keys():
    config = TLoRAConfig(variant="vanilla", rank=4, min_rank=1, model_family="flux")
    adapter = TLoRA.create(config, {"transformer_blocks.0.attn.to_q": (8, 8)})
    assert set(export_lora(adapter)) == {
        "transformer.transformer_blocks.0.attn.to_q.lora_up.weight",
        "transformer.transformer_blocks.0.attn.to_q.lora_down.weight",
        "transformer.transformer_blocks.0.attn.to_q.alpha",
    }


# -- bad input: clear errors, nothing lost ------------------------------------------------------
def test_missing_file_names_the_folder(tmp_path):
    with pytest.raises(TLoRAFileError, match="file not found.*models/loras"):
        load_tlora(str(tmp_path / "nope.safetensors"))


def test_truncated_file_is_refused(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_tlora(path, make())
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(TLoRAFileError, match="not a readable safetensors file.*truncated"):
        load_tlora(path)


def test_pickle_of_plain_tensors_that_is_no_reference_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / "lora.pt")
    torch.save({"x": torch.zeros(2)}, path)
    with pytest.raises(TLoRAFileError, match="lora.pt is not a reference FLUX T-LoRA checkpoint.*'x'"):
        load_tlora(path)


def rewrite(path, tensors=None, metadata=None):
    sd, meta = formats._read(path)
    sd.update(tensors or {})
    meta.update(metadata or {})
    save_file({k: v for k, v in sd.items() if v is not None}, path, metadata=meta)


def test_newer_format_version_asks_to_update_the_pack(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_tlora(path, make())
    rewrite(path, metadata={"format_version": "2"})
    with pytest.raises(TLoRAFileError, match="newer tlora-nodes \\(format version 2.*Update the tlora-nodes pack"):
        load_tlora(path)


def test_missing_and_extra_keys_are_named(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_tlora(path, make())
    sd, meta = formats._read(path)
    del sd["a.to_q.q0"]
    sd["a.to_q.bonus"] = torch.zeros(1)
    save_file(sd, path, metadata=meta)
    with pytest.raises(TLoRAFileError, match="1 missing \\(e.g. 'a.to_q.q0'\\), 1 unexpected \\(e.g. 'a.to_q.bonus'\\)"):
        load_tlora(path)


def test_wrong_shape_is_named(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_tlora(path, make())
    rewrite(path, tensors={"a.to_k.p": torch.zeros(40, 19)})
    with pytest.raises(TLoRAFileError, match="'a.to_k.p' has shape \\(40, 19\\), expected \\(40, 20\\)"):
        load_tlora(path)


def test_nan_weights_are_refused(tmp_path):
    path = str(tmp_path / "a.safetensors")
    adapter = make()
    with torch.no_grad():
        adapter.layer("a.to_q").p[0, 0] = float("nan")
    save_tlora(path, adapter)
    with pytest.raises(TLoRAFileError, match="NaN or inf values in 'a.to_q.p'"):
        load_tlora(path)


def test_bad_metadata_value_is_explained(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_tlora(path, make())
    rewrite(path, metadata={"variant": "lokr"})
    with pytest.raises(TLoRAFileError, match="invalid metadata: unknown variant 'lokr'"):
        load_tlora(path)


@pytest.mark.parametrize(
    "metadata,fragment",
    [
        ({"layers": '[["a.to_q", 8]]'}, "a missing or bad layer list"),
        ({"layers": "not json"}, "a missing or bad layer list"),
        ({"training_steps": "abc"}, "a missing or bad 'training_steps' \\('abc'\\)"),
        ({"schedule_power": "fast"}, "a bad 'schedule_power' \\('fast'\\)"),
        ({"rank": "sixty-four"}, "a missing or bad 'rank'"),
        ({"timestep_range": "875"}, "a bad 'timestep_range' \\('875'\\)"),
        ({"timestep_range": "900,875"}, "a bad 'timestep_range' \\('900,875'\\)"),
    ],
)
def test_damaged_metadata_is_named_when_loading_and_summarising(tmp_path, metadata, fragment):
    from tlora_nodes.tlora_core import summarize_tlora

    path = str(tmp_path / "a.safetensors")
    save_tlora(path, make())
    rewrite(path, metadata=metadata)
    with pytest.raises(TLoRAFileError, match=f"a.safetensors has {fragment}.*damaged. Re-save it"):
        load_tlora(path)
    if "layers" not in metadata:  # the summary reads only the header's scalar fields
        with pytest.raises(TLoRAFileError, match=f"a.safetensors has {fragment}"):
            summarize_tlora(path)


def test_layer_list_with_an_impossible_layer_is_invalid_metadata(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_tlora(path, make())
    rewrite(path, metadata={"layers": json.dumps([["a.to_q", 0, 40]])})
    with pytest.raises(TLoRAFileError, match="invalid metadata: layer in_features \\(0\\) must be a whole number >= 1"):
        load_tlora(path)


def test_reference_lambda_of_the_wrong_size_is_named(tmp_path):
    sd = reference_state_dict("tlora", rank=4)
    key = "mid_block.attentions.0.transformer_blocks.3.attn1.processor.to_v_lora.lambda_layer"
    sd[key] = torch.rand(1, 3)
    path = str(tmp_path / "ref.safetensors")
    save_file(sd, path)
    with pytest.raises(TLoRAFileError, match=r"attn1\.to_v\.lam has shape \(1, 3\), expected \(4,\). The file is damaged"):
        load_tlora(path, min_rank=2)


def test_unknown_storage_dtype_is_refused_by_both_writers(tmp_path):
    with pytest.raises(ValueError, match="storage dtype 'fp8' unknown"):
        save_tlora(str(tmp_path / "a.safetensors"), make(), "fp8")
    with pytest.raises(ValueError, match="storage dtype 'fp8' unknown"):
        save_lora(str(tmp_path / "b.safetensors"), make(), storage_dtype="fp8")
    assert os.listdir(tmp_path) == []


def test_saved_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_tlora(str(tmp_path / "a.safetensors"), make())
        save_lora(str(tmp_path / "b.safetensors"), make())
    finally:
        os.umask(old)
    for name in ("a.safetensors", "b.safetensors"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644  # readable by ComfyUI run as another user


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "a.safetensors")
    first = make()
    save_tlora(path, first)
    before = open(path, "rb").read()

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formats, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_tlora(path, make("vanilla"))
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["a.safetensors"]  # no temp file left behind


def test_header_summary_matches_the_full_read(tmp_path):
    from tlora_nodes.tlora_core import summarize_tlora

    ours = str(tmp_path / "ours.safetensors")
    save_tlora(ours, make("tlora"))
    s = summarize_tlora(ours)
    assert (s.source, s.variant, s.rank, s.min_rank, s.schedule_power, s.model_family, s.training_steps) == (
        "tlora-nodes", "tlora", 20, 6, 1.5, "sdxl", 123
    )
    ref = str(tmp_path / "ref.safetensors")
    save_file(reference_state_dict("vanilla", rank=4), ref)
    s = summarize_tlora(ref)
    assert (s.source, s.variant, s.rank, s.min_rank, s.schedule_power) == ("reference", "vanilla", 4, None, None)
    plain = str(tmp_path / "plain.safetensors")
    save_file({"x.lora_up.weight": torch.zeros(1)}, plain)
    with pytest.raises(TLoRAFileError, match="neither a tlora-nodes file nor a reference"):
        summarize_tlora(plain)
