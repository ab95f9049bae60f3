"""T-LoRA Load in the real ComfyUI: our files, reference files, caching, and clear errors."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.comfyui


def load(helpers, name, min_rank=0, schedule_power=0.0):
    from tlora_nodes.nodes.load import TLoRALoad

    return helpers.run_node(TLoRALoad, lora_name=name, min_rank=min_rank, schedule_power=schedule_power)[0]


def test_loads_our_file_and_lists_it(tiny, helpers, loras_dir):
    from tlora_nodes.nodes.load import tlora_files
    from tlora_nodes.tlora_core import save_tlora

    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=8, min_rank=3, power=2.0)
    (loras_dir / "sub").mkdir()
    save_tlora(str(loras_dir / "sub" / "cat.safetensors"), adapter)
    assert "sub/cat.safetensors" in tlora_files()
    loaded = load(helpers, "sub/cat.safetensors")
    assert loaded.config == adapter.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), adapter.state_dict().values()))


def test_loaded_file_samples_exactly_like_the_adapter_in_memory(tiny, helpers, loras_dir):
    from tlora_nodes.nodes.apply import TimestepAwareApply
    from tlora_nodes.tlora_core import save_tlora

    model = tiny.build("sdxl")
    adapter = helpers.make_adapter(model, rank=8, min_rank=3)
    save_tlora(str(loras_dir / "a.safetensors"), adapter)
    outputs = []
    for tlora in (adapter, load(helpers, "a.safetensors")):
        patched = helpers.run_node(TimestepAwareApply, model=model, tlora=tlora, strength_model=1.0)[0]
        outputs.append(tiny.sample(patched, "sdxl", steps=3))
    assert torch.equal(outputs[0], outputs[1])


def test_overrides_and_cache(tiny, helpers, loras_dir):
    from tlora_nodes.nodes.load import TLoRALoad
    from tlora_nodes.tlora_core import save_tlora

    adapter = helpers.make_adapter(tiny.build("sd15"), rank=8, min_rank=3)
    path = loras_dir / "a.safetensors"
    save_tlora(str(path), adapter)
    first = load(helpers, "a.safetensors")
    assert load(helpers, "a.safetensors") is first  # cached by path + mtime
    overridden = load(helpers, "a.safetensors", min_rank=8, schedule_power=0.5)
    assert (overridden.config.min_rank, overridden.config.schedule_power) == (8, 0.5)
    assert overridden.layer(overridden.names[0]) is first.layer(first.names[0])  # no copy
    before = TLoRALoad.fingerprint_inputs("a.safetensors", 0, 0.0)
    adapter.training_steps = 99
    save_tlora(str(path), adapter)
    os.utime(path, ns=(1, 1))
    assert TLoRALoad.fingerprint_inputs("a.safetensors", 0, 0.0) != before
    assert load(helpers, "a.safetensors").training_steps == 99  # re-read after the file changed


def test_reference_file_gets_half_the_rank_unless_told(helpers, loras_dir):
    from tests.core.sdxl_layout import reference_state_dict

    save_file(reference_state_dict("tlora", rank=8), str(loras_dir / "pytorch_lora_weights.safetensors"))
    default = load(helpers, "pytorch_lora_weights.safetensors")
    assert (default.config.rank, default.config.min_rank, default.config.schedule_power) == (8, 4, 1.0)
    assert default.config.model_family == "sdxl" and default.config.variant == "tlora"
    told = load(helpers, "pytorch_lora_weights.safetensors", min_rank=2, schedule_power=2.0)
    assert (told.config.min_rank, told.config.schedule_power) == (2, 2.0)


def test_missing_file_names_the_node_and_folder(helpers, loras_dir):
    with pytest.raises(FileNotFoundError, match="T-LoRA Load: 'gone.safetensors' is not in any loras folder"):
        load(helpers, "gone.safetensors")


def test_plain_lora_file_is_refused_with_what_was_found(helpers, loras_dir):
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(loras_dir / "plain.safetensors"))
    with pytest.raises(ValueError, match="T-LoRA Load: .*neither a tlora-nodes file nor a reference.*plain LoRA keys"):
        load(helpers, "plain.safetensors")


def test_nan_weights_are_refused(tiny, helpers, loras_dir):
    from tlora_nodes.tlora_core import save_tlora

    adapter = helpers.make_adapter(tiny.build("sd15"))
    with torch.no_grad():
        next(adapter.trainable_parameters())[0, 0] = float("nan")
    save_tlora(str(loras_dir / "nan.safetensors"), adapter)
    with pytest.raises(ValueError, match="T-LoRA Load: .*NaN or inf values"):
        load(helpers, "nan.safetensors")


def test_bad_override_names_the_node(tiny, helpers, loras_dir):
    from tlora_nodes.tlora_core import save_tlora

    save_tlora(str(loras_dir / "a.safetensors"), helpers.make_adapter(tiny.build("sd15"), rank=8, min_rank=3))
    with pytest.raises(ValueError, match="T-LoRA Load: min_rank \\(9\\) is above the rank of 'a.safetensors' \\(8\\). Set 'min_rank' to at most 8"):
        load(helpers, "a.safetensors", min_rank=9)
