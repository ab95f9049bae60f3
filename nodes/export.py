"""T-LoRA Export: a T-LoRA as a file other tools read — a plain LoRA at one fixed rank (every
family, ComfyUI/kohya or diffusers/PEFT names), or the reference trainer's SD-XL run layout (the
schedule travels there) — and as a LORA_MODEL for ComfyUI's stock "Load LoRA Model" node.

The maths (exact factors of ΔW(r) before the cast to fp16/bf16, key styles, fused weights) is
tlora_core.export; which key a layer gets in a model family is nodes/model_kinds.py.
"""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..tlora_core import export_lora, save_lora
from ..tlora_core.export import check_rank
from ..tlora_core.reference import save_sdxl
from . import model_kinds, patching
from .train import RunFiles
from .types import CATEGORY, TLora, node_message

log = logging.getLogger(__name__)

DISPLAY_NAME = "T-LoRA Export"
RANKS = ("rank (as at low noise)", "min_rank (as at high noise)", "custom_rank")
FORMATS = ("LoRA, ComfyUI / kohya keys", "LoRA, diffusers / PEFT keys", "T-LoRA, reference SD-XL layout")
STORAGE = ("fp16", "bf16", "fp32")


class TLoRAExport(io.ComfyNode):
    """Write a T-LoRA as a plain LoRA file (or the reference's SD-XL layout) in models/loras."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLoRA_Export",
            display_name=DISPLAY_NAME,
            category=CATEGORY,
            description=(
                "Writes the T-LoRA as a plain LoRA file into models/loras, for the stock Load LoRA node, Forge/A1111 "
                "or diffusers. A plain LoRA applies ONE rank at every step: the timestep schedule does not travel "
                "(only the reference SD-XL layout keeps it)."
            ),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The model the T-LoRA was trained for: its layers decide the LoRA keys."),
                TLora.Input("tlora", tooltip="From T-LoRA Train or T-LoRA Load."),
                io.Combo.Input(
                    "export_rank", options=list(RANKS), default=RANKS[0],
                    tooltip=(
                        "The one rank the plain LoRA applies at every step. 'rank': the adapter as it acts at low noise "
                        "(all components, the usual choice); 'min_rank': as at the highest noise; or custom_rank."
                    ),
                ),
                io.Int.Input("custom_rank", default=16, min=1, max=1024,
                             tooltip="Used when export_rank is custom_rank; at most the adapter's rank."),
                io.Combo.Input(
                    "storage_dtype", options=list(STORAGE), default="fp16",
                    tooltip="fp16 files are half the size of fp32 and rebuild the adapter's change to within 0.1 %.",
                ),
                io.Combo.Input(
                    "format", options=list(FORMATS), default=FORMATS[0],
                    tooltip=(
                        "ComfyUI/kohya keys: what ComfyUI's LoRA loaders and Forge/A1111 read (every model family). "
                        "diffusers/PEFT keys: for diffusers pipelines (SD1.5, SD2, SDXL, FLUX.1). Reference SD-XL "
                        "layout: checkpoint-N/pytorch_lora_weights.safetensors + logs/hparams.yml, which the reference "
                        "T-LoRA code runs with its schedule (SD-XL-style UNets only)."
                    ),
                ),
                io.String.Input("filename_prefix", default="tlora/exported",
                                tooltip="Name inside models/loras; a counter is added so nothing is overwritten."),
            ],
            outputs=[
                io.LoraModel.Output(
                    "lora", tooltip="The same plain LoRA (ComfyUI keys, float32) for the stock 'Load LoRA Model' node."
                ),
            ],
        )

    @classmethod
    def execute(cls, model, tlora, export_rank: str, custom_rank: int, storage_dtype: str, format: str,
                filename_prefix: str) -> io.NodeOutput:
        patching.check_compatible(tlora, model, DISPLAY_NAME)
        kind = model_kinds.kind_of(model, DISPLAY_NAME)
        if format not in FORMATS:
            raise ValueError(f"{DISPLAY_NAME}: format {format!r} is not one of {', '.join(map(repr, FORMATS))}.")
        rank = {RANKS[0]: tlora.config.rank, RANKS[1]: tlora.config.min_rank}.get(export_rank, custom_rank)
        try:
            rank = check_rank(tlora, rank)
            comfyui_keys = model_kinds.key_map(model, DISPLAY_NAME)
            lora_model = export_lora(tlora, rank, "fp32", "comfyui", comfyui_keys)
            files = RunFiles.new(filename_prefix, DISPLAY_NAME)
            if format == FORMATS[2]:
                # the run folder ends in "_" like ComfyUI's file names, so the next export's counter moves on
                saved, hparams = save_sdxl(os.path.join(files.folder, files.stem + "_"), tlora, storage=storage_dtype)
                written = [files.relative(saved), files.relative(hparams)]
            else:
                style = "comfyui" if format == FORMATS[0] else "diffusers"
                if style == "diffusers" and kind.naming == "native":
                    raise ValueError(
                        f"T-LoRA: diffusers/PEFT names are known here for SD1.5, SD2, SDXL and FLUX.1 only, not for "
                        f"{kind.label}. Set 'format' to ComfyUI / kohya keys."
                    )
                path = files.final()
                save_lora(path, tlora, rank, storage_dtype, style, comfyui_keys if style == "comfyui" else None)
                written = [files.relative(path)]
        except ValueError as err:
            raise ValueError(node_message(DISPLAY_NAME, err)) from err
        except OSError as err:
            raise OSError(f"{DISPLAY_NAME}: could not write the export ({err}). Free disk space and run it again; "
                          f"nothing was left under the file's name.") from err
        log.info("T-LoRA: exported %s (rank %d of %d, %s)", ", ".join(written), rank, tlora.config.rank, format)
        return io.NodeOutput(lora_model, ui={"tlora_saved": written})
