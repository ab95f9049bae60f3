"""What users read when something is wrong: every error names the node once and points only at
inputs that node has, in the words the UI shows."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.comfyui

TRAIN_INPUTS = dict(
    steps=2, learning_rate=0.01, rank=4, min_rank=2, schedule_power=1.0, variant="Vanilla T-LoRA", init="last",
    batch_size=1, seed=0, save_every=0, filename_prefix="tlora/errors", resume_from="none", training_dtype="fp32",
    gradient_checkpointing=False,
)


def error_of(call) -> str:
    with pytest.raises(Exception) as caught:
        call()
    return str(caught.value)


def bad_inputs(tiny, helpers, loras_dir) -> dict[str, list[str]]:
    """node display name -> the messages of a battery of bad inputs to it."""
    from tlora_nodes.nodes.apply import TimestepAwareApply
    from tlora_nodes.nodes.load import TLoRALoad
    from tlora_nodes.nodes.train import TLoRATrain

    sd15, flux = tiny.build("sd15"), tiny.build("flux")
    positive = tiny.conditioning("sd15")[0]
    latents = {"samples": torch.zeros(1, 4, 8, 8)}
    unknown = tiny.build("sd15")
    unknown.model.model_config = type("StableCascade_C", (), {"unet_config": {}})()

    def train(model=sd15, **changes):
        inputs = dict(TRAIN_INPUTS, **changes)
        return lambda: helpers.run_node(TLoRATrain, hidden={}, model=model, latents=latents, positive=positive, **inputs)

    def load(name, min_rank=0):
        return lambda: helpers.run_node(TLoRALoad, lora_name=name, min_rank=min_rank, schedule_power=0.0)

    adapter = helpers.make_adapter(sd15, rank=4, min_rank=2)
    from tlora_nodes.tlora_core import save_tlora

    save_tlora(str(loras_dir / "ok.safetensors"), adapter)
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(loras_dir / "plain.safetensors"))
    return {
        "T-LoRA Train": [
            error_of(train(model=unknown)),
            error_of(train(min_rank=9)),
            error_of(train(variant="LoRA")),
            error_of(train(resume_from="never_existed.safetensors")),
            error_of(train(model=flux)),  # 4-channel latents for a 16-channel model
            error_of(train(steps=0)),
        ],
        "T-LoRA Load": [
            error_of(load("gone.safetensors")),
            error_of(load("plain.safetensors")),
            error_of(load("ok.safetensors", min_rank=9)),
        ],
        "Timestep-Aware Apply": [
            error_of(lambda: helpers.run_node(TimestepAwareApply, model=unknown, tlora=adapter, strength_model=1.0)),
            error_of(lambda: helpers.run_node(TimestepAwareApply, model=flux, tlora=adapter, strength_model=1.0)),
        ],
    }


def test_every_error_names_its_node_once_and_points_at_inputs_it_has(tiny, helpers, loras_dir):
    messages = bad_inputs(tiny, helpers, loras_dir)
    for node, texts in messages.items():
        for message in texts:
            assert message.startswith(f"{node}: "), message
            assert not message.startswith(f"{node}: {node}"), message
            assert "T-LoRA: " not in message, message  # core errors are re-addressed to the node
    load = messages["T-LoRA Load"]
    assert "raise 'rank'" not in load[2] and "at most 4" in load[2]  # Load has no 'rank' input
    train = messages["T-LoRA Train"]
    assert "'T-LoRA', 'Vanilla T-LoRA'" in train[2] and "'tlora'" not in train[2]  # the UI's labels
    assert "any more" not in train[3] and "never_existed.safetensors' is not in the loras folder" in train[3]
