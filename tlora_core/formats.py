"""T-LoRA files: our self-describing safetensors format, and the one entry point that reads any
T-LoRA file (ours, or the reference trainer's: see ``reference``). Plain-LoRA export lives in
``export``.

Safetensors files are read as such; the reference's FLUX ``lora.pt`` only through
``torch.load(weights_only=True)`` (``reference.torch_load_tensors``); nothing else is unpickled.

Our format (``format = "tlora-nodes"`` in the safetensors metadata):
    tensors  ``<layer>.down`` / ``<layer>.up``                           (Vanilla)
             ``<layer>.q`` ``.p`` ``.lam`` ``.q0`` ``.p0`` ``.lam0``       (T-LoRA / Ortho)
             ``training.*``  optimizer and RNG state, checkpoints only
    metadata variant, rank, min_rank, schedule_power, init, model_family, num_timesteps,
             timestep_range ("first,end": the timesteps it was trained on; absent in older files:
             all), training_steps, layers (JSON [[name, in, out], ...]), storage_dtype, format_version
Layer names are diffusers module paths (what the reference uses and ComfyUI maps).

Reference files (SPEC §6) carry no schedule: ``reference.file_schedule`` settles it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import reference
from ._files import (
    PARAM_NAMES,
    STORAGE_DTYPES,
    FileSchedule,
    FileSummary,
    LoadedFile,
    TLoRAFileError,
    atomic_write,
    check_finite,
)
from ._files import storage_dtype as _storage_dtype_of
from .adapter import INITS, TLoRA, TLoRAConfig, TLoRALayer, check_timestep_range
from .export import KEY_STYLES, LoraTarget, export_lora, lora_key, save_lora
from .schedule import NUM_TRAIN_TIMESTEPS

FORMAT_NAME = "tlora-nodes"
FORMAT_VERSION = 1
TRAINING_PREFIX = "training."
_SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
_TORCH_EXTENSIONS = (".pt", ".pth")


def _is_torch_file(path: str) -> bool:
    """A ``torch.save`` file rather than safetensors: by its extension, else by its first bytes
    (a zip, or a pickle); never unpickled to find out."""
    lower = path.lower()
    if lower.endswith(_TORCH_EXTENSIONS):
        return True
    if lower.endswith(_SAFETENSORS_EXTENSIONS):
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"  # zip (torch >= 1.6), or pickle protocol >= 2


def summarize_tlora(path: str) -> FileSummary:
    """What the file is, from its header only (safetensors metadata and shapes; for a FLUX
    lora.pt the memory-mapped state dict). Raises TLoRAFileError like ``read_tlora``."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise TLoRAFileError(f"T-LoRA: file not found: {path}. Put the file in ComfyUI/models/loras.")
    if _is_torch_file(path):
        return reference.summarize_flux(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            ranks = {
                variant: max((f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(suffix)), default=0)
                for suffix, variant in (("_lora.down.weight", "vanilla"), ("_lora.q_layer.weight", "tlora"))
            }
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise TLoRAFileError(f"T-LoRA: {name} is not a readable safetensors file ({err}).") from err
    if metadata.get("format") == FORMAT_NAME:
        return FileSummary(
            FORMAT_NAME,
            metadata.get("variant", ""),
            _meta_int(metadata, "rank", path),
            _meta_int(metadata, "min_rank", path),
            _meta_float(metadata, "schedule_power", path, 1.0),
            metadata.get("model_family", ""),
            _meta_int(metadata, "training_steps", path, 0),
            _meta_range(metadata, path),
        )
    variant = "tlora" if ranks["tlora"] else "vanilla"
    if not ranks[variant]:
        raise TLoRAFileError(f"T-LoRA: {name} is neither a tlora-nodes file nor a reference T-LoRA file.")
    return FileSummary(reference.SDXL_SOURCE, variant, int(ranks[variant]), None, None, "", 0)


def summary_schedule(path: str, summary: FileSummary, min_rank: int | None = None, schedule_power: float | None = None) -> FileSchedule:
    """``reference.file_schedule`` for a file known by its summary."""
    stored = None if summary.min_rank is None else (summary.min_rank, summary.schedule_power or 1.0)
    return reference.file_schedule(path, summary.rank, stored, min_rank, schedule_power)


# -- reading --------------------------------------------------------------------------------------
def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not os.path.isfile(path):
        raise TLoRAFileError(f"T-LoRA: file not found: {path}. Put the file in ComfyUI/models/loras.")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise TLoRAFileError(
            f"T-LoRA: {os.path.basename(path)} is not a readable safetensors file ({err}). "
            f"It may be truncated or in another format; re-download it or re-save it as .safetensors "
            f"(of pickled files only a reference FLUX lora.pt is read, and only as plain tensors)."
        ) from err
    return tensors, metadata


def _describe(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    keys = sorted(tensors)
    kinds = []
    if any(k.endswith((".lora_up.weight", ".lora_B.weight", ".lora_down.weight")) for k in keys):
        kinds.append("plain LoRA keys (load it with the stock LoraLoader)")
    if any(".tlora_" in k or k.startswith("lycoris_") for k in keys):
        kinds.append("LyCORIS keys (LyCORIS' own 'tlora' layout is a different method)")
    head = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    what = "; ".join(kinds) if kinds else f"keys like {head}" if keys else "no tensors"
    meta = f", metadata keys {sorted(metadata)[:6]}" if metadata else ", no metadata"
    return f"{len(keys)} tensors ({what}){meta}"


def read_tlora(path: str) -> LoadedFile:
    """Read our format, a reference SD-XL file or a reference FLUX lora.pt as it is.

    Reference files come back with ``needs_schedule=True`` and a placeholder schedule
    (min_rank = rank); ``load_tlora`` settles it with ``reference.file_schedule``.
    """
    if os.path.isfile(path) and _is_torch_file(path):
        return reference.read_flux(path)
    tensors, metadata = _read(path)
    if metadata.get("format") == FORMAT_NAME:
        return _from_ours(path, tensors, metadata)
    if reference.looks_like_sdxl(tensors):
        return reference.read_sdxl(path, tensors)
    raise TLoRAFileError(
        f"T-LoRA: {os.path.basename(path)} is neither a tlora-nodes file nor a reference T-LoRA file: "
        f"found {_describe(tensors, metadata)}. Pick a file written by T-LoRA Train or the reference trainer."
    )


def settle_schedule(
    path: str, loaded: LoadedFile, min_rank: int | None = None, schedule_power: float | None = None
) -> LoadedFile:
    """``loaded`` (from ``read_tlora(path)``, left untouched: it may be cached) with the schedule
    ``reference.file_schedule`` decides; the layers are shared, not copied."""
    config = loaded.adapter.config
    stored = None if loaded.needs_schedule else (config.min_rank, config.schedule_power)
    schedule = reference.file_schedule(path, config.rank, stored, min_rank, schedule_power)
    adapter = loaded.adapter
    if (schedule.min_rank, schedule.schedule_power) != (config.min_rank, config.schedule_power):
        adapter = adapter.with_config(min_rank=schedule.min_rank, schedule_power=schedule.schedule_power)
    return replace(loaded, adapter=adapter, needs_schedule=False, schedule=schedule)


def load_tlora(
    path: str,
    min_rank: int | None = None,
    schedule_power: float | None = None,
) -> LoadedFile:
    """Read any T-LoRA file with its schedule settled (``loaded.schedule`` says how).

    min_rank / schedule_power: override the file's values. Reference files don't store them:
    they come from the run's hparams.yml or the reference code's defaults
    (``reference.file_schedule``).
    """
    return settle_schedule(path, read_tlora(path), min_rank, schedule_power)


def _damaged_metadata(path: str, what: str) -> TLoRAFileError:
    return TLoRAFileError(
        f"T-LoRA: {os.path.basename(path)} has {what} in its metadata; the file is damaged. "
        f"Re-save it with T-LoRA Train."
    )


def _meta_int(metadata: Mapping[str, str], key: str, path: str, default: int | None = None) -> int:
    value = metadata.get(key)
    if value in (None, "") and default is not None:
        return default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise _damaged_metadata(path, f"a missing or bad '{key}' ({metadata.get(key)!r})") from err


def _meta_float(metadata: Mapping[str, str], key: str, path: str, default: float) -> float:
    try:
        return float(metadata.get(key, default))
    except ValueError as err:
        raise _damaged_metadata(path, f"a bad '{key}' ({metadata.get(key)!r})") from err


def _meta_range(metadata: Mapping[str, str], path: str) -> tuple[int, int] | None:
    """The stored "first,end" timestep range; files written before ranges existed: all."""
    value = metadata.get("timestep_range")
    if value in (None, ""):
        return None
    try:
        first, end = (int(part) for part in value.split(","))  # type: ignore[union-attr]
        return check_timestep_range((first, end), _meta_int(metadata, "num_timesteps", path, NUM_TRAIN_TIMESTEPS))
    except ValueError as err:
        raise _damaged_metadata(path, f"a bad 'timestep_range' ({value!r})") from err


def _layer_specs(metadata: Mapping[str, str], path: str) -> list[tuple[str, int, int]]:
    """The stored layer list: [[name, in_features, out_features], ...]."""
    try:
        specs = json.loads(metadata["layers"])
        return [(str(name), int(fan_in), int(fan_out)) for name, fan_in, fan_out in specs]
    except (KeyError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise _damaged_metadata(path, f"a missing or bad layer list ({err})") from err


def _from_ours(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoadedFile:
    name = os.path.basename(path)
    version = _meta_int(metadata, "format_version", path)
    if version > FORMAT_VERSION:
        raise TLoRAFileError(
            f"T-LoRA: {name} was written by a newer tlora-nodes (format version {version}; this one reads "
            f"up to {FORMAT_VERSION}). Update the tlora-nodes pack."
        )
    rank = _meta_int(metadata, "rank", path)
    layer_specs = _layer_specs(metadata, path)
    try:
        config = TLoRAConfig(
            variant=metadata.get("variant", ""),
            rank=rank,
            min_rank=_meta_int(metadata, "min_rank", path),
            schedule_power=_meta_float(metadata, "schedule_power", path, 1.0),
            init=metadata.get("init", "last"),
            model_family=metadata.get("model_family", ""),
            num_timesteps=_meta_int(metadata, "num_timesteps", path),
            timestep_range=_meta_range(metadata, path),
        )
        layers = {
            layer_name: TLoRALayer(fan_in, fan_out, min(rank, fan_in, fan_out), config.variant)
            for layer_name, fan_in, fan_out in layer_specs
        }
    except ValueError as err:  # TLoRAConfig / TLoRALayer say which value is wrong
        raise TLoRAFileError(f"T-LoRA: {name} has invalid metadata: {str(err).removeprefix('T-LoRA: ')}") from err

    adapter_keys = {k for k in tensors if not k.startswith(TRAINING_PREFIX)}
    expected: set[str] = set()
    for layer_name, layer in layers.items():
        for param in PARAM_NAMES[config.variant]:
            key = f"{layer_name}.{param}"
            expected.add(key)
            if key not in tensors:
                continue
            target = getattr(layer, param)
            value = tensors[key]
            if tuple(value.shape) != tuple(target.shape):
                raise TLoRAFileError(
                    f"T-LoRA: {name}: tensor {key!r} has shape {tuple(value.shape)}, expected "
                    f"{tuple(target.shape)} for rank {config.rank}. The file is damaged."
                )
            check_finite(key, value, path)
            with torch.no_grad():
                target.copy_(value.to(torch.float32))
    _check_keys(name, expected, adapter_keys)
    adapter = TLoRA(config, layers, training_steps=_meta_int(metadata, "training_steps", path, 0))
    training = {k[len(TRAINING_PREFIX) :]: v for k, v in tensors.items() if k.startswith(TRAINING_PREFIX)}
    return LoadedFile(adapter, FORMAT_NAME, metadata, training)


def _check_keys(name: str, expected: set[str], found: set[str]) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]!r})")
        raise TLoRAFileError(
            f"T-LoRA: {name} does not match its own layer list: {', '.join(parts)}. "
            f"The file is damaged or was edited; re-save it with T-LoRA Train."
        )


# -- writing --------------------------------------------------------------------------------------
def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str) -> None:
    """safetensors through ``atomic_write``: never half a file under the final name."""
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def tlora_metadata(adapter: TLoRA, storage_dtype: str) -> dict[str, str]:
    c = adapter.config
    return {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "variant": c.variant,
        "rank": str(c.rank),
        "min_rank": str(c.min_rank),
        "schedule_power": repr(float(c.schedule_power)),
        "init": c.init,
        "model_family": c.model_family,
        "num_timesteps": str(c.num_timesteps),
        "timestep_range": "{},{}".format(*(c.timestep_range or (0, c.num_timesteps))),
        "training_steps": str(adapter.training_steps),
        "layers": json.dumps([[n, layer.in_features, layer.out_features] for n, layer in adapter.items()]),
        "storage_dtype": storage_dtype,
    }


def save_tlora(
    path: str,
    adapter: TLoRA,
    storage_dtype: str = "fp32",
    training_state: Mapping[str, torch.Tensor] | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Save in our format. training_state tensors are stored under ``training.`` (checkpoints)."""
    dtype = _storage_dtype_of(storage_dtype)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in adapter.items():
        for param in PARAM_NAMES[adapter.config.variant]:
            tensors[f"{name}.{param}"] = getattr(layer, param).detach().to("cpu", dtype).contiguous()
    for key, value in (training_state or {}).items():
        tensors[TRAINING_PREFIX + key] = value.detach().to("cpu").contiguous()
    metadata = tlora_metadata(adapter, storage_dtype)
    for key, text in (extra_metadata or {}).items():
        metadata.setdefault(key, str(text))
    _atomic_save(tensors, metadata, path)


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INITS",
    "KEY_STYLES",
    "FileSchedule",
    "FileSummary",
    "LoadedFile",
    "LoraTarget",
    "STORAGE_DTYPES",
    "TLoRAFileError",
    "export_lora",
    "load_tlora",
    "lora_key",
    "read_tlora",
    "save_lora",
    "save_tlora",
    "settle_schedule",
    "summarize_tlora",
    "summary_schedule",
]
