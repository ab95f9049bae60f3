"""The one place that knows model families: for each ComfyUI model class, which Linear layers
T-LoRA adapts, how a sigma becomes the reference's t, and what the training target is.

Layers. One rule per architecture type (the reference's choices, README has the table):
    UNet                        every attention's q, k, v, out (SD-XL, SPEC §4)
    double-stream (MM-DiT)      the image stream's q, k, v, out and the text stream's q, k, v
                                (the reference's FLUX rule)
    single-stream               q, k, v (row slices of a fused weight where they are fused)
    cross-attention DiT         self-attention q, k, v, out and cross-attention q, k, v, out
A rule is written once as a BlockShape (regexes relative to one transformer block, and how a
fused weight splits into q/k/v rows); a ModelKind says which block lists of its model have
which shape. Nothing else is adapted: no feed-forwards, modulations, embedders, or the
text-only refiner blocks some models run before the denoiser (they never see the timestep).
A model class the table doesn't list is adapted only when every block of its transformer block
lists has one of the known shapes (``generic_kind``); otherwise it is refused with the list of
supported families.

Layer names. Families supported before this table keep the diffusers names their files use
(via ComfyUI's own ``unet_to_diffusers`` / ``flux_to_diffusers``, which the reference's SD-XL
files use too); every other family names a layer by its module path in the diffusion model, a
fused weight's slice by ``<path>.q`` / ``.k`` / ``.v``.

t. From the model's own sampling, after any shift node (SPEC §2): discrete ε/v sampling
(ModelSamplingDiscrete) gives the index of the closest training sigma; flow sampling (CONST, every
flow family here) gives t = 1000·σ, whatever the network itself does with σ (×1000, 1 − σ, per
frame...). Continuous EDM/V and x0 sampling have no such t and are refused.

Training. Each family has a reference recipe (``Recipe``, SPEC §5): UNet (ε/v) families the
paper's SD-XL one (T-LoRA, R 64, r_min 32, AdamW 1e-4, no clipping); every transformer family the
reference's FLUX.1 code (Vanilla, R 32, r_min 1 as in its README command, Prodigy lr 1.0,
gradient-norm clipping 1.0, guidance 1) — the paper finds MM-DiT LoRAs full-rank already, and
the FLUX code is the reference's only transformer trainer. Two rules hold for every family:
    timesteps   discrete ε/v models draw t from 0..999 (DDPM's indices, the SD-XL code); every flow
                model draws t from 1..1000 with σ = t/1000, as the FLUX code does with diffusers'
                flow-matching scheduler, whose training timesteps are 1000..1 for every flow model
                it serves (SD3, Wan, ...): σ = 1, where sampling starts, is trained; σ = 0, a clean
                latent that no sampler evaluates, never is.
    guidance    a model whose network embeds a distilled guidance value (ComfyUI fills in 3.5 for
                FLUX.1-dev when the prompt sets none) trains at the recipe's guidance, 1, whatever
                the prompt carries, as the FLUX code does; ``takes_distilled_guidance`` asks the
                network itself (FLUX.1-dev and FLUX.2 yes, FLUX.1-schnell no; HunyuanVideo when
                its checkpoint has the embedder). Chroma's guidance input feeds its modulation
                approximator, not a distilled-CFG embedder: it keeps ComfyUI's value (0).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

import comfy.model_patcher
import comfy.model_sampling
import comfy.utils

from ..tlora_core import NUM_TRAIN_TIMESTEPS as NUM_TIMESTEPS
from ..tlora_core import LoraTarget

log = logging.getLogger(__name__)

Slices = Callable[[torch.nn.Module, dict], "list[tuple[str, int, int]]"]


# -- how fused weights split ----------------------------------------------------------------------
def thirds(module: torch.nn.Module, config: dict) -> list[tuple[str, int, int]]:
    """A fused q|k|v weight of equal parts (multi-head attention)."""
    size = module.out_features // 3
    return [("q", 0, size), ("k", size, size), ("v", 2 * size, size)]


def qkv_of_hidden(module: torch.nn.Module, config: dict) -> list[tuple[str, int, int]]:
    """FLUX's single-block linear1: q|k|v of the hidden width first, then the MLP's input rows."""
    size = module.in_features
    return [("q", 0, size), ("k", size, size), ("v", 2 * size, size)]


def grouped_qkv(module: torch.nn.Module, config: dict) -> list[tuple[str, int, int]]:
    """Lumina 2 / Z-Image: q for every head, k and v for the key/value heads (grouped-query
    attention in Lumina 2, where ComfyUI's own LoRA key map assumes equal thirds)."""
    heads = int(config["n_heads"])
    kv_heads = int(config.get("n_kv_heads") or heads)
    head_dim = int(config["dim"]) // heads
    return [("q", 0, heads * head_dim), ("k", heads * head_dim, kv_heads * head_dim),
            ("v", (heads + kv_heads) * head_dim, kv_heads * head_dim)]


# -- the rules ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """Linears inside one block whose path (relative to the block) fully matches ``pattern``."""

    pattern: str
    slices: Slices | None = None  # None: the whole weight


@dataclass(frozen=True)
class BlockShape:
    rule: str  # "UNet", "double-stream", "single-stream", "cross-attention DiT"
    layers: tuple[Layer, ...]


def _shape(rule: str, *layers: Layer) -> BlockShape:
    return BlockShape(rule, layers)


UNET = "UNet"
DOUBLE = "double-stream"
SINGLE = "single-stream"
CROSS = "cross-attention DiT"

UNET_TRANSFORMER = _shape(UNET, Layer(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)"))
FLUX_DOUBLE = _shape(DOUBLE, Layer(r"img_attn\.qkv", thirds), Layer(r"img_attn\.proj"), Layer(r"txt_attn\.qkv", thirds))
FLUX_SINGLE = _shape(SINGLE, Layer(r"linear1", qkv_of_hidden))
SD3_JOINT = _shape(
    DOUBLE,
    Layer(r"x_block\.attn\.qkv", thirds), Layer(r"x_block\.attn\.proj"),
    # SD3.5-medium's MMDiT-X blocks: an image-only self-attention inside the image stream
    Layer(r"x_block\.attn2\.qkv", thirds), Layer(r"x_block\.attn2\.proj"),
    Layer(r"context_block\.attn\.qkv", thirds),
)
AURA_DOUBLE = _shape(DOUBLE, Layer(r"attn\.w2[qkvo]"), Layer(r"attn\.w1[qkv]"))  # w2: image, w1: text
AURA_SINGLE = _shape(SINGLE, Layer(r"attn\.w1[qkv]"))
QWEN_DOUBLE = _shape(DOUBLE, Layer(r"attn\.(to_q|to_k|to_v|to_out\.0)"), Layer(r"attn\.(add_q_proj|add_k_proj|add_v_proj)"))
HIDREAM_DOUBLE = _shape(DOUBLE, Layer(r"block\.attn1\.(to_q|to_k|to_v|to_out)"), Layer(r"block\.attn1\.(to_q_t|to_k_t|to_v_t)"))
HIDREAM_SINGLE = _shape(SINGLE, Layer(r"block\.attn1\.(to_q|to_k|to_v)"))
LUMINA_SINGLE = _shape(SINGLE, Layer(r"attention\.qkv", grouped_qkv))
KANDINSKY_CROSS = _shape(
    CROSS, Layer(r"self_attention\.(to_query|to_key|to_value|out_layer)"),
    Layer(r"cross_attention\.(to_query|to_key|to_value|out_layer)"),
)
# i2v models attend to the start image's CLIP-vision tokens with extra k/v in the cross-attention
WAN_CROSS = _shape(CROSS, Layer(r"self_attn\.[qkvo]"), Layer(r"cross_attn\.([qkvo]|k_img|v_img)"))
LTX_CROSS = _shape(CROSS, Layer(r"attn1\.(to_q|to_k|to_v|to_out\.0)"), Layer(r"attn2\.(to_q|to_k|to_v|to_out\.0)"))

# What a model class the table doesn't list is tried against (config-free shapes, most layers first).
GENERIC_SHAPES = (SD3_JOINT, KANDINSKY_CROSS, WAN_CROSS, LTX_CROSS, QWEN_DOUBLE, HIDREAM_DOUBLE, FLUX_DOUBLE,
                  AURA_DOUBLE, HIDREAM_SINGLE, AURA_SINGLE, FLUX_SINGLE)


# -- reference recipes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """A family's reference training settings. variant/rank/min_rank/optimizer/learning_rate are
    what T-LoRA Train's recipe "family reference" uses; max_grad_norm and guidance hold for every
    run of the family (module docstring). preview_cfg: the CFG its previews sample at."""

    name: str
    variant: str  # "tlora" | "vanilla"
    rank: int
    min_rank: int
    optimizer: str  # "adamw" | "prodigy"
    learning_rate: float
    max_grad_norm: float | None  # None: no clipping
    guidance: float | None  # trained at this distilled guidance where the network takes one
    preview_cfg: float


# the paper (SPEC §5) and the reference's SD-XL code (tlora/trainer_sdxl.py: no clipping)
SD_RECIPE = Recipe("SD-XL paper recipe", "tlora", 64, 32, "adamw", 1e-4, None, None, 5.0)
# the reference's flux/ code: run.py defaults (Prodigy lr 1, max_grad_norm 1, guidance_scale 1) and
# its README command (--tlora --rank 32 --min_rank 1)
FLUX_RECIPE = Recipe("FLUX.1 reference recipe", "vanilla", 32, 1, "prodigy", 1.0, 1.0, 1.0, 5.0)
# guidance-distilled FLUX models sample without CFG
FLUX_DISTILLED_RECIPE = replace(FLUX_RECIPE, preview_cfg=1.0)
# a family's recipe when the table names none, and of a class adapted by ``generic_kind``: the
# reference's only transformer trainer
DEFAULT_RECIPE = FLUX_RECIPE


# -- models that come as two experts ----------------------------------------------------------------------
EXPERTS = ("none", "high-noise", "low-noise")


@dataclass(frozen=True)
class Experts:
    """A model released as a high-noise and a low-noise expert of one ComfyUI class. Sampling
    hands over from one to the other at a timestep, and each expert was trained only on its side
    of it, so a T-LoRA for one expert is trained there too (``expert_range``)."""

    label: str  # what users read, e.g. "Wan 2.2 A14B"
    boundary: Callable[[dict], int]  # unet_config -> the hand-over timestep t = 1000·σ


def _wan22_a14b_boundary(config: dict) -> int:
    """Wan 2.2's own configs: boundary 0.875 for T2V-A14B, 0.900 for I2V-A14B (whose experts load
    as WAN21_T2V with 36 input channels: 16 latent + 20 of the start image and its mask)."""
    return 900 if int(config.get("in_dim", 16)) > int(config.get("out_dim", 16)) else 875


WAN22_A14B = Experts("Wan 2.2 A14B", _wan22_a14b_boundary)


# -- the table ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelKind:
    """One model family. ``blocks``: (regex of a block's path in the diffusion model, its shape)."""

    family: str  # what files store, e.g. "sdxl", "sd3", "wan21"
    label: str  # what users read, e.g. "SD3 / SD3.5"
    classes: tuple[str, ...]  # ComfyUI's supported_models class names
    blocks: tuple[tuple[str, BlockShape], ...]
    naming: str = "native"  # "unet" / "flux": diffusers names (ComfyUI's converters), else module paths
    inplace: bool = False  # blocks update tensors in place: training runs them on copies
    video: bool = False  # 5-D (B, C, T, H, W) latents
    note: str = ""
    recipe: Recipe = DEFAULT_RECIPE
    # video: frames of video per latent frame after the first (F = frame_stride·(T − 1) + 1), the
    # VAE's temporal downscale (ComfyUI 0.3.64's latent formats don't state it)
    frame_stride: int = 1
    experts: Experts | None = None  # the class also holds the two experts of a two-expert model

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(shape.rule for _, shape in self.blocks))


_UNET_BLOCKS = ((r"(input_blocks\.\d+\.\d+|middle_block\.\d+|output_blocks\.\d+\.\d+)\.transformer_blocks\.\d+",
                 UNET_TRANSFORMER),)
_FLUX_BLOCKS = ((r"double_blocks\.\d+", FLUX_DOUBLE), (r"single_blocks\.\d+", FLUX_SINGLE))

KINDS: tuple[ModelKind, ...] = (
    ModelKind("sd15", "SD1.5", ("SD15", "SD15_instructpix2pix"), _UNET_BLOCKS, naming="unet", recipe=SD_RECIPE),
    ModelKind("sd2", "SD2", ("SD20", "SD21UnclipL", "SD21UnclipH", "LotusD"), _UNET_BLOCKS, naming="unet", recipe=SD_RECIPE),
    ModelKind("sdxl", "SDXL", ("SDXL", "SDXL_instructpix2pix"), _UNET_BLOCKS, naming="unet", recipe=SD_RECIPE),
    ModelKind("ssd1b", "SSD-1B", ("SSD1B",), _UNET_BLOCKS, naming="unet", recipe=SD_RECIPE),
    ModelKind("segmind_vega", "Segmind Vega", ("Segmind_Vega",), _UNET_BLOCKS, naming="unet", recipe=SD_RECIPE),
    ModelKind("koala_700m", "KOALA 700M", ("KOALA_700M",), _UNET_BLOCKS, naming="unet", recipe=SD_RECIPE),
    ModelKind("koala_1b", "KOALA 1B", ("KOALA_1B",), _UNET_BLOCKS, naming="unet", recipe=SD_RECIPE),
    ModelKind("flux", "FLUX.1", ("Flux", "FluxInpaint", "FluxSchnell"), _FLUX_BLOCKS, naming="flux", inplace=True,
              recipe=FLUX_DISTILLED_RECIPE),
    ModelKind("sd3", "SD3 / SD3.5", ("SD3",), ((r"joint_blocks\.\d+", SD3_JOINT),)),
    ModelKind("auraflow", "AuraFlow", ("AuraFlow",),
              ((r"double_layers\.\d+", AURA_DOUBLE), (r"single_layers\.\d+", AURA_SINGLE))),
    ModelKind("flux2", "FLUX.2", ("Flux2",), _FLUX_BLOCKS, inplace=True, recipe=FLUX_DISTILLED_RECIPE),
    ModelKind("chroma", "Chroma", ("Chroma",), _FLUX_BLOCKS, inplace=True),
    ModelKind("chroma_radiance", "Chroma Radiance", ("ChromaRadiance",), _FLUX_BLOCKS, inplace=True),
    ModelKind("qwen_image", "Qwen-Image", ("QwenImage",), ((r"transformer_blocks\.\d+", QWEN_DOUBLE),)),
    # the caption-only context_refiner blocks take no timestep: left out, like text encoders
    ModelKind("lumina2", "Lumina 2", ("Lumina2",),
              ((r"layers\.\d+", LUMINA_SINGLE), (r"noise_refiner\.\d+", LUMINA_SINGLE))),
    ModelKind("z_image", "Z-Image", ("ZImage",),
              ((r"layers\.\d+", LUMINA_SINGLE), (r"noise_refiner\.\d+", LUMINA_SINGLE))),
    ModelKind("hidream", "HiDream-I1", ("HiDream",),
              ((r"double_stream_blocks\.\d+", HIDREAM_DOUBLE), (r"single_stream_blocks\.\d+", HIDREAM_SINGLE)),
              note="ComfyUI's default shift for HiDream is 1.0; its workflows add ModelSamplingSD3 (3 or 6)."),
    # the text-only text_transformer_blocks take no part in denoising the image: left out
    ModelKind("kandinsky5_image", "Kandinsky 5 (image)", ("Kandinsky5Image",),
              ((r"visual_transformer_blocks\.\d+", KANDINSKY_CROSS),)),
    # Wan 2.2 A14B's experts (T2V and I2V) load as WAN21_T2V: one family, told apart by their timesteps
    ModelKind("wan21", "Wan 2.1 / Wan 2.2 A14B", ("WAN21_T2V",), ((r"blocks\.\d+", WAN_CROSS),), video=True,
              frame_stride=4, experts=WAN22_A14B),
    ModelKind("wan21_i2v", "Wan 2.1 i2v", ("WAN21_I2V",), ((r"blocks\.\d+", WAN_CROSS),), video=True, frame_stride=4),
    ModelKind("wan22_5b", "Wan 2.2 TI2V 5B", ("WAN22_T2V",), ((r"blocks\.\d+", WAN_CROSS),), video=True, frame_stride=4),
    ModelKind("hunyuan_video15", "HunyuanVideo 1.5", ("HunyuanVideo15",), _FLUX_BLOCKS, inplace=True, video=True,
              frame_stride=4),
    ModelKind("ltxv", "LTX-Video", ("LTXV",), ((r"transformer_blocks\.\d+", LTX_CROSS),), inplace=True, video=True,
              frame_stride=8),
)
_BY_CLASS = {name: kind for kind in KINDS for name in kind.classes}
_BY_FAMILY = {kind.family: kind for kind in KINDS}


def supported() -> str:
    return ", ".join(dict.fromkeys(kind.label for kind in KINDS))


def family_name(family: str) -> str:
    kind = _BY_FAMILY.get(family)
    if kind is not None:
        return kind.label
    return family.removeprefix("generic:") if family else "an unknown model"


# -- which kind a MODEL is --------------------------------------------------------------------------------
def kind_of(model: comfy.model_patcher.ModelPatcher, node: str) -> ModelKind:
    """The table's entry for the model's class, else a generic entry when every transformer
    block has a known shape, else an error naming the class and the supported families.
    Decided once per MODEL (cached on the model object): the answer never changes for it."""
    base = model.model
    name = type(base.model_config).__name__
    cached = getattr(base, "_tlora_kind", None)
    if cached is not None and cached[0] == name:
        return cached[1]
    kind = _BY_CLASS.get(name) or generic_kind(base, name)
    if kind is None:
        raise ValueError(
            f"{node}: T-LoRA can't adapt a {name} model: its transformer blocks don't have the attention layout "
            f"of a supported family ({supported()}). Connect one of those checkpoints."
        )
    base._tlora_kind = (name, kind)
    return kind


def expert_range(model: comfy.model_patcher.ModelPatcher, expert: str, node: str) -> tuple[int, int] | None:
    """The [first, end) timesteps one expert of a two-expert model sees; None for "none"."""
    if expert not in EXPERTS:
        raise ValueError(f"{node}: expert {expert!r} is not one of {', '.join(map(repr, EXPERTS))}.")
    if expert == "none":
        return None
    kind = kind_of(model, node)
    if kind.experts is None:
        two = ", ".join(dict.fromkeys(k.experts.label for k in KINDS if k.experts is not None))
        raise ValueError(
            f"{node}: expert is '{expert}', but {kind.label} is one model, not a pair of experts (only {two} "
            f"is). Set expert to none."
        )
    boundary = kind.experts.boundary(dict(model.model.model_config.unet_config))
    return (boundary, NUM_TIMESTEPS) if expert == "high-noise" else (0, boundary)


def describe_range(span: tuple[int, int] | None) -> str:
    """A timestep range as users read it: whose timesteps these are, and which."""
    if span is None:
        return "every timestep"
    first, end = span
    whose = "the high-noise expert: " if end == NUM_TIMESTEPS else "the low-noise expert: " if first == 0 else ""
    return f"{whose}t {first}-{end - 1} (sigma {first / NUM_TIMESTEPS:.3f}-{end / NUM_TIMESTEPS:.3f})"


def start_image_inputs(model: comfy.model_patcher.ModelPatcher, node: str) -> tuple[str, tuple[str, ...]] | None:
    """What an image-to-video model can't be trained without, and the node that gives it:
    (node id, conditioning keys). Wan 2.1 i2v reads the start image's latent and its CLIP-vision
    tokens; Wan 2.2 A14B I2V's experts (WAN21_T2V with more input than output channels) the
    latent. Others take their start image optionally (HunyuanVideo 1.5: zeros for t2v) or
    through the latent's noise mask (Wan 2.2 TI2V 5B, LTX-Video)."""
    kind = kind_of(model, node)
    config = model.model.model_config.unet_config
    if kind.family == "wan21_i2v":
        return "WanImageToVideo", ("concat_latent_image", "clip_vision_output")
    if kind.family == "wan21" and int(config.get("in_dim", 16)) > int(config.get("out_dim", 16)):
        return "WanImageToVideo", ("concat_latent_image",)
    return None


def is_linear(module: torch.nn.Module) -> bool:
    """A Linear layer, also ComfyUI 0.33's quantized mixed-precision Linear (not an nn.Linear)."""
    return isinstance(module, torch.nn.Linear) or (
        isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int)
        and getattr(module, "weight", None) is not None
    )


def _block_lists(net: torch.nn.Module) -> list[tuple[str, torch.nn.ModuleList]]:
    return [(name, child) for name, child in net.named_children() if isinstance(child, torch.nn.ModuleList)
            and any(is_linear(m) for m in child.modules())]


def _matches(shape: BlockShape, linears: list[str]) -> bool:
    return all(any(re.fullmatch(layer.pattern, path) for path in linears) for layer in shape.layers)


def generic_kind(base_model: torch.nn.Module, class_name: str) -> ModelKind | None:
    """A ModelKind for a class the table doesn't list, when every block of every transformer
    block list (the diffusion model's ModuleLists of Linears) has one of GENERIC_SHAPES."""
    net = base_model.diffusion_model
    lists = _block_lists(net)
    if not lists:
        return None
    blocks: list[tuple[str, BlockShape]] = []
    for list_name, blocks_list in lists:
        shapes = set()
        for block in blocks_list:
            linears = [p for p, m in block.named_modules() if is_linear(m)]
            shape = next((s for s in GENERIC_SHAPES if _matches(s, linears)), None)
            if shape is None:
                return None
            shapes.add(shape)
        if len(shapes) != 1:  # one shape per block list, like every family in the table
            return None
        blocks.append((re.escape(list_name) + r"\.\d+", shapes.pop()))
    kind = ModelKind(f"generic:{class_name}", class_name, (class_name,), tuple(blocks),
                     note="not in the table; adapted by the rule its blocks match")
    log.info("T-LoRA: %s is not in the family table; its blocks match %s.", class_name,
             "; ".join(f"{pattern} -> {shape.rule}" for pattern, shape in blocks))
    return kind


# -- where the adapter goes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One adapted layer. ``rows`` is (offset, size) into a fused weight's outputs."""

    name: str  # the adapter's layer name (diffusers name or module path, see the module docstring)
    module: str  # module path inside the BaseModel, e.g. "diffusion_model.joint_blocks.0.x_block.attn.qkv"
    rows: tuple[int, int] | None
    in_features: int
    out_features: int
    path: str = field(default="", compare=False)  # module path inside the diffusion model


def _diffusers_names(kind: ModelKind, unet_config: dict) -> dict[tuple[str, tuple[int, int] | None], str]:
    """(module path in the diffusion model, rows) -> diffusers name, from ComfyUI's converters."""
    if kind.naming == "unet":
        mapping = comfy.utils.unet_to_diffusers(unet_config)
    else:
        mapping = comfy.utils.flux_to_diffusers(unet_config, output_prefix="")
    names: dict[tuple[str, tuple[int, int] | None], str] = {}
    for diffusers_key, native in mapping.items():
        if not diffusers_key.endswith(".weight"):
            continue
        if isinstance(native, tuple):
            if len(native) != 2 or not isinstance(native[1], tuple):
                continue  # a converted weight (e.g. FLUX's swapped scale/shift), never an attention projection
            weight_key, (_, offset, size) = native
            rows: tuple[int, int] | None = (int(offset), int(size))
        else:
            weight_key, rows = native, None
        names[(weight_key[: -len(".weight")], rows)] = diffusers_key[: -len(".weight")]
    return names


def find_targets(model: comfy.model_patcher.ModelPatcher, node: str) -> dict[str, Target]:
    """Every layer T-LoRA adapts in this model, keyed by layer name, in the model's own module
    order (then row offset): the adapter's per-layer init follows this order, so a seed gives
    the same adapter in every process."""
    kind = kind_of(model, node)
    base = model.model
    config = dict(base.model_config.unet_config)
    blocks = [(re.compile(prefix + r"\." + layer.pattern), layer) for prefix, shape in kind.blocks for layer in shape.layers]
    names = _diffusers_names(kind, config) if kind.naming != "native" else None
    targets: dict[str, Target] = {}
    for path, module in base.diffusion_model.named_modules():
        if not is_linear(module):
            continue
        layer = next((layer for pattern, layer in blocks if pattern.fullmatch(path)), None)
        if layer is None:
            continue
        parts = layer.slices(module, config) if layer.slices else [("", 0, module.out_features)]
        for suffix, offset, size in parts:
            rows = (offset, size) if layer.slices else None
            if names is not None:
                name = names.get((path, rows))
                if name is None:
                    raise ValueError(f"{node}: ComfyUI has no diffusers name for {path} {rows or ''}; please report this.")
            else:
                name = f"{path}.{suffix}" if suffix else path
            targets[name] = Target(name, f"diffusion_model.{path}", rows, module.in_features, size, path)
    if not targets:
        raise ValueError(f"{node}: found no attention layers to adapt in this {kind.label} model.")
    return targets


def layer_shapes(targets: dict[str, Target]) -> dict[str, tuple[int, int]]:
    return {name: (t.in_features, t.out_features) for name, t in targets.items()}


def key_map(model: comfy.model_patcher.ModelPatcher, node: str) -> dict[str, LoraTarget]:
    """Layer name -> where ``tlora_core.export_lora`` writes it so that ComfyUI's stock LoRA loader
    (and Forge/A1111 for SD) applies it to this model (``lora_key``)."""
    kind = kind_of(model, node)
    out: dict[str, LoraTarget] = {}
    for name, target in find_targets(model, node).items():
        key, rows = lora_key(kind, target)
        if rows is None:
            out[name] = LoraTarget(key)
        else:
            weight_rows = comfy.utils.get_attr(model.model, target.module).out_features
            out[name] = LoraTarget(key, rows, weight_rows)
    return out


def lora_key(kind: ModelKind, target: Target) -> tuple[str, tuple[int, int] | None]:
    """The key ComfyUI's stock LoRA loader maps to this layer, and the rows of that key's weight
    the layer is (None: the key is the layer itself). Families before the table keep the names
    their exports always had (kohya names for UNets, diffusers names with ComfyUI's row slices for
    FLUX.1); every other family uses ``diffusion_model.<path>``, which ComfyUI maps for every
    model, so a fused weight's q/k/v go into one LoRA on the whole weight (block-diagonal) —
    ComfyUI's own slice keys are missing (HunyuanVideo) or wrong (Lumina 2's grouped k/v) for some."""
    if kind.naming == "unet":
        return "lora_unet_" + target.name.replace(".", "_"), None
    if kind.naming == "flux":
        return f"transformer.{target.name}", None
    return f"diffusion_model.{target.path}", target.rows


# -- sigma -> timestep, and what a model is trained to predict ------------------------------------------------
_SAMPLING_FIX = (
    "T-LoRA's schedule needs the timesteps of discrete SD sampling (eps, v or lcm) or of flow matching (FLUX, "
    "SD3, Wan, ...); continuous EDM/V models (e.g. Playground v2.5, CosXL) have none. Use another checkpoint, or "
    "remove the model-sampling node that switched it."
)


def _is_flow(model_sampling: Any) -> bool:
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def _is_discrete(model_sampling: Any) -> bool:
    return isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscrete)


def sampling_name(model_sampling: Any) -> str:
    """ComfyUI names its sampling classes "ModelSampling" (a mix-in of parameterisation and
    schedule): name the schedule part instead, e.g. ModelSamplingContinuousEDM."""
    for cls in type(model_sampling).__mro__:
        if cls.__module__ == comfy.model_sampling.__name__ and cls.__name__.startswith("ModelSampling") and cls.__name__ != "ModelSampling":
            return cls.__name__
    return type(model_sampling).__name__


def check_sampling(model: comfy.model_patcher.ModelPatcher, node: str) -> None:
    model_sampling = model.get_model_object("model_sampling")
    if not (_is_flow(model_sampling) or _is_discrete(model_sampling)):
        raise ValueError(f"{node}: this MODEL samples with {sampling_name(model_sampling)}. {_SAMPLING_FIX}")


def sigma_to_timestep(model_sampling: Any, sigma: torch.Tensor) -> torch.Tensor:
    """The reference's t for each row's sigma (SPEC §2).

    Discrete (SD1.5/SD2/SDXL, eps or v): the model's own ``timestep(sigma)``, the index of the
    closest training sigma (for LCM's 50-entry table, mapped back to 0..999 by the class itself).
    Flow: t = 1000 * sigma, shift included since sigma is already shifted, whatever the model's
    own timestep multiplier; rounded to 1e-3 so that sigma = t/1000 written in float32 gives back
    exactly t.
    """
    if _is_flow(model_sampling):
        return torch.round(sigma.double() * 1000.0, decimals=3)
    if isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscreteEDM):
        # its timestep() is 0.25·log(sigma), not an index: use the closest entry of its table
        return comfy.model_sampling.ModelSamplingDiscrete.timestep(model_sampling, sigma).double()
    if _is_discrete(model_sampling):
        return model_sampling.timestep(sigma).double()
    raise ValueError(
        f"T-LoRA: a node after Timestep-Aware Apply switched the model to {sampling_name(model_sampling)}. {_SAMPLING_FIX}"
    )


def timestep_to_sigma(model_sampling: Any, timesteps: torch.Tensor, node: str) -> torch.Tensor:
    """The sigma a training sample is noised to for its drawn timestep (SPEC §5): the model's own
    discrete table for SD models, sigma = t / 1000 for flow models."""
    if _is_flow(model_sampling):
        return timesteps.to(torch.float32) / 1000.0
    if _is_discrete(model_sampling):
        return model_sampling.sigma(timesteps.to(torch.float32).to(model_sampling.sigmas.device))
    raise ValueError(f"{node}: can't train a model that samples with {sampling_name(model_sampling)}. {_SAMPLING_FIX}")


def prediction(model_sampling: Any, node: str) -> str:
    """"eps", "v" or "flow": what the model predicts; an error for what T-LoRA can't train."""
    if _is_flow(model_sampling):
        return "flow"
    if isinstance(model_sampling, (comfy.model_sampling.EDM, comfy.model_sampling.X0)):
        what = "EDM-style" if isinstance(model_sampling, comfy.model_sampling.EDM) else "x0"
        raise ValueError(
            f"{node}: this MODEL predicts {what} outputs; T-LoRA Train trains ε-, v- and flow-prediction models. Use "
            f"such a checkpoint, or remove the model-sampling node that switched it."
        )
    if isinstance(model_sampling, comfy.model_sampling.V_PREDICTION):
        return "v"
    if isinstance(model_sampling, comfy.model_sampling.EPS):
        return "eps"
    raise ValueError(f"{node}: can't train a model with {type(model_sampling).__name__} prediction.")


def training_target(model_sampling: Any, sigma: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor, node: str) -> torch.Tensor:
    """What the diffusion model should output for x_t = noise_scaling(sigma, noise, x0).

    ε-prediction: the noise. v-prediction: (σd²·noise − σ·x0) / (σd·sqrt(σ² + σd²)), diffusers'
    velocity in ComfyUI's sigma parameterisation. Flow (CONST): the velocity noise − x0 (every
    flow family's diffusion model outputs it, after its own internal sign or x0 conversions).
    """
    kind = prediction(model_sampling, node)
    if kind == "flow":
        return noise - x0
    if kind == "v":
        s = sigma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        sd = float(model_sampling.sigma_data)
        return (sd**2 * noise - s * x0) / (sd * torch.sqrt(s**2 + sd**2))
    return noise


def first_timestep(model_sampling: Any) -> int:
    """Where a training run's timesteps start (module docstring): 1 for flow models (1..1000), 0
    for discrete ε/v models (0..999)."""
    return 1 if _is_flow(model_sampling) else 0


def takes_distilled_guidance(model: comfy.model_patcher.ModelPatcher) -> bool:
    """Does the network embed a distilled guidance value (FLUX.1-dev, FLUX.2, HunyuanVideo with its
    guidance embedder)? ComfyUI builds those networks with ``params.guidance_embed``."""
    params = getattr(model.model.diffusion_model, "params", None)
    return bool(getattr(params, "guidance_embed", False))


def min_latent_size(model: comfy.model_patcher.ModelPatcher) -> int:
    """The smallest latent side the network sees as more than padding: one patch for a
    transformer, one pixel at the deepest level for a UNet (each level halves the size)."""
    config = model.model.model_config.unet_config
    if kind_of(model, "T-LoRA").naming == "unet":
        return 2 ** max(0, len(config.get("channel_mult") or [1]) - 1)
    patch = config.get("patch_size") or 1
    return int(patch[-1] if isinstance(patch, (list, tuple)) else patch)
