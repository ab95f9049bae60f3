"""The frontend's routes (nodes/routes.py): GET /tlora/info, the schedule of a file in the loras
folder for the Timestep-Aware Apply plot, read from the safetensors header only; GET
/tlora/recipes, what T-LoRA Train's family reference recipe trains each family with."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from .conftest import loras_dir

pytestmark = pytest.mark.e2e


def info(comfy, name: str, prefix: str = "") -> tuple[int, dict]:
    status, body = comfy.request("GET", f"{prefix}/tlora/info?name={urllib.parse.quote(name)}")
    return status, json.loads(body)


def test_info_of_a_tlora_nodes_file_comes_from_its_metadata(comfy, sdxl_adapter):
    for prefix in ("", "/api"):
        status, body = info(comfy, sdxl_adapter, prefix)
        assert status == 200, body
        assert body == {
            "name": sdxl_adapter, "source": "tlora-nodes", "variant": "tlora", "rank": 64, "min_rank": 32,
            "schedule_power": 1.0, "model_family": "sdxl", "training_steps": 0, "needs_schedule": False,
            "schedule_source": "file", "schedule_reason": "stored in the file", "timestep_range": None,
        }


def test_info_of_a_reference_file_gives_the_rank_and_the_schedule_load_would_use(comfy):
    import torch
    from safetensors.torch import save_file

    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora"
    path = loras_dir(comfy) / "reference" / "pytorch_lora_weights.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{key}.down.weight": torch.zeros(16, 64), f"{key}.up.weight": torch.zeros(64, 16)}, str(path))
    status, body = info(comfy, "reference/pytorch_lora_weights.safetensors")
    assert status == 200, body
    # no hparams.yml beside it: the reference code's default min_rank 1, as T-LoRA Load uses it
    assert (body["source"], body["variant"], body["rank"], body["min_rank"], body["schedule_power"]) == ("reference", "vanilla", 16, 1, 1.0)
    assert body["needs_schedule"] is True and body["schedule_source"] == "default"
    assert "no hparams.yml" in body["schedule_reason"]
    (path.parent / "hparams.yml").write_text("lora_rank: 16\nmin_rank: 8\nalpha_rank_scale: 2.0\n")
    status, body = info(comfy, "reference/pytorch_lora_weights.safetensors")
    assert (status, body["min_rank"], body["schedule_power"], body["schedule_source"]) == (200, 8, 2.0, "hparams")


@pytest.mark.parametrize(
    ("name", "status"),
    [("", 400), ("notes.txt", 400), ("missing.safetensors", 404), ("../../../etc/passwd.safetensors", 404), ("broken.safetensors", 422)],
)
def test_bad_names_get_a_clear_error(comfy, name, status):
    (loras_dir(comfy) / "broken.safetensors").write_bytes(b"not a safetensors file")
    got, body = info(comfy, name)
    assert got == status and body["error"].startswith("T-LoRA: "), body


def test_recipes_names_each_familys_reference_recipe(comfy):
    """What T-LoRA Train's plot shows under recipe 'family reference' before a run (the table
    itself is checked in tests/nodes/test_train_trust.py)."""
    bodies = []
    for prefix in ("", "/api"):
        status, body = comfy.request("GET", f"{prefix}/tlora/recipes")
        assert status == 200, body
        bodies.append(json.loads(body))
    assert bodies[0] == bodies[1]
    body = bodies[0]
    assert (body["reference"], body["custom"]) == ("family reference", "custom")
    shown = {e["name"]: (e["variant_label"], e["rank"], e["min_rank"], e["optimizer"], e["learning_rate"], e["others"])
             for e in body["recipes"]}
    assert shown == {
        "SD-XL paper recipe": ("T-LoRA", 64, 32, "AdamW", 1e-4, False),
        "FLUX.1 reference recipe": ("Vanilla T-LoRA", 32, 1, "Prodigy", 1.0, True),
    }
    families = {e["name"]: e["families"] for e in body["recipes"]}
    assert {"SD1.5", "SD2", "SDXL"} <= set(families["SD-XL paper recipe"])
    assert {"FLUX.1", "SD3 / SD3.5", "Wan 2.1 / Wan 2.2 A14B"} <= set(families["FLUX.1 reference recipe"])
