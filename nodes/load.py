"""T-LoRA Load: read a T-LoRA file (ours or reference-trained) from ComfyUI's loras folders."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import folder_paths
from comfy_api.latest import io

from ..tlora_core import LoadedFile, read_tlora, reference_min_rank
from .types import CATEGORY, TLora, node_message

log = logging.getLogger(__name__)
DISPLAY_NAME = "T-LoRA Load"
_CACHE_SIZE = 4
_cache: "OrderedDict[tuple[str, int, int], LoadedFile]" = OrderedDict()


def tlora_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list("loras") if f.lower().endswith(".safetensors")]


def _file_key(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


def read_cached(path: str) -> LoadedFile:
    """Read a file once per (path, modification time, size)."""
    key = _file_key(path)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    loaded = read_tlora(path)
    loaded.adapter.requires_grad_(False)  # a loaded adapter is for sampling; T-LoRA Train reads its own copy
    _cache[key] = loaded
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return loaded


class TLoRALoad(io.ComfyNode):
    """Load a T-LoRA from models/loras: files from T-LoRA Train, or reference-trained SD-XL files."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLoRA_Load",
            display_name=DISPLAY_NAME,
            category=CATEGORY,
            description=(
                "Reads a T-LoRA (.safetensors) written by T-LoRA Train, or a reference T-LoRA SD-XL "
                "pytorch_lora_weights.safetensors. Connect it to Timestep-Aware Apply."
            ),
            inputs=[
                io.Combo.Input(
                    "lora_name",
                    options=tlora_files(),
                    tooltip="A .safetensors file in models/loras (subfolders included).",
                ),
                io.Int.Input(
                    "min_rank",
                    default=0,
                    min=0,
                    max=1024,
                    tooltip=(
                        "Rank kept at the highest noise. 0 = the file's value (reference files don't store it: "
                        "0 then means half the rank, the paper's setting). Set it equal to the rank to turn the "
                        "schedule off (plain LoRA behaviour)."
                    ),
                ),
                io.Float.Input(
                    "schedule_power",
                    default=0.0,
                    min=0.0,
                    max=10.0,
                    step=0.05,
                    tooltip="Exponent p of the rank schedule. 0 = the file's value (1.0 for reference files, the paper's).",
                ),
            ],
            outputs=[TLora.Output(tooltip="The adapter, for Timestep-Aware Apply.")],
        )

    @classmethod
    def fingerprint_inputs(cls, lora_name: str, min_rank: int, schedule_power: float):
        path = folder_paths.get_full_path("loras", lora_name)
        return (lora_name, min_rank, schedule_power, _file_key(path) if path else None)

    @classmethod
    def execute(cls, lora_name: str, min_rank: int, schedule_power: float) -> io.NodeOutput:
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise FileNotFoundError(
                f"{DISPLAY_NAME}: '{lora_name}' is not in any loras folder ({', '.join(folder_paths.get_folder_paths('loras'))}). "
                f"Copy the file there and press R to refresh the list."
            )
        try:
            loaded = read_cached(path)
        except ValueError as err:
            raise ValueError(node_message(DISPLAY_NAME, err)) from err
        adapter = loaded.adapter
        changes: dict[str, object] = {}
        if min_rank > adapter.config.rank:
            raise ValueError(
                f"{DISPLAY_NAME}: min_rank ({min_rank}) is above the rank of '{lora_name}' ({adapter.config.rank}). "
                f"Set 'min_rank' to at most {adapter.config.rank}, or to 0 for the file's own value."
            )
        if min_rank > 0:
            changes["min_rank"] = min_rank
        elif loaded.needs_schedule:
            changes["min_rank"] = reference_min_rank(adapter.config.rank)
            log.info("T-LoRA: %s stores no min_rank; using half the rank (%d).", lora_name, changes["min_rank"])
        if schedule_power > 0:
            changes["schedule_power"] = schedule_power
        if changes:
            try:
                adapter = adapter.with_config(**changes)
            except ValueError as err:
                raise ValueError(node_message(DISPLAY_NAME, err)) from err
        return io.NodeOutput(adapter)
