"""The reference trainer's files: the schedule rule, FLUX lora.pt (safely), SD-XL export layout.

Fixtures in tests/fixtures/ were written by scripts/reference_check.py with the reference's own
classes (ControlGenAI/T-LoRA): a tiny FLUX run (``run/checkpoint-20/lora.pt``, its
``run/logs/hparams.yml``, and the reference layers' own ΔW(r) in ``expected_delta.safetensors``)
and the reference SD-XL state-dict layout (keys and shapes, rank 4).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tlora_nodes.tlora_core import TLoRA, TLoRAConfig, TLoRAFileError, TLoRALayer, file_schedule, load_tlora, read_tlora
from tlora_nodes.tlora_core import reference, summarize_tlora, summary_schedule

from .sdxl_layout import attention_modules, reference_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FLUX_RUN = FIXTURES / "reference_flux" / "run"
FLUX_FILE = FLUX_RUN / "checkpoint-20" / "lora.pt"
FLUX_RANK = 4


def expected_flux_deltas() -> dict[tuple[str, int], torch.Tensor]:
    raw = load_file(str(FIXTURES / "reference_flux" / "expected_delta.safetensors"))
    return {(k.split("@")[0], int(k.split("@")[1])): v for k, v in raw.items()}


def mask_of(r: int, rank: int) -> torch.Tensor:
    return torch.cat([torch.ones(r), torch.zeros(rank - r)])


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def reference_file(folder: Path, rank: int = 8) -> str:
    """A reference SD-XL file in <folder>/checkpoint-100/ (the reference's run layout)."""
    path = folder / "checkpoint-100" / "pytorch_lora_weights.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(reference_state_dict("vanilla", rank=rank), str(path))
    return str(path)


# -- the FLUX checkpoint ----------------------------------------------------------------------------
def test_flux_checkpoint_reproduces_the_reference_layers_delta_at_every_rank():
    loaded = load_tlora(str(FLUX_FILE))
    adapter = loaded.adapter
    assert loaded.source == "reference-flux" and adapter.config.variant == "vanilla"
    assert (adapter.config.rank, adapter.config.model_family) == (FLUX_RANK, "flux")
    expected = expected_flux_deltas()
    # double block: image q/k/v/out and text q/k/v; single block: q/k/v (its other LoRAs are never used)
    assert set(adapter.names) == {name for name, _ in expected} == {
        *(f"transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")),
        *(f"single_transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v")),
    }
    for (name, r), want in expected.items():
        torch.testing.assert_close(adapter.layer(name).delta_weight(mask_of(r, FLUX_RANK)).detach(), want, rtol=0, atol=1e-7)


def test_flux_checkpoint_schedule_comes_from_the_runs_hparams():
    loaded = load_tlora(str(FLUX_FILE))
    assert (loaded.adapter.config.min_rank, loaded.adapter.config.schedule_power) == (1, 1.0)
    assert loaded.schedule.source == "hparams"
    assert loaded.schedule.hparams_path == str(FLUX_RUN / "logs" / "hparams.yml")
    assert "min_rank 1" in loaded.schedule.reason and "../logs/hparams.yml" in loaded.schedule.reason


def test_flux_header_summary_reads_no_tensor_data():
    summary = summarize_tlora(str(FLUX_FILE))
    assert (summary.source, summary.variant, summary.rank, summary.min_rank, summary.model_family) == (
        "reference-flux", "vanilla", FLUX_RANK, None, "flux"
    )
    schedule = summary_schedule(str(FLUX_FILE), summary)
    assert schedule == load_tlora(str(FLUX_FILE)).schedule  # the route and the loader agree


def test_flux_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    state = torch.load(str(FLUX_FILE), weights_only=True)
    # the reference saves from the GPU: record a CUDA location, as torch.save would there
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    path = tmp_path / "checkpoint-20" / "lora.pt"
    path.parent.mkdir()
    torch.save(state, str(path))
    monkeypatch.undo()
    adapter = load_tlora(str(path), min_rank=1, schedule_power=1.0).adapter
    assert all(p.device.type == "cpu" for p in adapter.parameters())


# -- bad input: refused, never executed ---------------------------------------------------------------
class _Payload:
    """Unpickling this would create a folder: the proof that nothing from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "lora.pt"
    state = torch.load(str(FLUX_FILE), weights_only=True)
    state["transformer_blocks.0.attn.processor.to_q_lora.down.weight"] = _Payload(str(marker))
    torch.save(state, str(path))
    with pytest.raises(TLoRAFileError, match=r"lora.pt is not a plain state dict: it holds Python objects other than tensors \(.*mkdir"):
        load_tlora(str(path))
    with pytest.raises(TLoRAFileError, match="not a plain state dict"):
        summarize_tlora(str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,fragment",
    [
        ([torch.zeros(2)], "holds a list, not a state dict"),
        ({"state_dict": {"a": torch.zeros(2)}}, "not a flat state dict: 1 of its 1 entries are not tensors \\(e.g. 'state_dict': dict\\)"),
        ({"step": 5, "w": torch.zeros(1)}, "1 of its 2 entries are not tensors \\(e.g. 'step': int\\)"),
        ({"down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": torch.zeros(4, 8)},
         "is not a reference FLUX T-LoRA checkpoint: 1 keys aren't FLUX attention-processor LoRAs"),
        ({}, "it has no LoRA layers"),
    ],
)
def test_other_pickles_are_named_for_what_they_hold(tmp_path, content, fragment):
    path = tmp_path / "lora.pt"
    torch.save(content, str(path))
    with pytest.raises(TLoRAFileError, match=fragment):
        load_tlora(str(path), min_rank=1, schedule_power=1.0)


def test_lora_pt_of_another_model_is_refused(tmp_path):
    """Attention-processor LoRAs without FLUX's single blocks (an SD3-like MM-DiT)."""
    state = torch.load(str(FLUX_FILE), weights_only=True)
    path = tmp_path / "lora.pt"
    torch.save({k: v for k, v in state.items() if k.startswith("transformer_blocks.")}, str(path))
    with pytest.raises(TLoRAFileError, match="only in transformer_blocks.*belongs to another model"):
        load_tlora(str(path), min_rank=1, schedule_power=1.0)


def test_damaged_flux_checkpoints_are_named(tmp_path):
    state = torch.load(str(FLUX_FILE), weights_only=True)
    key = "transformer_blocks.0.attn.processor.to_k_lora.up.weight"
    for change, fragment in (
        ({key: None}, "layer 'transformer_blocks.0.attn.to_k' lacks up"),
        ({key: torch.zeros(64, 3)}, "has down \\(4, 64\\) and up \\(64, 3\\)"),
        ({key: torch.full((64, 4), float("nan"))}, "NaN or inf values"),
    ):
        changed = {k: v for k, v in ({**state, **change}).items() if v is not None}
        path = tmp_path / "lora.pt"
        torch.save(changed, str(path))
        with pytest.raises(TLoRAFileError, match=fragment):
            load_tlora(str(path), min_rank=1, schedule_power=1.0)
    path.write_bytes(FLUX_FILE.read_bytes()[:5000])
    with pytest.raises(TLoRAFileError, match="lora.pt is not a readable torch.save file.*truncated"):
        load_tlora(str(path), min_rank=1, schedule_power=1.0)


# -- the schedule rule ---------------------------------------------------------------------------------
def test_no_hparams_means_the_reference_codes_defaults_and_says_so(tmp_path):
    path = reference_file(tmp_path)
    schedule = file_schedule(path, 8)
    assert (schedule.min_rank, schedule.schedule_power, schedule.source) == (1, 1.0, "default")
    assert "no hparams.yml" in schedule.reason and "../logs/hparams.yml" in schedule.reason


@pytest.mark.parametrize(
    "where", ["../logs/hparams.yml", "hparams.yml", "pytorch_lora_weights.safetensors.yml", "pytorch_lora_weights.yml"]
)
def test_hparams_are_found_where_the_reference_and_users_put_them(tmp_path, where):
    path = reference_file(tmp_path / "run")
    hparams = write_yaml(Path(os.path.dirname(path)) / where, "lora_rank: 8\nmin_rank: 3\nalpha_rank_scale: 1.5\ntrainer_class: sdxl_tlora\n")
    loaded = load_tlora(path)
    assert (loaded.adapter.config.min_rank, loaded.adapter.config.schedule_power) == (3, 1.5)
    assert loaded.schedule.source == "hparams" and loaded.schedule.hparams_path == os.path.normpath(str(hparams))
    assert where in loaded.schedule.reason


def test_a_files_own_yml_wins_over_the_runs(tmp_path):
    path = reference_file(tmp_path / "run")
    write_yaml(tmp_path / "run" / "logs" / "hparams.yml", "lora_rank: 8\nmin_rank: 3\n")
    write_yaml(Path(path + ".yml"), "lora_rank: 8\nmin_rank: 5\n")
    assert file_schedule(path, 8).min_rank == 5


@pytest.mark.parametrize(
    "text", ["lora_rank: 8\ntrainer_class: sdxl_lora\nmin_rank: 1\n", "rank: 8\ntlora: false\nmin_rank: 1\n"]
)
def test_a_run_that_trained_a_plain_lora_gets_no_schedule(tmp_path, text):
    path = reference_file(tmp_path / "run")
    write_yaml(tmp_path / "run" / "logs" / "hparams.yml", text)
    schedule = file_schedule(path, 8)
    assert (schedule.min_rank, schedule.source) == (8, "no-schedule") and "plain LoRA" in schedule.reason


def test_hparams_without_the_schedule_keys_fall_back_and_say_so(tmp_path):
    path = reference_file(tmp_path / "run")
    write_yaml(tmp_path / "run" / "logs" / "hparams.yml", "lora_rank: 8\n")
    schedule = file_schedule(path, 8)
    assert (schedule.min_rank, schedule.schedule_power) == (1, 1.0)
    assert "not in it" in schedule.reason


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("lora_rank: 16\nmin_rank: 8\n", "is for a run of rank 16, but pytorch_lora_weights.safetensors has rank 8"),
        ("lora_rank: 8\nmin_rank: 9\n", "has min_rank 9, outside 1..8"),
        ("lora_rank: 8\nmin_rank: two\n", "has min_rank: 'two', which is not a whole number"),
        ("- a list\n", "is not a YAML mapping of settings"),
        ("min_rank: [unclosed\n", "can't read .*hparams.yml"),
        ("x: !!python/object/apply:os.system ['true']\n", "can't read .*hparams.yml"),
    ],
)
def test_bad_hparams_are_named_with_the_fix(tmp_path, text, fragment):
    path = reference_file(tmp_path / "run")
    write_yaml(tmp_path / "run" / "logs" / "hparams.yml", text)
    with pytest.raises(TLoRAFileError, match=fragment):
        load_tlora(path)
    # both values given: the file is not needed, and not read
    assert load_tlora(path, min_rank=2, schedule_power=1.0).schedule.source == "override"


def test_overrides_win_and_fill_in_for_missing_values(tmp_path):
    path = reference_file(tmp_path / "run")
    write_yaml(tmp_path / "run" / "logs" / "hparams.yml", "lora_rank: 8\nmin_rank: 3\nalpha_rank_scale: 2.0\n")
    schedule = file_schedule(path, 8, min_rank=6)
    assert (schedule.min_rank, schedule.schedule_power, schedule.source) == (6, 2.0, "override")


def test_our_files_keep_their_stored_schedule():
    assert file_schedule("any.safetensors", 8, stored=(3, 1.5)).source == "file"
    assert file_schedule("any.safetensors", 8, stored=(3, 1.5), schedule_power=2.0).schedule_power == 2.0


def test_loader_route_summary_and_library_agree(tmp_path):
    path = reference_file(tmp_path / "run")
    write_yaml(tmp_path / "run" / "logs" / "hparams.yml", "lora_rank: 8\nmin_rank: 3\n")
    from_load = load_tlora(path).schedule
    from_summary = summary_schedule(path, summarize_tlora(path))
    assert from_load == from_summary == file_schedule(path, 8)
    raw = read_tlora(path)
    assert raw.needs_schedule and raw.adapter.config.min_rank == 8  # the raw read is left as is


# -- writing the reference SD-XL layout ------------------------------------------------------------------
def sdxl_adapter(variant: str, rank: int = 4) -> TLoRA:
    """An adapter on every SD-XL attention layer with random values (no Ortho SVDs: fast)."""
    g = torch.Generator().manual_seed(0)
    layers = {}
    for module, hidden, context in attention_modules():
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            fan_in = context if proj in ("to_k", "to_v") else hidden
            layer = TLoRALayer(fan_in, hidden, min(rank, fan_in, hidden), variant)
            with torch.no_grad():
                for p in list(layer.parameters()) + list(layer.buffers()):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            layers[f"{module}.{proj}"] = layer
    config = TLoRAConfig(variant=variant, rank=rank, min_rank=2, schedule_power=1.5, init="principal", model_family="sdxl")
    return TLoRA(config, layers, training_steps=300)


@pytest.mark.parametrize("variant", ["vanilla", "tlora"])
def test_reference_export_has_exactly_the_reference_keys_and_shapes(tmp_path, variant):
    with gzip.open(FIXTURES / "reference_sdxl_layout.json.gz", "rt") as f:
        layout = json.load(f)[variant]  # written by the reference's own processor classes
    adapter = sdxl_adapter(variant)
    weights, hparams = reference.save_sdxl(str(tmp_path / "run"), adapter)
    assert weights == str(tmp_path / "run" / "checkpoint-300" / "pytorch_lora_weights.safetensors")
    sd = load_file(weights)
    assert {k: list(v.shape) for k, v in sd.items()} == layout
    assert all(v.dtype == torch.float32 for v in sd.values())
    # and it reads back as the same adapter, with the schedule from the hparams.yml written beside
    loaded = load_tlora(weights)
    assert loaded.schedule.source == "hparams" and loaded.schedule.hparams_path == hparams
    assert (loaded.adapter.config.min_rank, loaded.adapter.config.schedule_power) == (2, 1.5)
    for name, layer in adapter.items():
        torch.testing.assert_close(loaded.adapter.layer(name).delta_weight(mask_of(3, 4)), layer.delta_weight(mask_of(3, 4)), rtol=0, atol=0)


def test_reference_hparams_are_what_its_inference_script_reads(tmp_path):
    import yaml

    _, hparams = reference.save_sdxl(str(tmp_path / "run"), sdxl_adapter("tlora"), extra_hparams={"class_name": "dog"})
    with open(hparams) as f:
        settings = yaml.safe_load(f)
    assert settings["trainer_class"] == "sdxl_tlora" and settings["trainer_type"] == "ortho_lora"
    assert (settings["lora_rank"], settings["min_rank"], settings["alpha_rank_scale"], settings["sig_type"]) == (4, 2, 1.5, "principal")
    assert settings["output_dir"] == str(tmp_path / "run") and settings["class_name"] == "dog"
    assert settings["pretrained_model_name_or_path"] == "stabilityai/stable-diffusion-xl-base-1.0"


def test_reference_export_refuses_flux_and_leaves_nothing_on_a_full_disk(tmp_path, monkeypatch):
    flux = TLoRA.create(TLoRAConfig(variant="vanilla", rank=2, min_rank=1, model_family="flux"), {"transformer_blocks.0.attn.to_q": (8, 8)})
    with pytest.raises(ValueError, match="reference SD-XL layout has no place for layer 'transformer_blocks.0.attn.to_q'"):
        reference.save_sdxl(str(tmp_path / "flux"), flux)
    assert not (tmp_path / "flux").exists()

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reference, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        reference.save_sdxl(str(tmp_path / "run"), sdxl_adapter("vanilla"))
    assert os.listdir(tmp_path / "run" / "checkpoint-300") == []
    assert not (tmp_path / "run" / "logs").exists()


def test_fixture_run_can_be_copied_into_a_loras_folder(tmp_path):
    """Users copy a whole run folder; the checkpoint keeps finding ../logs/hparams.yml."""
    shutil.copytree(FLUX_RUN, tmp_path / "my_run")
    loaded = load_tlora(str(tmp_path / "my_run" / "checkpoint-20" / "lora.pt"))
    assert loaded.schedule.hparams_path == str(tmp_path / "my_run" / "logs" / "hparams.yml")
