"""tlora_core: T-LoRA in pure torch (schedule, adapter, files). Never imports ComfyUI."""

from .adapter import INITS, VARIANT_LABELS, VARIANTS, TLoRA, TLoRAConfig, TLoRALayer
from .formats import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FileSummary,
    LoadedFile,
    TLoRAFileError,
    export_lora,
    load_tlora,
    read_tlora,
    reference_min_rank,
    save_lora,
    save_tlora,
    summarize_tlora,
)
from .schedule import NUM_TRAIN_TIMESTEPS, RankSchedule

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FileSummary",
    "INITS",
    "LoadedFile",
    "NUM_TRAIN_TIMESTEPS",
    "RankSchedule",
    "TLoRA",
    "TLoRAConfig",
    "TLoRAFileError",
    "TLoRALayer",
    "VARIANTS",
    "VARIANT_LABELS",
    "export_lora",
    "load_tlora",
    "read_tlora",
    "reference_min_rank",
    "save_lora",
    "save_tlora",
    "summarize_tlora",
]
