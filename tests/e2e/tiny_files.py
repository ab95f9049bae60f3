"""Tiny random model *files* that a real ComfyUI server detects and loads by itself.

- A UNet file for ``UNETLoader``: SD2-style (COMFYUI.md §7: at tiny size only SD1.5/SD2-style
  UNets are detected; ``model_channels=320`` and one transformer block are the minimum), built
  with ComfyUI's own classes from tests/nodes/tiny.py and filled with random weights. ComfyUI
  detects it as SD2 (ε-prediction); the core ``LotusConditioning`` node gives it a [1, 77, 1024]
  conditioning, so no text encoder is needed.
- A VAE file for ``VAELoader``: a TAESD (ComfyUI detects ``taesd_encoder.*``/``taesd_decoder.*``
  keys), random weights, ~2.4M parameters; encodes images to 4-channel latents and back.
- Wan 2.1 T2V files for ``UNETLoader`` and ``VAELoader`` (ComfyUI 0.33; 0.3.64 builds both at
  fixed full sizes): a one-block WanModel with the smallest width detection accepts (one
  128-wide head) and a text width of 1024 stated in the file's metadata (0.33 reads a diffusion
  model's config from there), so ``LotusConditioning`` serves as its prompt; and a Wan 2.1 VAE
  of width 16 (0.33 reads the width from the weights).
- A PNG for ``LoadImage``.

Only imported by tests that found a ComfyUI checkout (the conftest puts ComfyUI on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_tiny_unet(path: Path, seed: int = 0) -> Path:
    """~26M parameters, stored fp16 (~50 MB)."""
    from tests.nodes import tiny

    model = tiny.build("sd2", seed=seed)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.model.diffusion_model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_tiny_taesd(path: Path, latent_channels: int = 4, seed: int = 0) -> Path:
    import comfy.taesd.taesd

    model = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    _randomise(model, seed, keep=lambda name: name in ("vae_scale", "vae_shift"))
    return _save(model, path)


def _randomise(model: torch.nn.Module, seed: int, keep=lambda name: False, ones=lambda name: False) -> None:
    """Every parameter set from ``seed`` (ComfyUI's layers skip initialisation): matrices and
    kernels scaled by their fan-in, vectors small; ``keep`` left as built, ``ones`` set to one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if keep(name):
                continue
            if ones(name):
                p.fill_(1.0)
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _save(model: torch.nn.Module, path: Path) -> Path:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


# LotusConditioning's width: the tiny Wan's prompt needs no text encoder
WAN_TEXT_WIDTH = 1024


def write_tiny_wan(path: Path, seed: int = 0) -> Path:
    """~0.5M parameters, float32. ComfyUI detects the head count as width // 128 and the text width
    only from the metadata's config."""
    from tests.nodes import tiny

    model = tiny.build("wan21", seed=seed, changes=dict(dim=128, num_heads=1, ffn_dim=256, text_dim=WAN_TEXT_WIDTH))
    state = {k: v.detach().contiguous() for k, v in model.model.diffusion_model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"config": json.dumps({"transformer": {"text_dim": WAN_TEXT_WIDTH}})})
    return path


def write_tiny_wan_vae(path: Path, width: int = 16, seed: int = 0) -> Path:
    """A Wan 2.1 VAE (16 latent channels, 8x spatial and 4x temporal compression) of the given
    width, ~3.6M parameters at 16. ComfyUI's layers skip initialisation: every weight is set here,
    the RMS norms' scales to one."""
    import comfy.ldm.wan.vae

    model = comfy.ldm.wan.vae.WanVAE(dim=width, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                     temperal_downsample=[False, True, True])
    _randomise(model, seed, ones=lambda name: name.endswith("gamma"))  # RMS norms' scales
    return _save(model, path)


def write_png(path: Path, size: int = 64, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([x * 255 // size, y * 255 // size, rng.integers(0, 256, (size, size))], -1).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
