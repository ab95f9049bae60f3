"""tlora_core: T-LoRA in pure torch (schedule, adapter, files). Never imports ComfyUI."""

from .adapter import INITS, VARIANT_LABELS, VARIANTS, TLoRA, TLoRAConfig, TLoRALayer
from .export import KEY_STYLES, LoraTarget, export_lora, lora_key, save_lora
from .formats import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FileSchedule,
    FileSummary,
    LoadedFile,
    TLoRAFileError,
    load_tlora,
    read_tlora,
    save_tlora,
    settle_schedule,
    summarize_tlora,
    summary_schedule,
)
from .reference import file_schedule
from .schedule import NUM_TRAIN_TIMESTEPS, RankSchedule

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FileSchedule",
    "FileSummary",
    "INITS",
    "KEY_STYLES",
    "LoadedFile",
    "LoraTarget",
    "NUM_TRAIN_TIMESTEPS",
    "RankSchedule",
    "TLoRA",
    "TLoRAConfig",
    "TLoRAFileError",
    "TLoRALayer",
    "VARIANTS",
    "VARIANT_LABELS",
    "export_lora",
    "file_schedule",
    "load_tlora",
    "lora_key",
    "read_tlora",
    "save_lora",
    "save_tlora",
    "settle_schedule",
    "summarize_tlora",
    "summary_schedule",
]
