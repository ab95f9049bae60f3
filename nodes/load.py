"""T-LoRA Load: read a T-LoRA file (ours or reference-trained) from ComfyUI's loras folders.

Reference-trained files store no schedule; ``tlora_core.file_schedule`` (the one rule, shared
with the info route and the library) finds the run's hparams.yml or says which default it used.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import folder_paths
from comfy_api.latest import io

from ..tlora_core import LoadedFile, read_tlora, settle_schedule
from ..tlora_core.reference import hparams_candidates, is_flux_checkpoint_name
from .model_kinds import describe_range
from .types import CATEGORY, TLora, node_message

log = logging.getLogger(__name__)
DISPLAY_NAME = "T-LoRA Load"
_CACHE_SIZE = 4
_cache: "OrderedDict[tuple[str, int, int], LoadedFile]" = OrderedDict()


def tlora_files() -> list[str]:
    """Safetensors files, and the reference FLUX trainer's checkpoints (``checkpoint-N/lora.pt``;
    ComfyUI lists .pt files in models/loras too, so a copied run folder shows up as is)."""
    return [
        f
        for f in folder_paths.get_filename_list("loras")
        if f.lower().endswith(".safetensors") or is_flux_checkpoint_name(f)
    ]


def _file_key(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


def _schedule_key(path: str) -> tuple[tuple[str, int, int], ...]:
    """The hparams.yml files that can decide a reference file's schedule, as they are now: an
    edited or newly copied hparams.yml makes ComfyUI run the node again."""
    return tuple(_file_key(c) for c in hparams_candidates(path) if os.path.isfile(c))


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
    """Load a T-LoRA from models/loras: files from T-LoRA Train, or reference-trained SD-XL and FLUX files."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLoRA_Load",
            display_name=DISPLAY_NAME,
            category=CATEGORY,
            description=(
                "Reads a T-LoRA written by T-LoRA Train, or a file of the reference trainer (ControlGenAI/T-LoRA): "
                "SD-XL pytorch_lora_weights.safetensors or FLUX checkpoint-N/lora.pt. Connect it to Timestep-Aware Apply."
            ),
            inputs=[
                io.Combo.Input(
                    "lora_name",
                    options=tlora_files(),
                    tooltip=(
                        "A .safetensors file in models/loras (subfolders included), or a reference FLUX "
                        "checkpoint-N/lora.pt (read as plain tensors only, never as code)."
                    ),
                ),
                io.Int.Input(
                    "min_rank",
                    default=0,
                    min=0,
                    max=1024,
                    tooltip=(
                        "Rank kept at the highest noise. 0 = the file's value. Reference-trained files don't store "
                        "it: 0 then reads min_rank from the run's hparams.yml (in ../logs/ as the reference writes it, "
                        "beside the file, or <file>.yml), else uses 1, the reference code's default; the log says "
                        "which. Set it equal to the rank to turn the schedule off (plain LoRA behaviour)."
                    ),
                ),
                io.Float.Input(
                    "schedule_power",
                    default=0.0,
                    min=0.0,
                    max=10.0,
                    step=0.05,
                    tooltip=(
                        "Exponent p of the rank schedule. 0 = the file's value (reference files: alpha_rank_scale "
                        "from the run's hparams.yml, else 1.0, the reference's linear schedule)."
                    ),
                ),
            ],
            outputs=[TLora.Output(tooltip="The adapter, for Timestep-Aware Apply.")],
        )

    @classmethod
    def fingerprint_inputs(cls, lora_name: str, min_rank: int, schedule_power: float):
        path = folder_paths.get_full_path("loras", lora_name)
        return (lora_name, min_rank, schedule_power, (_file_key(path), _schedule_key(path)) if path else None)

    @classmethod
    def execute(cls, lora_name: str, min_rank: int, schedule_power: float) -> io.NodeOutput:
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise FileNotFoundError(
                f"{DISPLAY_NAME}: '{lora_name}' is not in any loras folder ({', '.join(folder_paths.get_folder_paths('loras'))}). "
                f"Copy the file there and press R to refresh the list."
            )
        try:
            cached = read_cached(path)
            if min_rank > cached.adapter.config.rank:
                raise ValueError(
                    f"{DISPLAY_NAME}: min_rank ({min_rank}) is above the rank of '{lora_name}' ({cached.adapter.config.rank}). "
                    f"Set 'min_rank' to at most {cached.adapter.config.rank}, or to 0 for the file's own value."
                )
            loaded = settle_schedule(path, cached, min_rank or None, schedule_power or None)
        except ValueError as err:
            raise ValueError(node_message(DISPLAY_NAME, err)) from err
        schedule = loaded.schedule
        if schedule is not None and schedule.source != "file":
            # a default can be far from what the run used (the paper recommends half the rank)
            report = log.warning if schedule.source == "default" else log.info
            report(
                "%s: %s: min_rank %d, schedule_power %g (%s).",
                DISPLAY_NAME, lora_name, schedule.min_rank, schedule.schedule_power, schedule.reason,
            )
        span = loaded.adapter.config.timestep_range
        if span is not None:  # one expert's T-LoRA: sampling refuses it on the other expert's steps
            log.info("%s: %s was trained for %s only; connect it to that expert's model.", DISPLAY_NAME, lora_name,
                     describe_range(span))
        return io.NodeOutput(loaded.adapter)
