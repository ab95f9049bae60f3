"""API-format graphs for the end-to-end tests (tiny SD2 UNet, no text encoder, no VAE)."""

from __future__ import annotations

import copy

TRAIN = dict(
    steps=6, learning_rate=1e-3, rank=4, min_rank=2, schedule_power=1.0, variant="T-LoRA", init="last",
    batch_size=1, seed=7, save_every=2, filename_prefix="e2e/run", resume_from="none", training_dtype="fp32",
    gradient_checkpointing=False,
)
SAMPLER = dict(seed=42, steps=4, cfg=2.0, sampler_name="euler", scheduler="normal", denoise=1.0)


def _base(unet: str) -> dict:
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "cond": {"class_type": "LotusConditioning", "inputs": {}},
        "uncond": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["cond", 0]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def _sample(graph: dict, model_link: list, prefix: str) -> dict:
    graph["sampler"] = {
        "class_type": "KSampler",
        "inputs": dict(SAMPLER, model=model_link, positive=["cond", 0], negative=["uncond", 0], latent_image=["latent", 0]),
    }
    graph["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}}
    return graph


def train_only(unet: str, **train) -> dict:
    """UNETLoader -> T-LoRA Train (an output node: the graph needs nothing after it)."""
    graph = _base(unet)
    graph["train"] = {
        "class_type": "TLoRA_Train",
        "inputs": dict(TRAIN, **train, model=["unet", 0], latents=["latent", 0], positive=["cond", 0]),
    }
    return graph


def train_apply_sample(unet: str, prefix: str = "e2e/trained", **train) -> dict:
    """UNETLoader -> T-LoRA Train -> Timestep-Aware Apply (on the loaded model) -> KSampler -> SaveLatent."""
    graph = train_only(unet, **train)
    graph["apply"] = {"class_type": "TLoRA_Apply", "inputs": {"model": ["unet", 0], "tlora": ["train", 1], "strength_model": 1.0}}
    return _sample(graph, ["apply", 0], prefix)


def load_apply_sample(unet: str, lora_name: str, prefix: str = "e2e/loaded", strength: float = 1.0) -> dict:
    """UNETLoader + T-LoRA Load -> Timestep-Aware Apply -> KSampler -> SaveLatent."""
    graph = _base(unet)
    graph["load"] = {"class_type": "TLoRA_Load", "inputs": {"lora_name": lora_name, "min_rank": 0, "schedule_power": 0.0}}
    graph["apply"] = {"class_type": "TLoRA_Apply", "inputs": {"model": ["unet", 0], "tlora": ["load", 0], "strength_model": strength}}
    return _sample(graph, ["apply", 0], prefix)


def clone(graph: dict) -> dict:
    return copy.deepcopy(graph)
