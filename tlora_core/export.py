"""A T-LoRA frozen at one rank, as a plain LoRA file any LoRA loader reads (SPEC §6).

A plain LoRA applies one rank at every step: the timestep schedule does not travel. The export
at rank r (default R: the adapter as it acts at low noise) is ΔW(r) of every layer, factored
exactly (``functional.balanced_factors``) and cast once to the storage dtype, so fp16 and bf16
files rebuild ΔW to their own rounding even where the two Ortho branches nearly cancel.

Key styles (one per file):
    "comfyui"    ``<key>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, keys as ComfyUI maps
                 them: kohya ``lora_unet_<path>`` for UNets, ``transformer.<diffusers path>`` for
                 FLUX. What ComfyUI's stock LoraLoader and Forge/A1111 read.
    "diffusers"  PEFT names ``<prefix>.<diffusers path>.lora_A.weight`` / ``.lora_B.weight``
                 (``unet.`` for UNets, ``transformer.`` for FLUX), no alpha: scale 1.
Callers with their own naming (e.g. a model-family table) pass ``key_map``: layer name -> key,
or -> ``LoraTarget`` for a row slice of a fused weight (FLUX q/k/v in ``qkv`` / ``linear1``);
layers sharing a fused key are written as one LoRA with block-structured factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Union

import torch
from safetensors.torch import save_file

from . import _files
from .adapter import VARIANT_LABELS, TLoRA
from .functional import balanced_factors

KEY_STYLES = ("comfyui", "diffusers")
# (down, up, alpha) suffixes per style; diffusers/PEFT files carry no alpha (scale 1).
_SUFFIXES: dict[str, tuple[str, str, str | None]] = {
    "comfyui": ("lora_down.weight", "lora_up.weight", "alpha"),
    "diffusers": ("lora_A.weight", "lora_B.weight", None),
}
# fp16's normal range starts at 2**-14. Balanced factors of a ΔW with largest entry below 2**-8
# (measured: from about 1e-3, a ΔW of ~1e-7, the error grows past fp16's own 3e-4) are scaled up
# by a power of two (exact) and alpha carries the scale back; larger ones keep alpha = rank.
_FP16_SMALL = 2.0**-8


@dataclass(frozen=True)
class LoraTarget:
    """Where one adapter layer goes in a plain LoRA file.

    key: the LoRA key prefix (without ``.lora_up.weight`` etc.).
    rows: (offset, size) of the layer's output rows inside a fused weight of ``total_rows``
    outputs, e.g. FLUX's q at (0, H) of ``img_attn.qkv`` (3H); None = the whole weight.
    """

    key: str
    rows: tuple[int, int] | None = None
    total_rows: int | None = None

    def __post_init__(self) -> None:
        if self.rows is None:
            return
        offset, size = self.rows
        if self.total_rows is None or offset < 0 or size < 1 or offset + size > self.total_rows:
            raise ValueError(
                f"T-LoRA: LoRA target {self.key!r}: rows {self.rows} must lie inside total_rows ({self.total_rows})."
            )


KeyMap = Union[Callable[[str], "str | LoraTarget"], Mapping[str, "str | LoraTarget"]]


def lora_key(family: str, layer_name: str, style: str = "comfyui") -> str:
    """The default key of a layer (diffusers module path) in each style."""
    _check_style(style)
    if family == "flux":
        return f"transformer.{layer_name}"
    if style == "diffusers":
        return f"unet.{layer_name}"
    return "lora_unet_" + layer_name.replace(".", "_")


def _check_style(style: str) -> None:
    if style not in KEY_STYLES:
        raise ValueError(f"T-LoRA: key style {style!r} unknown; use one of {', '.join(map(repr, KEY_STYLES))}.")


def check_rank(adapter: TLoRA, rank: int | None) -> int:
    """The export rank: None = R (the adapter at low noise); else a whole number in 1..R."""
    full = adapter.config.rank
    if rank is None:
        return full
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(
            f"T-LoRA: export rank ({rank!r}) must be a whole number from 1 to the adapter's rank ({full}); "
            f"{full} exports the adapter as it acts at low noise, {adapter.config.min_rank} (min_rank) as at high noise."
        )
    return rank


def _target(key_map: KeyMap | None, family: str, style: str, layer_name: str) -> LoraTarget:
    if key_map is None:
        found: str | LoraTarget = lora_key(family, layer_name, style)
    elif callable(key_map):
        found = key_map(layer_name)
    elif layer_name in key_map:
        found = key_map[layer_name]
    else:
        raise ValueError(f"T-LoRA: the key map has no entry for layer {layer_name!r}.")
    return found if isinstance(found, LoraTarget) else LoraTarget(str(found))


def _fused(key: str, parts: list[tuple[LoraTarget, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One LoRA for layers that are row slices of one fused weight: down stacked, up block-diagonal
    (rows of the fused weight outside every slice get no delta)."""
    total = {t.total_rows for t, _, _ in parts}
    fan_in = {d.shape[1] for _, d, _ in parts}
    if len(total) != 1 or len(fan_in) != 1 or any(t.rows is None for t, _, _ in parts):
        raise ValueError(
            f"T-LoRA: layers mapped to one key {key!r} must all be row slices of one fused weight "
            f"(same total_rows and input width); got {[(t.rows, t.total_rows) for t, _, _ in parts]}."
        )
    spans = sorted(t.rows for t, _, _ in parts)  # type: ignore[type-var]
    for (a, n), (b, _) in zip(spans, spans[1:]):
        if a + n > b:
            raise ValueError(f"T-LoRA: layers mapped to {key!r} overlap in rows ({a}, {n}) and ({b}, ...).")
    down = torch.cat([d for _, d, _ in parts])
    up = down.new_zeros(total.pop(), down.shape[0])  # type: ignore[arg-type]
    column = 0
    for target, d, u in parts:
        offset, size = target.rows  # type: ignore[misc]
        up[offset : offset + size, column : column + d.shape[0]] = u
        column += d.shape[0]
    return down, up


def export_lora(
    adapter: TLoRA,
    rank: int | None = None,
    storage_dtype: str = "fp32",
    key_style: str = "comfyui",
    key_map: KeyMap | None = None,
) -> dict[str, torch.Tensor]:
    """The adapter frozen at the mask with ``rank`` components on (default: all R) as a plain LoRA.

    Each key gets ΔW(rank) factored exactly (rank <= r for Vanilla, <= 2r for T-LoRA, fewer
    where ΔW has exactly-zero singular values; one zero component where ΔW = 0), cast to
    ``storage_dtype`` ("fp32", "fp16", "bf16"). alpha (comfyui style; float32) equals the
    key's rank, so loaders apply it at scale 1 like T-LoRA strength 1 — except fp16 factors
    too small for fp16's range, which are scaled up by a power of two that alpha undoes.
    """
    _check_style(key_style)
    dtype = _files.storage_dtype(storage_dtype)
    rank = check_rank(adapter, rank)
    down_suffix, up_suffix, alpha_suffix = _SUFFIXES[key_style]
    groups: dict[str, list[tuple[LoraTarget, torch.Tensor, torch.Tensor]]] = {}
    with torch.no_grad():
        for name, layer in adapter.items():
            target = _target(key_map, adapter.config.model_family, key_style, name)
            down, up = balanced_factors(*layer.lora_factors(rank, dtype=torch.float64))
            groups.setdefault(target.key, []).append((target, down.cpu(), up.cpu()))
        out: dict[str, torch.Tensor] = {}
        for key, parts in groups.items():
            if len(parts) == 1 and parts[0][0].rows is None:
                _, down, up = parts[0]
            elif all(t.rows is not None for t, _, _ in parts):
                down, up = _fused(key, parts)
            else:
                raise ValueError(f"T-LoRA: {len(parts)} layers map to one key {key!r}; each layer needs its own key.")
            scale = 1.0
            largest = max(float(down.abs().max()), float(up.abs().max()))
            if dtype == torch.float16 and alpha_suffix is not None and 0.0 < largest < _FP16_SMALL:
                scale = 2.0 ** -(math.floor(math.log2(largest)) + 1)  # largest entry lands in [0.5, 1)
            out[f"{key}.{up_suffix}"] = (up * scale).to(dtype).contiguous()
            out[f"{key}.{down_suffix}"] = (down * scale).to(dtype).contiguous()
            if alpha_suffix is not None:
                out[f"{key}.{alpha_suffix}"] = torch.tensor(down.shape[0] / (scale * scale), dtype=torch.float32)
    return out


def export_metadata(adapter: TLoRA, rank: int, storage: str, key_style: str) -> dict[str, str]:
    c = adapter.config
    return {
        "exported_from": "tlora-nodes",
        "export_rank": str(rank),
        "export_note": (
            f"{VARIANT_LABELS[c.variant]} frozen at rank {rank} of {c.rank}: a plain LoRA applies this one rank "
            f"at every step (the T-LoRA schedule, min_rank {c.min_rank}, does not travel)"
        ),
        "variant": c.variant,
        "rank": str(c.rank),
        "min_rank": str(c.min_rank),
        "schedule_power": repr(float(c.schedule_power)),
        "model_family": c.model_family,
        "training_steps": str(adapter.training_steps),
        "storage_dtype": storage,
        "key_style": key_style,
    }


def save_lora(
    path: str,
    adapter: TLoRA,
    rank: int | None = None,
    storage_dtype: str = "fp16",
    key_style: str = "comfyui",
    key_map: KeyMap | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Write ``export_lora`` to ``path`` atomically (a full disk leaves no half file under the
    name). Every argument is checked before anything is written. Returns the tensors written."""
    tensors = export_lora(adapter, rank, storage_dtype, key_style, key_map)
    metadata = export_metadata(adapter, check_rank(adapter, rank), storage_dtype, key_style)
    for key, text in (extra_metadata or {}).items():
        metadata.setdefault(key, str(text))
    _files.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return tensors
