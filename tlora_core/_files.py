"""What every T-LoRA file reader and writer shares: the error, the result types, atomic writes.

Kept apart from ``formats`` (our format), ``reference`` (the reference trainer's files) and
``export`` (plain LoRAs) so that each of those can use it without importing the others.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Callable

import torch

from .adapter import TLoRA

STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PARAM_NAMES = {"vanilla": ("down", "up"), "tlora": ("q", "p", "lam", "q0", "p0", "lam0")}


class TLoRAFileError(ValueError):
    """A file that can't be read as a T-LoRA; the message says what was found and the fix."""


@dataclass
class LoadedFile:
    adapter: TLoRA
    source: str  # "tlora-nodes", "reference" (SD-XL safetensors) or "reference-flux" (lora.pt)
    metadata: dict[str, str] = field(default_factory=dict)
    training_state: dict[str, torch.Tensor] = field(default_factory=dict)
    # True for reference files, which store no schedule: until ``load_tlora`` (or the caller,
    # through ``reference.file_schedule``) settles it, min_rank is a placeholder (= rank).
    needs_schedule: bool = False
    # How the schedule was settled (by ``load_tlora``); None straight from ``read_tlora``.
    schedule: "FileSchedule | None" = None


@dataclass(frozen=True)
class FileSummary:
    """What a T-LoRA file is, from its header alone (no tensor data is read).

    min_rank / schedule_power are None for reference files, which don't store the schedule
    (``reference.file_schedule`` says which values T-LoRA Load uses and why)."""

    source: str
    variant: str
    rank: int
    min_rank: int | None
    schedule_power: float | None
    model_family: str
    training_steps: int
    timestep_range: tuple[int, int] | None = None  # trained on [first, end) only (one expert); None: all


@dataclass(frozen=True)
class FileSchedule:
    """The schedule a file is used with, and where each value came from.

    source: "file" (stored in a tlora-nodes file), "hparams" (the reference run's hparams.yml),
    "default" (the reference code's defaults: no hparams.yml found), "no-schedule" (the run's
    hparams.yml says it trained a plain LoRA) or "override" (given by the caller).
    reason: one sentence for the log and the UI.
    """

    min_rank: int
    schedule_power: float
    source: str
    reason: str
    hparams_path: str | None = None


def storage_dtype(name: str) -> torch.dtype:
    if name not in STORAGE_DTYPES:
        raise ValueError(f"T-LoRA: storage dtype {name!r} unknown; use one of {sorted(STORAGE_DTYPES)}.")
    return STORAGE_DTYPES[name]


def check_finite(name: str, tensor: torch.Tensor, path: str) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise TLoRAFileError(
            f"T-LoRA: {os.path.basename(path)} has NaN or inf values in {name!r}; the training that wrote it "
            f"diverged. Use an earlier checkpoint or retrain with a lower learning_rate."
        )


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, flush it to disk and rename it, so
    a crash, a power cut or a full disk never leaves half a file under the final name (nor
    replaces a good one with it). The temporary name ends in ".part": ComfyUI never lists it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}{os.path.splitext(path)[1]}.part")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    usual_mode = os.stat(tmp).st_mode & 0o777  # 0666 less the umask
    try:
        write(tmp)
        os.chmod(tmp, usual_mode)  # safetensors writes owner-only files; a saved model is an ordinary file
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
