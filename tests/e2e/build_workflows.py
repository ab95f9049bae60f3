"""Build the shipped workflows (workflows/*.json and their API twins workflows/api/*.json)
inside the real ComfyUI frontend, so that what users drag in is exactly what the frontend
itself would save: nodes are created with ``LiteGraph.createNode``, widgets set by name,
links made with ``node.connect``, and the result taken from ``app.graphToPrompt()``.

    $(python3 scripts/comfyui.py python ~/ComfyUI-0.33.0) -m tests.e2e.build_workflows        # needs ComfyUI, chromium, playwright

The specs below are the source of truth; test_workflows.py checks the committed files against
the frontend and a real server. Model files each workflow expects are listed in MODELS (and
in workflows/README.md and each workflow's note).
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

from .server import REPO

WORKFLOWS = REPO / "workflows"
SDXL = "sd_xl_base_1.0.safetensors"
LORA_FROM_A = "tlora/sks_dog_00001_.safetensors"  # what train_from_one_image writes first
HF = "https://huggingface.co"
WAN = "wan2.1_t2v_1.3B_fp16.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
WAN_REPACKAGED = f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
MODELS = {
    SDXL: ("checkpoints", f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"),
    "flux1-dev.safetensors": ("diffusion_models", f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors"),
    "ae.safetensors": ("vae", f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors"),
    "clip_l.safetensors": ("text_encoders", f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"),
    "t5xxl_fp16.safetensors": ("text_encoders", f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"),
    # the addresses ComfyUI's own Wan 2.1 text-to-video template gives (comfyui_workflow_templates)
    WAN: ("diffusion_models", f"{WAN_REPACKAGED}/diffusion_models/{WAN}"),
    UMT5: ("text_encoders", f"{WAN_REPACKAGED}/text_encoders/{UMT5}"),
    WAN_VAE: ("vae", f"{WAN_REPACKAGED}/vae/{WAN_VAE}"),
}
SAMPLER_SDXL = dict(seed=42, control_after_generate="fixed", steps=25, cfg=7.0, sampler_name="euler", scheduler="ddim_uniform", denoise=1.0)
SAMPLER_FLUX = dict(seed=42, control_after_generate="fixed", steps=20, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)
NEGATIVE = "blurry, low quality, deformed"


def node(key, type_, pos, widgets=None, title=None, size=None, models=(), color=None):
    return dict(key=key, type=type_, pos=pos, widgets=widgets or {}, title=title, size=size, models=list(models), color=color)


def models_of(*names):
    return [{"name": n, "directory": MODELS[n][0], "url": MODELS[n][1]} for n in names]


# -- (a) train from one image (SDXL) -------------------------------------------------------------------
NOTE_A = f"""## T-LoRA: train a concept from one image (SDXL)

1. **Load Image**: your photo of the subject (one is enough; it is scaled to ~1 megapixel).
2. **prompt**: `a photo of sks <class>`, e.g. *a photo of sks dog*.
3. Queue. T-LoRA Train runs 800 steps (the paper's recipe) and writes
   `models/loras/tlora/sks_dog_00001_.safetensors` (checkpoints every 200 steps; Cancel keeps one;
   `resume_from` continues it). Its MODEL output samples the three new prompts below.

T-LoRA Train is deterministic: the same seed and inputs give the same adapter. Queued again
right away, ComfyUI reuses the result; after other workflows it may have dropped it and trains
again (into a new file). To sample a trained file without training, use load_and_compare.
Out of memory? Set `training_dtype` to bf16.

**Model files**
- `models/checkpoints/{SDXL}` (SDXL base 1.0)
"""

TRAIN_SDXL = dict(
    steps=800, learning_rate=1e-4, rank=64, min_rank=32, schedule_power=1.0, variant="T-LoRA", init="last",
    batch_size=1, seed=0, save_every=200, filename_prefix="tlora/sks_dog",
    resume_from="none", training_dtype="fp32", gradient_checkpointing=True,
    # the node's values, as this workflow was made with
    recipe="custom", expert="none",
)
PROMPTS_A = (
    "a photo of sks dog on a beach at sunset",
    "an oil painting of sks dog wearing a red hat",
    "a photo of sks dog sleeping in a snowy forest",
)


def train_from_one_image():
    nodes = [
        node("note", "MarkdownNote", [20, 20], {"text": NOTE_A}, title="Read me", size=[440, 430]),
        node("ckpt", "CheckpointLoaderSimple", [20, 490], {"ckpt_name": SDXL}, size=[440, 100], models=models_of(SDXL)),
        node("image", "LoadImage", [20, 630], {"image": "sks_dog.png"}, title="Load Image (your subject)", size=[440, 420]),
        node("scale", "ImageScaleToTotalPixels", [500, 630], {"upscale_method": "lanczos", "megapixels": 1.0}, size=[320, 90]),
        node("encode", "VAEEncode", [500, 760], size=[320, 50]),
        node("prompt", "CLIPTextEncode", [500, 490], {"text": "a photo of sks dog"}, title="prompt (training)", size=[320, 100], color="green"),
        node("train", "TLoRA_Train", [860, 490], TRAIN_SDXL, size=[360, None]),
        node("loss", "LossGraphNode", [860, 1400], {"filename_prefix": "tlora_sks_dog_loss"}, size=[360, 60]),
        node("negative", "CLIPTextEncode", [1260, 1090], {"text": NEGATIVE}, title="negative", size=[380, 90], color="red"),
        node("latent", "EmptyLatentImage", [1260, 1220], {"width": 1024, "height": 1024, "batch_size": 1}, size=[380, 110]),
    ]
    links = [
        ("ckpt", 1, "prompt", "clip"), ("ckpt", 1, "negative", "clip"),
        ("image", 0, "scale", "image"), ("scale", 0, "encode", "pixels"), ("ckpt", 2, "encode", "vae"),
        ("ckpt", 0, "train", "model"), ("encode", 0, "train", "latents"), ("prompt", 0, "train", "positive"),
        ("train", 2, "loss", "loss"),
    ]
    for i, text in enumerate(PROMPTS_A):
        y = 40 + i * 340
        nodes += [
            node(f"p{i}", "CLIPTextEncode", [1260, y], {"text": text}, title=f"new prompt {i + 1}", size=[380, 110], color="green"),
            node(f"s{i}", "KSampler", [1680, y], SAMPLER_SDXL, size=[300, 262]),
            node(f"d{i}", "VAEDecode", [2020, y], size=[200, 50]),
            node(f"i{i}", "SaveImage", [2260, y], {"filename_prefix": f"tlora/sks_dog_prompt{i + 1}"}, size=[300, 310]),
        ]
        links += [
            ("ckpt", 1, f"p{i}", "clip"), ("train", 0, f"s{i}", "model"), (f"p{i}", 0, f"s{i}", "positive"),
            ("negative", 0, f"s{i}", "negative"), ("latent", 0, f"s{i}", "latent_image"),
            (f"s{i}", 0, f"d{i}", "samples"), ("ckpt", 2, f"d{i}", "vae"), (f"d{i}", 0, f"i{i}", "images"),
        ]
    groups = [
        ("1 · Train a T-LoRA on one image", [480, 400, 760, 960], "#3f789e"),
        ("2 · Sample new prompts with the trained MODEL", [1240, -30, 1340, 1380], "#8A8"),
    ]
    return nodes, links, groups


# -- (b) load a T-LoRA and compare with / without the schedule ---------------------------------------------
NOTE_B = f"""## T-LoRA: load and compare (SDXL)

Both columns use the same file, prompt and seed.

- **left, schedule on**: T-LoRA Load with `min_rank = 0` takes the file's schedule: few rank
  components at high noise (layout and pose stay free), all of them at low noise (the concept's details).
- **right, schedule off**: `min_rank = rank` (64 here) keeps every component at every step:
  plain LoRA behaviour. Set it to your adapter's rank.

**Model files**
- `models/checkpoints/{SDXL}`
- `models/loras/{LORA_FROM_A}` (written by *train_from_one_image*)
"""
PROMPT_B = "an oil painting of sks dog wearing a red hat"


def load_and_compare():
    nodes = [
        node("note", "MarkdownNote", [20, 20], {"text": NOTE_B}, title="Read me", size=[440, 380]),
        node("ckpt", "CheckpointLoaderSimple", [20, 440], {"ckpt_name": SDXL}, size=[440, 100], models=models_of(SDXL)),
        node("prompt", "CLIPTextEncode", [20, 580], {"text": PROMPT_B}, title="prompt", size=[440, 120], color="green"),
        node("negative", "CLIPTextEncode", [20, 740], {"text": NEGATIVE}, title="negative", size=[440, 90], color="red"),
        node("latent", "EmptyLatentImage", [20, 870], {"width": 1024, "height": 1024, "batch_size": 1}, size=[440, 110]),
    ]
    links = [("ckpt", 1, "prompt", "clip"), ("ckpt", 1, "negative", "clip")]
    columns = (
        ("on", "schedule on", "T-LoRA", 0, 500),
        ("off", "schedule off", "plain LoRA behaviour", 64, 1240),
    )
    for key, label, result, min_rank, x in columns:
        nodes += [
            node(f"load_{key}", "TLoRA_Load", [x, 40], {"lora_name": LORA_FROM_A, "min_rank": min_rank, "schedule_power": 0.0},
                 title=f"T-LoRA Load · {label}", size=[340, 110]),
            node(f"apply_{key}", "TLoRA_Apply", [x, 200], {"strength_model": 1.0}, title=f"Timestep-Aware Apply · {label}", size=[340, None]),
            node(f"sample_{key}", "KSampler", [x + 370, 40], SAMPLER_SDXL, size=[300, 262]),
            node(f"decode_{key}", "VAEDecode", [x + 370, 340], size=[300, 50]),
            node(f"save_{key}", "SaveImage", [x + 20, 460], {"filename_prefix": f"tlora/compare_schedule_{key}"},
                 title=f"{label}: {result}", size=[650, 660]),
        ]
        links += [
            ("ckpt", 0, f"apply_{key}", "model"), (f"load_{key}", 0, f"apply_{key}", "tlora"),
            (f"apply_{key}", 0, f"sample_{key}", "model"), ("prompt", 0, f"sample_{key}", "positive"),
            ("negative", 0, f"sample_{key}", "negative"), ("latent", 0, f"sample_{key}", "latent_image"),
            (f"sample_{key}", 0, f"decode_{key}", "samples"), ("ckpt", 2, f"decode_{key}", "vae"),
            (f"decode_{key}", 0, f"save_{key}", "images"),
        ]
    groups = [
        ("T-LoRA: rank follows the noise level", [480, -40, 720, 1180], "#3f789e"),
        ("plain LoRA: every rank component at every step", [1220, -40, 720, 1180], "#a1309b"),
    ]
    return nodes, links, groups


# -- (c) FLUX.1: train and sample ------------------------------------------------------------------------
NOTE_C = """## T-LoRA on FLUX.1-dev: train from one image, then sample

The paper's FLUX setting: **Vanilla T-LoRA**, rank 32, min_rank 1 (the reference README),
guidance **1.0** while training (FluxGuidance on the training prompt), 500 steps. The paper
used the Prodigy optimiser; T-LoRA Train uses AdamW (learning_rate 1e-4).
Sampling uses the usual FLUX-dev guidance 3.5 with cfg 1.0.
training_dtype bf16 (FLUX in fp32 needs ~48 GB for the weights alone).

Writes `models/loras/tlora/sks_dog_flux_00001_.safetensors`.

**Model files**
- `models/diffusion_models/flux1-dev.safetensors`
- `models/text_encoders/clip_l.safetensors`, `models/text_encoders/t5xxl_fp16.safetensors`
- `models/vae/ae.safetensors`
"""
TRAIN_FLUX = dict(
    steps=500, learning_rate=1e-4, rank=32, min_rank=1, schedule_power=1.0, variant="Vanilla T-LoRA", init="last",
    batch_size=1, seed=0, save_every=100, filename_prefix="tlora/sks_dog_flux",
    resume_from="none", training_dtype="bf16", gradient_checkpointing=True,
    # the node's values, as this workflow was made with (family reference would switch FLUX to Prodigy)
    recipe="custom", expert="none",
)
PROMPTS_C = ("a photo of sks dog on a beach at sunset", "an oil painting of sks dog wearing a red hat")


def flux_train_and_sample():
    nodes = [
        node("note", "MarkdownNote", [20, 20], {"text": NOTE_C}, title="Read me", size=[440, 430]),
        node("unet", "UNETLoader", [20, 490], {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}, size=[440, 90],
             models=models_of("flux1-dev.safetensors")),
        node("clip", "DualCLIPLoader", [20, 620], {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux", "device": "default"},
             size=[440, 130], models=models_of("clip_l.safetensors", "t5xxl_fp16.safetensors")),
        node("vae", "VAELoader", [20, 790], {"vae_name": "ae.safetensors"}, size=[440, 60], models=models_of("ae.safetensors")),
        node("image", "LoadImage", [20, 890], {"image": "sks_dog.png"}, title="Load Image (your subject)", size=[440, 420]),
        node("scale", "ImageScaleToTotalPixels", [500, 890], {"upscale_method": "lanczos", "megapixels": 1.0}, size=[320, 90]),
        node("encode", "VAEEncode", [500, 1020], size=[320, 50]),
        node("prompt", "CLIPTextEncode", [500, 490], {"text": "a photo of sks dog"}, title="prompt (training)", size=[320, 100], color="green"),
        node("guidance_train", "FluxGuidance", [500, 640], {"guidance": 1.0}, title="FluxGuidance 1.0 (training)", size=[320, 60]),
        node("train", "TLoRA_Train", [860, 490], TRAIN_FLUX, size=[360, None]),
        node("loss", "LossGraphNode", [860, 1400], {"filename_prefix": "tlora_sks_dog_flux_loss"}, size=[360, 60]),
        node("latent", "EmptySD3LatentImage", [1260, 760], {"width": 1024, "height": 1024, "batch_size": 1}, size=[380, 110]),
    ]
    links = [
        ("clip", 0, "prompt", "clip"), ("prompt", 0, "guidance_train", "conditioning"),
        ("image", 0, "scale", "image"), ("scale", 0, "encode", "pixels"), ("vae", 0, "encode", "vae"),
        ("unet", 0, "train", "model"), ("encode", 0, "train", "latents"), ("guidance_train", 0, "train", "positive"),
        ("train", 2, "loss", "loss"),
    ]
    for i, text in enumerate(PROMPTS_C):
        y = 40 + i * 360
        nodes += [
            node(f"p{i}", "CLIPTextEncode", [1260, y], {"text": text}, title=f"new prompt {i + 1}", size=[380, 110], color="green"),
            node(f"g{i}", "FluxGuidance", [1260, y + 160], {"guidance": 3.5}, size=[380, 60]),
            node(f"n{i}", "ConditioningZeroOut", [1260, y + 260], title="negative (unused at cfg 1)", size=[380, 30]),
            node(f"s{i}", "KSampler", [1680, y], SAMPLER_FLUX, size=[300, 262]),
            node(f"d{i}", "VAEDecode", [2020, y], size=[200, 50]),
            node(f"i{i}", "SaveImage", [2260, y], {"filename_prefix": f"tlora/sks_dog_flux_prompt{i + 1}"}, size=[300, 330]),
        ]
        links += [
            ("clip", 0, f"p{i}", "clip"), (f"p{i}", 0, f"g{i}", "conditioning"), (f"p{i}", 0, f"n{i}", "conditioning"),
            ("train", 0, f"s{i}", "model"), (f"g{i}", 0, f"s{i}", "positive"), (f"n{i}", 0, f"s{i}", "negative"),
            ("latent", 0, f"s{i}", "latent_image"), (f"s{i}", 0, f"d{i}", "samples"), ("vae", 0, f"d{i}", "vae"),
            (f"d{i}", 0, f"i{i}", "images"),
        ]
    groups = [
        ("1 · Train a Vanilla T-LoRA on FLUX.1-dev", [480, 400, 760, 960], "#3f789e"),
        ("2 · Sample new prompts with the trained MODEL", [1240, -30, 1340, 940], "#8A8"),
    ]
    return nodes, links, groups


# -- (d) Wan 2.1 T2V 1.3B: train on one image, sample a clip ------------------------------------------------
NOTE_D = f"""## T-LoRA on Wan 2.1 (text-to-video 1.3B): a subject from one image, then a clip

1. **Load Image**: your photo of the subject. It is scaled to ~0.4 megapixels (the 1.3B model
   works at 480p) and VAE-encoded into a one-frame video latent: one image is enough.
2. **prompt (training)**: `a photo of sks <class>`.
3. Queue. T-LoRA Train uses Wan's *family reference* recipe (the reference's transformer recipe:
   **Vanilla T-LoRA**, rank 32, min_rank 1, Prodigy with learning rate 1.0, gradient clipping 1),
   500 steps, and writes `models/loras/tlora/sks_dog_wan_00001_.safetensors`.
4. **Timestep-Aware Apply** puts the trained T-LoRA on the model (after ModelSamplingSD3 shift 8,
   as ComfyUI's Wan templates sample): few rank components at high noise (layout and motion stay
   free), all of them at low noise (the subject's details). KSampler (30 steps, uni_pc, cfg 6)
   makes a 33-frame 832x480 clip, about 2 s at 16 fps, saved as an animated WEBP.

The T-LoRA learns how the subject looks, not how it moves: the motion comes from the prompt.
Longer clips: `length` 4k + 1 frames (81 = 5 s). T-LoRA Train is deterministic: queued again
right away, ComfyUI reuses the result. Out of memory? Set `training_dtype` to bf16.

**Model files**
- `models/diffusion_models/{WAN}`
- `models/text_encoders/{UMT5}` (CLIPLoader type `wan`)
- `models/vae/{WAN_VAE}`
"""
TRAIN_WAN = dict(
    steps=500, learning_rate=1.0, rank=32, min_rank=1, schedule_power=1.0, variant="Vanilla T-LoRA", init="last",
    batch_size=1, seed=0, save_every=100, filename_prefix="tlora/sks_dog_wan",
    resume_from="none", training_dtype="fp32", gradient_checkpointing=True,
    # the family reference recipe (the node's default), with the node's own values set to the same
    recipe="family reference", optimizer="Prodigy", expert="none",
)
SAMPLER_WAN = dict(seed=42, control_after_generate="fixed", steps=30, cfg=6.0, sampler_name="uni_pc", scheduler="simple", denoise=1.0)
PROMPT_D = "a video of sks dog running on a beach at sunset, tracking camera"
NEGATIVE_VIDEO = "static, blurry, low quality, deformed, watermark, subtitles"


def wan_train_and_sample():
    nodes = [
        node("note", "MarkdownNote", [20, 20], {"text": NOTE_D}, title="Read me", size=[440, 480]),
        node("unet", "UNETLoader", [20, 540], {"unet_name": WAN, "weight_dtype": "default"}, size=[440, 90], models=models_of(WAN)),
        node("clip", "CLIPLoader", [20, 670], {"clip_name": UMT5, "type": "wan", "device": "default"}, size=[440, 110],
             models=models_of(UMT5)),
        node("vae", "VAELoader", [20, 820], {"vae_name": WAN_VAE}, size=[440, 60], models=models_of(WAN_VAE)),
        node("image", "LoadImage", [20, 920], {"image": "sks_dog.png"}, title="Load Image (your subject)", size=[440, 420]),
        node("shift", "ModelSamplingSD3", [500, 540], {"shift": 8.0}, size=[320, 60]),
        node("prompt", "CLIPTextEncode", [500, 640], {"text": "a photo of sks dog"}, title="prompt (training)", size=[320, 100], color="green"),
        node("scale", "ImageScaleToTotalPixels", [500, 920], {"upscale_method": "lanczos", "megapixels": 0.4}, size=[320, 90]),
        node("encode", "VAEEncode", [500, 1050], size=[320, 50]),
        node("train", "TLoRA_Train", [860, 540], TRAIN_WAN, size=[360, None]),
        node("loss", "LossGraphNode", [860, 1450], {"filename_prefix": "tlora_sks_dog_wan_loss"}, size=[360, 60]),
        node("apply", "TLoRA_Apply", [1260, 40], {"strength_model": 1.0}, size=[380, None]),
        node("clip_prompt", "CLIPTextEncode", [1260, 300], {"text": PROMPT_D}, title="clip prompt", size=[380, 110], color="green"),
        node("negative", "CLIPTextEncode", [1260, 450], {"text": NEGATIVE_VIDEO}, title="negative", size=[380, 90], color="red"),
        node("latent", "EmptyHunyuanLatentVideo", [1260, 580], {"width": 832, "height": 480, "length": 33, "batch_size": 1},
             title="Empty video latent (Wan 2.1)", size=[380, 130]),
        node("sampler", "KSampler", [1680, 40], SAMPLER_WAN, size=[300, 262]),
        node("decode", "VAEDecode", [1680, 340], size=[300, 50]),
        node("save", "SaveAnimatedWEBP", [2020, 40], {"filename_prefix": "tlora/sks_dog_wan_clip", "fps": 16.0, "lossless": False,
                                                     "quality": 90, "method": "default"}, size=[480, 520]),
    ]
    links = [
        ("unet", 0, "shift", "model"), ("clip", 0, "prompt", "clip"),
        ("image", 0, "scale", "image"), ("scale", 0, "encode", "pixels"), ("vae", 0, "encode", "vae"),
        ("shift", 0, "train", "model"), ("encode", 0, "train", "latents"), ("prompt", 0, "train", "positive"),
        ("train", 2, "loss", "loss"),
        ("shift", 0, "apply", "model"), ("train", 1, "apply", "tlora"),
        ("clip", 0, "clip_prompt", "clip"), ("clip", 0, "negative", "clip"),
        ("apply", 0, "sampler", "model"), ("clip_prompt", 0, "sampler", "positive"), ("negative", 0, "sampler", "negative"),
        ("latent", 0, "sampler", "latent_image"), ("sampler", 0, "decode", "samples"), ("vae", 0, "decode", "vae"),
        ("decode", 0, "save", "images"),
    ]
    groups = [
        ("1 · Train a T-LoRA on one image (a one-frame video)", [480, 450, 760, 1090], "#3f789e"),
        ("2 · Sample a clip with Timestep-Aware Apply", [1240, -30, 1280, 770], "#8A8"),
    ]
    return nodes, links, groups


SPECS = {
    "train_from_one_image": train_from_one_image,
    "load_and_compare": load_and_compare,
    "flux_train_and_sample": flux_train_and_sample,
    "wan_train_and_sample": wan_train_and_sample,
}

BUILD_JS = """
async (spec) => {
  const app = window.app;
  await app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {}, extra: {}, version: 0.4});
  const graph = app.graph;
  const made = {};
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`unknown node type ${n.type}`);
    node.pos = n.pos;
    if (n.title) node.title = n.title;
    if (n.color) { node.color = LGraphCanvas.node_colors[n.color].color; node.bgcolor = LGraphCanvas.node_colors[n.color].bgcolor; }
    graph.add(node);
    for (const [name, value] of Object.entries(n.widgets)) {
      const widget = node.widgets?.find((w) => w.name === name);
      if (!widget) throw new Error(`${n.type} has no widget ${name}: ${node.widgets?.map((w) => w.name)}`);
      widget.value = value;
    }
    if (n.models.length) node.properties.models = n.models;
    const size = node.computeSize();
    node.setSize([n.size?.[0] ?? size[0], n.size?.[1] ?? size[1]]);
    made[n.key] = node;
  }
  for (const [from, slot, to, input] of spec.links) {
    const target = made[to];
    const index = target.inputs.findIndex((i) => i.name === input);
    if (index < 0) throw new Error(`${target.type} has no input ${input}`);
    if (!made[from].connect(slot, target, index)) throw new Error(`could not link ${from}:${slot} -> ${to}.${input}`);
  }
  for (const [title, bounding, color] of spec.groups) {
    const group = new LiteGraph.LGraphGroup(title);
    group.color = color;
    group.pos = [bounding[0], bounding[1]];
    group.size = [bounding[2], bounding[3]];
    graph.add(group);
  }
  const { workflow, output } = await app.graphToPrompt();
  delete workflow.extra.ds;  // open fitted to the window
  return JSON.stringify({ workflow, output });  // as the frontend saves it: undefined fields dropped
}
"""


def build(ui, name: str) -> tuple[dict, dict]:
    nodes, links, groups = SPECS[name]()
    result = json.loads(ui.page.evaluate(BUILD_JS, {"nodes": nodes, "links": links, "groups": groups}))
    result["workflow"]["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"tlora-nodes/workflows/{name}"))  # stable across builds
    return result["workflow"], result["output"]


def api_twin(output: dict) -> dict:
    """The API prompt as committed: ``_meta`` titles kept (ComfyUI ignores them), keys sorted."""
    return {k: output[k] for k in sorted(output, key=int)}


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def main() -> int:
    from tests.comfyui_env import find_comfyui, prepare_in_process

    from .browser import Frontend, missing_browser
    from .conftest import start_server, write_model_files

    comfyui, why = find_comfyui()
    if comfyui is None or missing_browser():
        print(f"can't build: {why if comfyui is None else missing_browser()}", file=sys.stderr)
        return 2
    prepare_in_process(comfyui)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = start_server(tmp / "base", write_model_files(tmp / "models"))
        try:
            with Frontend.open(server) as ui:
                for name in SPECS:
                    workflow, output = build(ui, name)
                    write(WORKFLOWS / f"{name}.json", workflow)
                    write(WORKFLOWS / "api" / f"{name}.json", api_twin(output))
                    print(f"wrote workflows/{name}.json and workflows/api/{name}.json ({len(output)} nodes)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
