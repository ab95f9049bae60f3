"""Tiny SD1.5 / SD2 / SDXL / FLUX models built in-process with ComfyUI's own classes.

Random weights (ComfyUI's ops skip init, so every parameter is filled here), real model
sampling, real ModelPatcher: the sigma path through the samplers is the real one.
Only imported by tests that run against a ComfyUI checkout.
"""

from __future__ import annotations

import torch

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.supported_models

CPU = torch.device("cpu")

SD15_CONFIG = dict(
    model_channels=320,
    channel_mult=[1],
    num_res_blocks=[1],
    transformer_depth=[1],
    transformer_depth_output=[1, 1],
    transformer_depth_middle=1,
    context_dim=768,
    use_linear_in_transformer=False,
    adm_in_channels=None,
    use_temporal_attention=False,
    use_temporal_resblock=False,
    in_channels=4,
    out_channels=4,
    image_size=32,
    use_checkpoint=False,
    use_spatial_transformer=True,
    legacy=False,
    num_heads=8,
    num_head_channels=-1,
)
SD2_CONFIG = dict(SD15_CONFIG, context_dim=1024, use_linear_in_transformer=True, num_heads=-1, num_head_channels=64)
SDXL_CONFIG = dict(
    SD15_CONFIG,
    model_channels=64,
    channel_mult=[1, 2],
    num_res_blocks=[1, 1],
    transformer_depth=[0, 1],
    transformer_depth_output=[0, 0, 1, 1],
    transformer_depth_middle=1,
    context_dim=2048,
    adm_in_channels=2816,
    num_classes="sequential",
    use_linear_in_transformer=True,
    num_heads=-1,
    num_head_channels=32,
)
FLUX_CONFIG = dict(
    image_model="flux",
    in_channels=16,
    out_channels=16,
    vec_in_dim=32,
    context_in_dim=64,
    hidden_size=64,
    mlp_ratio=4.0,
    num_heads=2,
    depth=1,
    depth_single_blocks=1,
    axes_dim=[8, 12, 12],
    theta=10000,
    patch_size=2,
    qkv_bias=True,
    guidance_embed=True,
)


def _flux_config() -> dict:
    """FLUX_CONFIG as this ComfyUI's FluxParams takes it: 0.33 added ``txt_ids_dims`` (the text
    position ids' axes; none for FLUX.1), which 0.3.64 does not know."""
    import comfy.ldm.flux.model

    fields = getattr(comfy.ldm.flux.model.FluxParams, "__dataclass_fields__", {})
    return dict(FLUX_CONFIG, txt_ids_dims=[]) if "txt_ids_dims" in fields else dict(FLUX_CONFIG)


def _fill(model: torch.nn.Module, seed: int) -> None:
    """Fan-in scaled random weights (a well-conditioned random network), unit norm scales, zero
    biases: outputs of order one, and gradients that reach every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:  # 1-D weights are norm scales
                p.fill_(1.0)


def build(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32, model_type=None) -> comfy.model_patcher.ModelPatcher:
    """kind: "sd15", "sd2", "sdxl" or "flux"."""
    config_class, unet_config = {
        "sd15": (comfy.supported_models.SD15, SD15_CONFIG),
        "sd2": (comfy.supported_models.SD20, SD2_CONFIG),
        "sdxl": (comfy.supported_models.SDXL, SDXL_CONFIG),
        "flux": (comfy.supported_models.Flux, _flux_config()),
    }[kind]
    model_config = config_class(dict(unet_config, dtype=dtype))
    model_config.set_inference_dtype(dtype, None)
    if model_type is not None:
        model = comfy.model_base.Flux(model_config, model_type=model_type) if kind == "flux" else comfy.model_base.BaseModel(model_config, model_type=model_type)
        if kind == "sdxl":
            model = comfy.model_base.SDXL(model_config, model_type=model_type)
    else:
        model = model_config.get_model({})
    _fill(model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def build_scaled_fp8(kind: str = "sd15", seed: int = 0, scale: float = 0.5):
    """A scaled-fp8 checkpoint loaded the way a user's is: every Linear weight stored as float8
    with a per-layer ``scale_weight`` (and the ``scaled_fp8`` marker), read by ComfyUI's own
    ``load_diffusion_model_state_dict`` — which 0.3.64 keeps as scaled-fp8 layers and 0.33 turns
    into its quantized mixed-precision layers. Returns (that model, its exact float32 twin with
    every quantized weight dequantised)."""
    import comfy.sd

    twin = build(kind, seed)
    net = twin.model.diffusion_model
    linears = {name for name, module in net.named_modules() if isinstance(module, torch.nn.Linear)}
    state = {}
    with torch.no_grad():
        for key, value in net.state_dict().items():
            module, _, leaf = key.rpartition(".")
            if leaf == "weight" and module in linears:
                stored = (value / scale).to(torch.float8_e4m3fn)
                state[key] = stored
                state[f"{module}.scale_weight"] = torch.tensor(scale)
                value.copy_(stored.float() * scale)  # the twin computes with what is stored
            else:
                state[key] = value.clone()
    state["scaled_fp8"] = torch.tensor([], dtype=torch.float8_e4m3fn)
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={})
    if model is None:
        raise RuntimeError("ComfyUI did not detect the tiny scaled-fp8 UNet")
    return model, twin


LATENT = {"sd15": (4, 8, 8), "sd2": (4, 8, 8), "sdxl": (4, 8, 8), "flux": (16, 8, 8)}


def conditioning(kind: str, seed: int = 0, batch: int = 1, tokens: int = 6):
    """A positive and a negative CONDITIONING for the model kind (random embeddings)."""
    g = torch.Generator().manual_seed(1000 + seed)
    width = {"sd15": 768, "sd2": 1024, "sdxl": 2048, "flux": 64}[kind]

    def one(scale: float):
        context = torch.randn(batch, tokens, width, generator=g) * scale
        extra: dict = {}
        if kind == "sdxl":
            extra = {"pooled_output": torch.randn(batch, 1280, generator=g) * scale, "width": 64, "height": 64}
        if kind == "flux":
            extra = {"pooled_output": torch.randn(batch, 32, generator=g) * scale, "guidance": 3.5}
        return [[context, extra]]

    return one(1.0), one(0.5)


def noise(kind: str, seed: int = 0, batch: int = 1) -> torch.Tensor:
    c, h, w = LATENT[kind]
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))


def sample(model, kind: str, sampler="euler", scheduler="normal", steps=4, cfg=3.0, seed=0, batch=1, positive=None, negative=None, callback=None):
    pos, neg = conditioning(kind, batch=batch)
    latent = torch.zeros(batch, *LATENT[kind])
    return comfy.sample.sample(
        model,
        noise(kind, seed, batch),
        steps,
        cfg,
        sampler,
        scheduler,
        positive if positive is not None else pos,
        negative if negative is not None else neg,
        latent,
        seed=seed,
        disable_pbar=True,
        callback=callback,
    )
