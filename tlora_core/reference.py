"""Files of the reference implementation (ControlGenAI/T-LoRA, SPEC §6), both directions.

Read:
    SD-XL  ``checkpoint-N/pytorch_lora_weights.safetensors``: attention-processor keys
           ``<module>.processor.<to_q|to_k|to_v|to_out>_lora.<param>`` (Vanilla or Ortho).
    FLUX   ``checkpoint-N/lora.pt``: a ``torch.save`` of the attention processors' state dict,
           ``<transformer_blocks|single_transformer_blocks>.<i>.attn.processor.<proj>_lora.<down|up>.weight``
           (Vanilla). Read with ``torch.load(weights_only=True)`` only: tensors and plain
           containers, never code; anything but a flat dict of tensors is refused.
Write:
    SD-XL  the same layout plus ``logs/hparams.yml``, so an adapter trained here runs in the
           reference's own inference code.

Neither layout stores the schedule. The reference writes it to ``<run>/logs/hparams.yml``
beside the ``checkpoint-N/`` folders; ``file_schedule`` is the one rule that finds it (or says
which default it used and why), shared by ``load_tlora``, T-LoRA Load and the info route.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from ._files import (
    PARAM_NAMES,
    FileSchedule,
    FileSummary,
    LoadedFile,
    TLoRAFileError,
    atomic_write,
    check_finite,
    storage_dtype,
)
from .adapter import VARIANT_LABELS, TLoRA, TLoRAConfig, TLoRALayer

log = logging.getLogger(__name__)

SDXL_SOURCE = "reference"
FLUX_SOURCE = "reference-flux"
SOURCES = (SDXL_SOURCE, FLUX_SOURCE)
FLUX_FILENAME = "lora.pt"
SDXL_FILENAME = "pytorch_lora_weights.safetensors"

# The reference code's defaults when a run's hparams.yml is not found: min_rank 1 is the
# default of the SD-XL training CLI (train.py --min_rank), of its inference fallback
# (tlora/inferencer_sdxl.py) and of the FLUX pipeline (flux/model/pipeline.py); p = 1 is
# alpha_rank_scale's default (FLUX has no exponent at all: its formula is the linear one).
DEFAULT_MIN_RANK = 1
DEFAULT_SCHEDULE_POWER = 1.0

# -- SD-XL layout ---------------------------------------------------------------------------------
# <module>.processor.<proj>_lora.<param>; our layer names end in the diffusers module path.
_SDXL_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_SDXL_PARAMS = {
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
_UNET_LAYER = re.compile(r"^(?P<module>.+\.attn[12])\.(?P<proj>to_q|to_k|to_v|to_out\.0)$")

# -- FLUX layout ----------------------------------------------------------------------------------
# Every processor holds seven LoRAs; the single blocks' attention has no output projection and
# no text stream, so there the reference never calls to_out / to_*_proj (they stay at init).
_FLUX_KEY = re.compile(
    r"^(?P<block>transformer_blocks|single_transformer_blocks)\.(?P<index>\d+)\.attn\.processor\."
    r"(?P<proj>to_q|to_k|to_v|to_out|to_q_proj|to_k_proj|to_v_proj)_lora\.(?P<param>down|up)\.weight$"
)
_FLUX_PROJ = {
    "to_q": "to_q",
    "to_k": "to_k",
    "to_v": "to_v",
    "to_out": "to_out.0",
    "to_q_proj": "add_q_proj",
    "to_k_proj": "add_k_proj",
    "to_v_proj": "add_v_proj",
}
_FLUX_SINGLE_USED = ("to_q", "to_k", "to_v")


def is_flux_checkpoint_name(name: str) -> bool:
    """Whether a file in models/loras is offered as a reference FLUX checkpoint (``lora.pt``,
    usually as ``checkpoint-N/lora.pt``)."""
    return os.path.basename(name).lower() == FLUX_FILENAME


# -- reading: SD-XL ---------------------------------------------------------------------------------
def looks_like_sdxl(keys: Any) -> bool:
    return any(k.endswith(("_lora.down.weight", "_lora.q_layer.weight")) and ".processor." in k for k in keys)


def read_sdxl(path: str, tensors: dict[str, torch.Tensor]) -> LoadedFile:
    """A reference SD-XL (or SD1.5/SD2) ``pytorch_lora_weights.safetensors`` state dict as an
    adapter whose schedule is a placeholder (``needs_schedule``)."""
    name = os.path.basename(path)
    variant = "tlora" if any(k.endswith("_lora.q_layer.weight") for k in tensors) else "vanilla"
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in tensors.items():
        module, sep, rest = key.partition(".processor.")
        proj, _, param = rest.partition("_lora.")
        if not sep or proj not in _SDXL_PROJ or param not in _SDXL_PARAMS[variant]:
            unknown.append(key)
            continue
        grouped.setdefault(f"{module}.{_SDXL_PROJ[proj]}", {})[_SDXL_PARAMS[variant][param]] = value
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
            check_finite(f"{layer_name}.{param}", value, path)
            with torch.no_grad():
                getattr(layer, param).copy_(value.to(torch.float32))
        layers[layer_name] = layer
    if not family:
        raise TLoRAFileError(
            f"T-LoRA: {name}: can't tell which model family it was trained for (no cross-attention to_k layer "
            f"with a known context width {sorted(_CONTEXT_FAMILY)})."
        )
    config = TLoRAConfig(variant=variant, rank=rank, min_rank=rank, init="last", model_family=family)
    return LoadedFile(TLoRA(config, layers), SDXL_SOURCE, {}, needs_schedule=True)


# -- reading: FLUX ----------------------------------------------------------------------------------
def _unsafe_part(err: Exception) -> str:
    """The line of torch's weights-only refusal that names what the file wanted to load."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line]
    return (named or lines or [type(err).__name__])[0]


def torch_load_tensors(path: str, header_only: bool = False) -> dict[str, torch.Tensor]:
    """A ``torch.save`` file read safely: ``weights_only=True`` (a restricted unpickler that
    builds tensors and plain containers and never runs code from the file), on the CPU, and
    only a flat dict of str -> tensor is accepted.

    header_only: memory-map the tensor data instead of reading it (for summaries)."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise TLoRAFileError(f"T-LoRA: file not found: {path}. Put the file in ComfyUI/models/loras.")
    mmap = header_only and zipfile.is_zipfile(path)  # legacy (pre-1.6) files can't be mapped
    try:
        # map_location: the reference saves from the GPU; the tensors must land on the CPU here
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise TLoRAFileError(
            f"T-LoRA: {name} is not a plain state dict: it holds Python objects other than tensors "
            f"({_unsafe_part(err)}). Such files are never unpickled in full, since that can run code; "
            f"use the lora.pt that the reference trainer wrote, or a .safetensors file."
        ) from err
    # torch.load reports damaged or foreign bytes with many exception types (KeyError for a
    # random byte, EOFError for an empty file, RuntimeError for a broken zip, ...).
    except Exception as err:
        raise TLoRAFileError(
            f"T-LoRA: {name} is not a readable torch.save file ({type(err).__name__}: "
            f"{(str(err).splitlines() or [''])[0][:200]}). It may be truncated; copy it again from the training run."
        ) from err
    if not isinstance(obj, dict):
        raise TLoRAFileError(
            f"T-LoRA: {name} holds a {type(obj).__name__}, not a state dict (a dict of tensors). "
            f"Use the lora.pt that the reference FLUX trainer wrote."
        )
    bad = [(k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        key, value = bad[0]
        raise TLoRAFileError(
            f"T-LoRA: {name} is not a flat state dict: {len(bad)} of its {len(obj)} entries are not tensors "
            f"(e.g. {key!r}: {type(value).__name__}). Use the lora.pt that the reference FLUX trainer wrote."
        )
    return dict(obj)


def _describe_keys(keys: list[str]) -> str:
    head = ", ".join(repr(k) for k in sorted(keys)[:3])
    return f"{len(keys)} tensors, e.g. {head}" if keys else "no tensors"


def _flux_layers(path: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, dict[str, str]]:
    """Group a FLUX lora.pt's keys by our layer name: {layer: {"down": key, "up": key}}, with the
    single blocks' unused LoRAs left out. Raises if the file is anything else."""
    name = os.path.basename(path)
    layers: dict[str, dict[str, str]] = {}
    unknown = []
    for key in shapes:
        match = _FLUX_KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        block, proj = match["block"], match["proj"]
        if block == "single_transformer_blocks" and proj not in _FLUX_SINGLE_USED:
            continue
        layers.setdefault(f"{block}.{match['index']}.attn.{_FLUX_PROJ[proj]}", {})[match["param"]] = key
    if unknown or not layers:
        raise TLoRAFileError(
            f"T-LoRA: {name} is not a reference FLUX T-LoRA checkpoint: "
            + (f"{len(unknown)} keys aren't FLUX attention-processor LoRAs" if unknown else "it has no LoRA layers")
            + f" ({_describe_keys(unknown or list(shapes))}). T-LoRA Load reads the lora.pt that ControlGenAI/T-LoRA's "
            f"flux/train.py writes (checkpoint-N/lora.pt); for other LoRAs use the stock LoraLoader."
        )
    blocks = {layer.split(".", 1)[0] for layer in layers}
    if blocks != {"transformer_blocks", "single_transformer_blocks"}:
        raise TLoRAFileError(
            f"T-LoRA: {name} has attention LoRAs only in {', '.join(sorted(blocks))}, but a FLUX.1 checkpoint "
            f"of the reference trainer adapts both the double and the single blocks; it belongs to another model."
        )
    for layer, params in layers.items():
        missing = [p for p in ("down", "up") if p not in params]
        if missing:
            raise TLoRAFileError(f"T-LoRA: {name}: layer {layer!r} lacks {', '.join(missing)}; the file is incomplete.")
    return layers


def _flux_rank(path: str, layers: dict[str, dict[str, str]], shapes: Mapping[str, tuple[int, ...]]) -> int:
    name = os.path.basename(path)
    ranks = set()
    for layer, keys in layers.items():
        down, up = shapes[keys["down"]], shapes[keys["up"]]
        if len(down) != 2 or len(up) != 2 or down[0] != up[1] or down[0] < 1:
            raise TLoRAFileError(
                f"T-LoRA: {name}: layer {layer!r} has down {tuple(down)} and up {tuple(up)}, which aren't a LoRA's "
                f"(rank, in) and (out, rank). The file is damaged."
            )
        ranks.add(down[0])
    if len(ranks) != 1:
        raise TLoRAFileError(
            f"T-LoRA: {name} mixes ranks {sorted(ranks)}; the reference FLUX trainer uses one rank for every layer. "
            f"The file is damaged or was edited."
        )
    return ranks.pop()


def read_flux(path: str) -> LoadedFile:
    """A reference FLUX ``lora.pt`` as a Vanilla adapter whose schedule is a placeholder."""
    tensors = torch_load_tensors(path)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    grouped = _flux_layers(path, shapes)
    rank = _flux_rank(path, grouped, shapes)
    layers: dict[str, TLoRALayer] = {}
    for layer_name in sorted(grouped, key=_flux_order):
        down, up = tensors[grouped[layer_name]["down"]], tensors[grouped[layer_name]["up"]]
        for key in grouped[layer_name].values():
            check_finite(key, tensors[key], path)
        layer = TLoRALayer(down.shape[1], up.shape[0], rank, "vanilla")
        with torch.no_grad():
            layer.down.copy_(down.to(torch.float32))
            layer.up.copy_(up.to(torch.float32))
        layers[layer_name] = layer
    config = TLoRAConfig(variant="vanilla", rank=rank, min_rank=rank, init="last", model_family="flux")
    return LoadedFile(TLoRA(config, layers), FLUX_SOURCE, {}, needs_schedule=True)


def summarize_flux(path: str) -> FileSummary:
    shapes = {k: tuple(v.shape) for k, v in torch_load_tensors(path, header_only=True).items()}
    rank = _flux_rank(path, _flux_layers(path, shapes), shapes)
    return FileSummary(FLUX_SOURCE, "vanilla", rank, None, None, "flux", 0)


def _flux_order(layer_name: str) -> tuple[int, int, str]:
    """Double blocks before single blocks, by index: the model's own order."""
    block, index, rest = layer_name.split(".", 2)
    return (block == "single_transformer_blocks", int(index), rest)


# -- the schedule of a reference file ------------------------------------------------------------
def hparams_candidates(path: str) -> list[str]:
    """Where a reference file's ``hparams.yml`` may be, most specific first: ``<file>.yml``,
    ``<file stem>.yml``, ``hparams.yml`` beside the file, and ``../logs/hparams.yml`` (the
    reference's own layout: ``<run>/checkpoint-N/<file>`` and ``<run>/logs/hparams.yml``)."""
    directory = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(path)[0]
    return [
        path + ".yml",
        stem + ".yml",
        os.path.join(directory, "hparams.yml"),
        os.path.normpath(os.path.join(directory, os.pardir, "logs", "hparams.yml")),
    ]


def find_hparams(path: str) -> str | None:
    return next((c for c in hparams_candidates(path) if os.path.isfile(c)), None)


def read_hparams(hparams_path: str) -> dict[str, Any]:
    """A run's hparams.yml as a dict, read with ``yaml.safe_load`` (plain values only)."""
    import yaml  # ComfyUI's own requirement; only needed for reference files

    try:
        with open(hparams_path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise TLoRAFileError(
            f"T-LoRA: can't read {hparams_path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            f"Fix or remove it, or set min_rank and schedule_power on T-LoRA Load."
        ) from err
    if not isinstance(data, dict):
        raise TLoRAFileError(
            f"T-LoRA: {hparams_path} is not a YAML mapping of settings (found {type(data).__name__}). "
            f"Fix or remove it, or set min_rank and schedule_power on T-LoRA Load."
        )
    return data


def _hparams_number(data: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
        raise TLoRAFileError(
            f"T-LoRA: {where} has {key}: {value!r}, which is not a {'whole ' if kind is int else ''}number. "
            f"Fix it, or set min_rank and schedule_power on T-LoRA Load."
        )
    return kind(value)


def _relative(path: str, hparams_path: str) -> str:
    return os.path.relpath(hparams_path, os.path.dirname(os.path.abspath(path)))


def file_schedule(
    path: str,
    rank: int,
    stored: tuple[int, float] | None = None,
    min_rank: int | None = None,
    schedule_power: float | None = None,
) -> FileSchedule:
    """The one rule for the schedule a T-LoRA file is used with (T-LoRA Load, the info route
    and ``load_tlora`` all call it).

    path: the adapter file; rank: its rank R. stored: (min_rank, schedule_power) that a
    tlora-nodes file carries, None for reference files. min_rank / schedule_power: the caller's
    overrides (None = not given).

    Reference files: values not given are read from the run's hparams.yml (``min_rank``,
    ``alpha_rank_scale``; see ``hparams_candidates``); a run the file says trained a plain LoRA
    (SD-XL ``trainer_class: sdxl_lora``, FLUX ``tlora: false``) gets min_rank = rank, no
    schedule; without hparams.yml the reference code's defaults apply (min_rank 1, p 1.0).
    """
    if stored is not None:
        given = min_rank is not None or schedule_power is not None
        return FileSchedule(
            int(min_rank if min_rank is not None else stored[0]),
            float(schedule_power if schedule_power is not None else stored[1]),
            "override" if given else "file",
            "set on the node" if given else "stored in the file",
        )
    if min_rank is not None and schedule_power is not None:
        return FileSchedule(int(min_rank), float(schedule_power), "override", "set on the node")
    hparams_path = find_hparams(path)
    if hparams_path is None:
        looked = ", ".join(_relative(path, c) for c in hparams_candidates(path))
        values = (
            DEFAULT_MIN_RANK if min_rank is None else int(min_rank),
            DEFAULT_SCHEDULE_POWER if schedule_power is None else float(schedule_power),
        )
        return FileSchedule(
            min(values[0], rank),
            values[1],
            "default" if min_rank is None else "override",
            f"no hparams.yml of the training run found (looked for {looked}); "
            f"the reference code's defaults are min_rank {DEFAULT_MIN_RANK} and schedule_power {DEFAULT_SCHEDULE_POWER}",
        )
    data = read_hparams(hparams_path)
    where = _relative(path, hparams_path)
    run_rank = _hparams_number(data, "lora_rank", int, where) or _hparams_number(data, "rank", int, where)
    if run_rank is not None and run_rank != rank:
        raise TLoRAFileError(
            f"T-LoRA: {where} is for a run of rank {run_rank}, but {os.path.basename(path)} has rank {rank}: "
            f"it belongs to another run. Put the file in its own run's folder, or set min_rank and "
            f"schedule_power on T-LoRA Load."
        )
    plain = data.get("trainer_class") == "sdxl_lora" or data.get("tlora") is False
    if plain:
        found_min, found_power, source = rank, DEFAULT_SCHEDULE_POWER, "no-schedule"
        why = f"{where} says the run trained a plain LoRA (no rank schedule), so all {rank} components are on"
    else:
        found_min = _hparams_number(data, "min_rank", int, where)
        found_power = _hparams_number(data, "alpha_rank_scale", float, where)
        source = "hparams"
        parts = [f"min_rank {found_min}" if found_min is not None else f"min_rank {DEFAULT_MIN_RANK} (not in it; the default)"]
        parts.append(
            f"schedule_power {found_power}"
            if found_power is not None
            else f"schedule_power {DEFAULT_SCHEDULE_POWER} (not in it; the reference's formula)"
        )
        why = f"{' and '.join(parts)} from {where}"
        found_min = DEFAULT_MIN_RANK if found_min is None else found_min
        found_power = DEFAULT_SCHEDULE_POWER if found_power is None else found_power
    if min_rank is None and not 1 <= found_min <= rank:
        raise TLoRAFileError(
            f"T-LoRA: {where} has min_rank {found_min}, outside 1..{rank} (the file's rank). Fix it, or set "
            f"min_rank on T-LoRA Load."
        )
    return FileSchedule(
        int(found_min if min_rank is None else min_rank),
        float(found_power if schedule_power is None else schedule_power),
        source if min_rank is None and schedule_power is None else "override",
        why,
        hparams_path,
    )


# -- writing: SD-XL ----------------------------------------------------------------------------------
def sdxl_state_dict(adapter: TLoRA) -> dict[str, torch.Tensor]:
    """The adapter under the reference SD-XL trainer's keys and shapes (float32): what its
    ``save_attn_procs`` writes and its inference code loads. UNet families only."""
    names = PARAM_NAMES[adapter.config.variant]
    reference_names = {ours: theirs for theirs, ours in _SDXL_PARAMS[adapter.config.variant].items()}
    out: dict[str, torch.Tensor] = {}
    for layer_name, layer in adapter.items():
        match = _UNET_LAYER.match(layer_name)
        if match is None or adapter.config.model_family == "flux":
            raise ValueError(
                f"T-LoRA: the reference SD-XL layout has no place for layer {layer_name!r} "
                f"({adapter.config.model_family or 'unknown'} family); it holds UNet attention layers only. "
                f"Export this T-LoRA as a plain LoRA instead."
            )
        proj = "to_out" if match["proj"] == "to_out.0" else match["proj"]
        prefix = f"{match['module']}.processor.{proj}_lora"
        for param in names:
            value = getattr(layer, param).detach().to("cpu", torch.float32)
            if param.startswith("lam"):
                value = value.reshape(1, -1)  # the reference keeps lambda as a (1, r) parameter
            out[f"{prefix}.{reference_names[param]}"] = value.contiguous()
    return out


def sdxl_hparams(adapter: TLoRA, output_dir: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings the reference's ``inference.py --config_path`` needs to run the export."""
    config = adapter.config
    hparams: dict[str, Any] = {
        # the reference's trainer classes: sdxl_tlora masks by timestep; trainer types pick the layer
        "trainer_class": "sdxl_tlora",
        "trainer_type": "ortho_lora" if config.variant == "tlora" else "lora",
        "lora_rank": config.rank,
        "min_rank": config.min_rank,
        "alpha_rank_scale": float(config.schedule_power),
        "sig_type": config.init,
        "output_dir": os.path.abspath(output_dir),
        "revision": None,
        "placeholder_token": "sks",
        "class_name": "",
        "exported_from": "tlora-nodes",
        "model_family": config.model_family,
        "training_steps": adapter.training_steps,
    }
    if config.model_family == "sdxl":
        hparams["pretrained_model_name_or_path"] = "stabilityai/stable-diffusion-xl-base-1.0"
    hparams.update(extra or {})
    return hparams


def save_sdxl(
    run_dir: str,
    adapter: TLoRA,
    step: int | None = None,
    storage: str = "fp32",
    extra_hparams: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """Write the reference's run layout: ``<run_dir>/checkpoint-<step>/pytorch_lora_weights.safetensors``
    and ``<run_dir>/logs/hparams.yml`` (step defaults to the adapter's training steps), each
    atomically. Returns (weights path, hparams path). storage: "fp32" (the reference's own),
    "fp16" or "bf16". extra_hparams: e.g. placeholder_token, class_name,
    pretrained_model_name_or_path, for the reference's inference script."""
    import yaml

    dtype = storage_dtype(storage)
    tensors = {k: v.to(dtype) for k, v in sdxl_state_dict(adapter).items()}
    step = adapter.training_steps if step is None else int(step)
    weights = os.path.join(run_dir, f"checkpoint-{step}", SDXL_FILENAME)
    hparams = os.path.join(run_dir, "logs", "hparams.yml")
    text = yaml.safe_dump(sdxl_hparams(adapter, run_dir, extra_hparams), sort_keys=True)
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))

    def write_text(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(hparams, write_text)
    return weights, hparams
