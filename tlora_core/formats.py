"""T-LoRA files: our self-describing safetensors format, reference import, plain-LoRA export.

Only safetensors is ever read; nothing is unpickled.

Our format (``format = "tlora-nodes"`` in the safetensors metadata):
    tensors  ``<layer>.down`` / ``<layer>.up``                           (Vanilla)
             ``<layer>.q`` ``.p`` ``.lam`` ``.q0`` ``.p0`` ``.lam0``       (T-LoRA / Ortho)
             ``training.*``  optimizer and RNG state, checkpoints only
    metadata variant, rank, min_rank, schedule_power, init, model_family, num_timesteps,
             training_steps, layers (JSON [[name, in, out], ...]), storage_dtype, format_version
Layer names are diffusers module paths (what the reference uses and ComfyUI maps).

Reference SD-XL files (``pytorch_lora_weights.safetensors`` from ControlGenAI/T-LoRA, SPEC §6)
carry no schedule: min_rank and schedule_power come from the caller.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .adapter import INITS, VARIANT_LABELS, TLoRA, TLoRAConfig, TLoRALayer

FORMAT_NAME = "tlora-nodes"
FORMAT_VERSION = 1
TRAINING_PREFIX = "training."
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PARAM_NAMES = {"vanilla": ("down", "up"), "tlora": ("q", "p", "lam", "q0", "p0", "lam0")}

# Reference processor keys: <module>.processor.<proj>_lora.<param>
_REF_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_REF_PARAMS = {
    "vanilla": {"down.weight": "down", "up.weight": "up"},
    "tlora": {
        "q_layer.weight": "q",
        "p_layer.weight": "p",
        "lambda_layer": "lam",
        "base_q.weight": "q0",
        "base_p.weight": "p0",
        "base_lambda": "lam0",
    },
}
# Cross-attention context width -> model family, for reference files (which don't say).
_CONTEXT_FAMILY = {768: "sd15", 1024: "sd2", 2048: "sdxl"}


class TLoRAFileError(ValueError):
    """A file that can't be read as a T-LoRA; the message says what was found and the fix."""


@dataclass
class LoadedFile:
    adapter: TLoRA
    source: str  # "tlora-nodes" or "reference"
    metadata: dict[str, str] = field(default_factory=dict)
    training_state: dict[str, torch.Tensor] = field(default_factory=dict)
    # True for reference files: their schedule (min_rank, schedule_power) is a placeholder
    # (min_rank = rank, i.e. no schedule) until the caller supplies the real one.
    needs_schedule: bool = False


@dataclass(frozen=True)
class FileSummary:
    """What a T-LoRA file is, from its header alone (no tensor data is read).

    min_rank / schedule_power are None for reference files, which don't store the schedule."""

    source: str  # "tlora-nodes" or "reference"
    variant: str
    rank: int
    min_rank: int | None
    schedule_power: float | None
    model_family: str
    training_steps: int


def reference_min_rank(rank: int) -> int:
    """The min_rank used for a reference file when none is given: half the rank, the paper's."""
    return max(1, rank // 2)


def summarize_tlora(path: str) -> FileSummary:
    """Read only the safetensors header: metadata for our files, key names and shapes for
    reference files. Raises TLoRAFileError like ``read_tlora``."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise TLoRAFileError(f"T-LoRA: file not found: {path}. Put the file in ComfyUI/models/loras.")
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
        )
    variant = "tlora" if ranks["tlora"] else "vanilla"
    if not ranks[variant]:
        raise TLoRAFileError(f"T-LoRA: {name} is neither a tlora-nodes file nor a reference T-LoRA file.")
    return FileSummary("reference", variant, int(ranks[variant]), None, None, "", 0)


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
            f"It may be truncated or in another format (.pt/.ckpt files are never loaded); "
            f"re-download or re-save it as .safetensors."
        ) from err
    return tensors, metadata


def _check_finite(name: str, tensor: torch.Tensor, path: str) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise TLoRAFileError(
            f"T-LoRA: {os.path.basename(path)} has NaN or inf values in {name!r}; the training that wrote it "
            f"diverged. Use an earlier checkpoint or retrain with a lower learning_rate."
        )


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
    """Read our format or a reference SD-XL file as it is, without asking for a schedule.

    Reference files come back with ``needs_schedule=True``; see ``load_tlora``.
    """
    tensors, metadata = _read(path)
    if metadata.get("format") == FORMAT_NAME:
        return _from_ours(path, tensors, metadata)
    if any(k.endswith(("_lora.down.weight", "_lora.q_layer.weight")) for k in tensors):
        return _from_reference(path, tensors)
    raise TLoRAFileError(
        f"T-LoRA: {os.path.basename(path)} is neither a tlora-nodes file nor a reference T-LoRA file: "
        f"found {_describe(tensors, metadata)}. Pick a file written by T-LoRA Train or the reference trainer."
    )


def load_tlora(
    path: str,
    min_rank: int | None = None,
    schedule_power: float | None = None,
) -> LoadedFile:
    """Read our format or a reference SD-XL file, with its schedule settled.

    min_rank / schedule_power: required (min_rank) for reference files, which don't store the
    schedule (p defaults to 1.0, the paper's); for our files they override the stored values.
    """
    loaded = read_tlora(path)
    if loaded.needs_schedule and min_rank is None:
        raise TLoRAFileError(
            f"T-LoRA: {os.path.basename(path)} is a reference-trained file; it does not store min_rank (see the "
            f"run's logs/hparams.yml). Set 'min_rank' on T-LoRA Load (the paper uses half of rank)."
        )
    changes: dict[str, object] = {}
    if min_rank is not None:
        changes["min_rank"] = int(min_rank)
    if schedule_power is not None:
        changes["schedule_power"] = float(schedule_power)
    if changes:
        loaded.adapter = loaded.adapter.with_config(**changes)
        loaded.needs_schedule = False
    return loaded


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
            _check_finite(key, value, path)
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


def _from_reference(path: str, tensors: dict[str, torch.Tensor]) -> LoadedFile:
    name = os.path.basename(path)
    variant = "tlora" if any(k.endswith("_lora.q_layer.weight") for k in tensors) else "vanilla"
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in tensors.items():
        module, sep, rest = key.partition(".processor.")
        proj, _, param = rest.partition("_lora.")
        if not sep or proj not in _REF_PROJ or param not in _REF_PARAMS[variant]:
            unknown.append(key)
            continue
        grouped.setdefault(f"{module}.{_REF_PROJ[proj]}", {})[_REF_PARAMS[variant][param]] = value
    if unknown:
        raise TLoRAFileError(
            f"T-LoRA: {name} looks like a reference {VARIANT_LABELS[variant]} file but has {len(unknown)} keys it "
            f"can't place (e.g. {unknown[0]!r}). Only the reference SD-XL attention processors are supported."
        )
    params = PARAM_NAMES[variant]
    rank = 0
    for layer_name, found in grouped.items():
        missing = [p for p in params if p not in found]
        if missing:
            raise TLoRAFileError(
                f"T-LoRA: {name}: layer {layer_name!r} lacks {', '.join(missing)}; the file is incomplete."
            )
        rank = max(rank, (found["down"] if variant == "vanilla" else found["q"]).shape[0])

    family = ""
    layers: dict[str, TLoRALayer] = {}
    for layer_name in sorted(grouped):
        found = grouped[layer_name]
        first = found["down"] if variant == "vanilla" else found["q"]
        last = found["up"] if variant == "vanilla" else found["p"]
        fan_in, fan_out, layer_rank = first.shape[1], last.shape[0], first.shape[0]
        if ".attn2.to_k" in layer_name and not family:
            family = _CONTEXT_FAMILY.get(fan_in, "")
        layer = TLoRALayer(fan_in, fan_out, layer_rank, variant)
        for param in params:
            value = found[param]
            if param.startswith("lam") and value.numel() == layer_rank:  # stored as (1, r)
                value = value.reshape(layer_rank)
            if tuple(value.shape) != tuple(getattr(layer, param).shape):
                raise TLoRAFileError(
                    f"T-LoRA: {name}: {layer_name}.{param} has shape {tuple(value.shape)}, expected "
                    f"{tuple(getattr(layer, param).shape)}. The file is damaged."
                )
            _check_finite(f"{layer_name}.{param}", value, path)
            with torch.no_grad():
                getattr(layer, param).copy_(value.to(torch.float32))
        layers[layer_name] = layer
    if not family:
        raise TLoRAFileError(
            f"T-LoRA: {name}: can't tell which model family it was trained for (no cross-attention to_k layer "
            f"with a known context width {sorted(_CONTEXT_FAMILY)})."
        )
    config = TLoRAConfig(variant=variant, rank=rank, min_rank=rank, init="last", model_family=family)
    return LoadedFile(TLoRA(config, layers), "reference", {}, needs_schedule=True)


# -- writing --------------------------------------------------------------------------------------
def _storage_dtype(storage_dtype: str) -> torch.dtype:
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"T-LoRA: storage dtype {storage_dtype!r} unknown; use one of {sorted(STORAGE_DTYPES)}.")
    return STORAGE_DTYPES[storage_dtype]


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str) -> None:
    """Write next to ``path``, flush it to disk and rename, so a crash, a power cut or a full disk
    never leaves half a file under the final name (nor replaces a good one with it)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # ".part": a file left by a crash is not listed as a LoRA (ComfyUI lists *.safetensors).
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}.safetensors.part")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    usual_mode = os.stat(tmp).st_mode & 0o777  # 0666 less the umask
    try:
        save_file(tensors, tmp, metadata=metadata)
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
    dtype = _storage_dtype(storage_dtype)
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


def lora_key(family: str, layer_name: str) -> str:
    """The key ComfyUI's stock LoraLoader maps to this layer (comfy.lora.model_lora_keys_unet)."""
    if family == "flux":
        return f"transformer.{layer_name}"
    return "lora_unet_" + layer_name.replace(".", "_")


def export_lora(adapter: TLoRA, rank: int | None = None) -> dict[str, torch.Tensor]:
    """The adapter frozen at the mask with ``rank`` components on (default: all) as a plain LoRA.

    Vanilla -> LoRA rank r; T-LoRA -> rank 2r ([P·diag(λ⊙m), P0·diag(−λ0⊙m)] and [Q; Q0]).
    alpha = LoRA rank, so ComfyUI applies it at scale 1, like T-LoRA strength 1.
    """
    full = adapter.config.rank
    rank = full if rank is None else int(rank)
    if not 1 <= rank <= full:
        raise ValueError(f"T-LoRA: export rank ({rank}) must be between 1 and the adapter's rank ({full}).")
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in adapter.items():
            down, up = layer.lora_factors(rank)
            key = lora_key(adapter.config.model_family, name)
            out[f"{key}.lora_up.weight"] = up.contiguous()
            out[f"{key}.lora_down.weight"] = down.contiguous()
            out[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))
    return out


def save_lora(path: str, adapter: TLoRA, rank: int | None = None, storage_dtype: str = "fp16") -> None:
    """Write ``export_lora`` to a file the stock LoraLoader reads."""
    dtype = _storage_dtype(storage_dtype)
    tensors = {k: (v if k.endswith(".alpha") else v.to(dtype)) for k, v in export_lora(adapter, rank).items()}
    _atomic_save(tensors, {"exported_from": FORMAT_NAME, "export_rank": str(rank or adapter.config.rank)}, path)


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INITS",
    "LoadedFile",
    "STORAGE_DTYPES",
    "TLoRAFileError",
    "export_lora",
    "FileSummary",
    "load_tlora",
    "lora_key",
    "read_tlora",
    "reference_min_rank",
    "summarize_tlora",
    "save_lora",
    "save_tlora",
]
