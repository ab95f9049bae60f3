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


def test_reference_file_gets_the_runs_hparams_else_the_reference_default(helpers, loras_dir, caplog):
    from tests.core.sdxl_layout import reference_state_dict

    run = loras_dir / "dog_run"
    (run / "checkpoint-800").mkdir(parents=True)
    save_file(reference_state_dict("tlora", rank=8), str(run / "checkpoint-800" / "pytorch_lora_weights.safetensors"))
    name = "dog_run/checkpoint-800/pytorch_lora_weights.safetensors"
    with caplog.at_level("WARNING"):
        default = load(helpers, name)
    assert (default.config.rank, default.config.min_rank, default.config.schedule_power) == (8, 1, 1.0)
    assert default.config.model_family == "sdxl" and default.config.variant == "tlora"
    assert "min_rank 1" in caplog.text and "no hparams.yml" in caplog.text  # says which value and why
    told = load(helpers, name, min_rank=2, schedule_power=2.0)
    assert (told.config.min_rank, told.config.schedule_power) == (2, 2.0)

    from tlora_nodes.nodes.load import TLoRALoad

    before = TLoRALoad.fingerprint_inputs(name, 0, 0.0)
    (run / "logs").mkdir()
    (run / "logs" / "hparams.yml").write_text("lora_rank: 8\nmin_rank: 4\nalpha_rank_scale: 1.5\n")
    assert TLoRALoad.fingerprint_inputs(name, 0, 0.0) != before  # a new hparams.yml runs the node again
    from_run = load(helpers, name)
    assert (from_run.config.min_rank, from_run.config.schedule_power) == (4, 1.5)


def _reference_flux_run(loras_dir):
    import shutil
    from pathlib import Path

    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "reference_flux" / "run", loras_dir / "flux_run")
    return "flux_run/checkpoint-20/lora.pt"


def test_reference_flux_checkpoint_is_listed_and_reproduces_the_reference_delta(tiny, helpers, loras_dir):
    """The reference's FLUX lora.pt (written by its own classes, tests/fixtures) through
    T-LoRA Load -> Timestep-Aware Apply on a tiny FLUX equals the model with the reference
    layers' own ΔW(r) merged in, r from the reference's formula and its run's min_rank."""
    from pathlib import Path

    import comfy.model_patcher
    import comfy.utils
    from safetensors.torch import load_file

    from tlora_nodes.nodes.apply import TimestepAwareApply
    from tlora_nodes.nodes.load import tlora_files
    from tlora_nodes.nodes import model_kinds

    name = _reference_flux_run(loras_dir)
    torch.save({"x": torch.zeros(1)}, str(loras_dir / "other.pt"))  # other pickles are not offered
    assert tlora_files() == [name]
    model = tiny.build("flux")
    adapter = load(helpers, name)
    assert (adapter.config.rank, adapter.config.min_rank, adapter.config.model_family) == (4, 1, "flux")
    patched = helpers.run_node(TimestepAwareApply, model=model, tlora=adapter, strength_model=1.0)[0]
    deltas = load_file(str(Path(__file__).resolve().parents[1] / "fixtures" / "reference_flux" / "expected_delta.safetensors"))
    targets = model_kinds.find_targets(model, "test")
    for sigma in (0.9, 0.5, 0.2):
        t = 1000.0 * sigma
        r = int((1000 - t) * (4 - 1) / 1000) + 1  # the reference's FLUX rank rule, min_rank 1 from its hparams.yml
        merged = helpers.copy_model(model.model)
        with torch.no_grad():
            for layer_name, target in targets.items():
                weight = comfy.utils.get_attr(merged, target.module + ".weight")
                delta = deltas[f"{layer_name}@{r}"].to(weight.dtype)
                if target.rows is None:
                    weight += delta
                else:
                    weight[target.rows[0] : target.rows[0] + target.rows[1]] += delta
        want = helpers.denoise_at(comfy.model_patcher.ModelPatcher(merged, tiny.CPU, tiny.CPU), "flux", sigma)
        got = helpers.denoise_at(patched, "flux", sigma)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        assert not torch.equal(want, helpers.denoise_at(model, "flux", sigma))  # the delta matters


def test_reference_flux_pickle_with_code_is_refused_by_the_node(helpers, loras_dir):
    import os

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(loras_dir / "ran"),))

    (loras_dir / "evil").mkdir()
    torch.save({"transformer_blocks.0.attn.processor.to_q_lora.down.weight": Payload()}, str(loras_dir / "evil" / "lora.pt"))
    with pytest.raises(ValueError, match="T-LoRA Load: lora.pt is not a plain state dict"):
        load(helpers, "evil/lora.pt")
    assert not (loras_dir / "ran").exists()


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
