"""Tiny models of every family the pack supports, built in-process with ComfyUI's own classes.

Random weights (ComfyUI's ops skip init, so every parameter is filled here), real model
sampling, real ModelPatcher: the sigma path through the samplers is the real one. The configs
were checked to build and sample on ComfyUI 0.33 and, where the class exists, 0.3.64 (whose
model classes don't know a few newer config keys: ``build`` drops those).
Only imported by tests that run against a ComfyUI checkout.
"""

from __future__ import annotations

import re

import torch

import comfy.clip_vision
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
    txt_ids_dims=[],  # 0.33's FluxParams needs it (the text ids' axes: none for FLUX.1); 0.3.64's doesn't know it
)


# Families beyond SD and FLUX.1: (supported_models class, tiny unet_config, latent shape without batch)
FAMILIES = {
    "sd3": ("SD3", dict(
        in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=32,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}},
        num_patches=256, pos_embed_max_size=16, pos_embed_scaling_factor=None, qk_norm="rms", x_block_self_attn_layers=[0],
    ), (16, 8, 8)),
    "auraflow": ("AuraFlow", dict(cond_seq_dim=64, max_seq=64, n_double_layers=1, n_layers=2, dim=64, n_heads=2,
                                  global_conddim=64, patch_size=2, in_channels=4, out_channels=4), (4, 8, 8)),
    "flux2": ("Flux2", dict(
        image_model="flux2", axes_dim=[8, 8, 8, 8], mlp_ratio=3.0, theta=2000, out_channels=128, global_modulation=True,
        mlp_silu_act=True, qkv_bias=False, ops_bias=False, default_ref_method="index", ref_index_scale=10.0, txt_ids_dims=[3],
        patch_size=1, in_channels=128, vec_in_dim=None, yak_mlp=False, txt_norm=False, hidden_size=64, num_heads=2,
        context_in_dim=96, depth=1, depth_single_blocks=1, guidance_embed=True,
    ), (128, 4, 4)),
    "chroma": ("Chroma", dict(
        image_model="chroma", in_channels=64, out_channels=64, in_dim=64, hidden_dim=32, n_layers=1, mlp_ratio=4.0, theta=10000,
        patch_size=2, qkv_bias=True, txt_ids_dims=[], vec_in_dim=None, out_dim=64, context_in_dim=64, hidden_size=64, num_heads=2,
        depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
    ), (16, 8, 8)),
    "chroma_radiance": ("ChromaRadiance", dict(
        image_model="chroma_radiance", in_channels=3, out_channels=3, in_dim=64, hidden_dim=32, n_layers=1, mlp_ratio=4.0,
        theta=10000, patch_size=8, qkv_bias=True, txt_ids_dims=[], vec_in_dim=None, out_dim=64, context_in_dim=64, hidden_size=64,
        num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], nerf_hidden_size=16, nerf_mlp_ratio=2, nerf_depth=1,
        nerf_max_freqs=4, nerf_tile_size=0, nerf_final_head_type="linear", nerf_embedder_dtype=torch.float32, use_x0=False,
        use_sequential_txt_ids=False,
    ), (3, 32, 32)),
    "qwen_image": ("QwenImage", dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                     attention_head_dim=32, num_attention_heads=2, joint_attention_dim=96,
                                     axes_dims_rope=(8, 12, 12)), (16, 1, 8, 8)),
    # grouped-query attention on purpose (3 heads, 1 key/value head), as in the real Lumina 2
    "lumina2": ("Lumina2", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=96, cap_feat_dim=64, n_layers=2,
                                n_refiner_layers=1, qk_norm=True, n_heads=3, n_kv_heads=1, axes_dims=[8, 12, 12],
                                axes_lens=[300, 512, 512], rope_theta=10000.0, ffn_dim_multiplier=4.0, multiple_of=16), (16, 8, 8)),
    "z_image": ("ZImage", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, cap_feat_dim=48, n_layers=2,
                               n_refiner_layers=1, qk_norm=True, n_heads=8, n_kv_heads=8, axes_dims=[8, 12, 12],
                               axes_lens=[1536, 512, 512], rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, multiple_of=16,
                               z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32), (16, 8, 8)),
    "hidream": ("HiDream", dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=1,
                                num_single_layers=1, attention_head_dim=32, num_attention_heads=2, caption_channels=[48, 40],
                                text_emb_dim=24, num_routed_experts=4, num_activated_experts=2, axes_dims_rope=[16, 8, 8],
                                max_resolution=[16, 16], llama_layers=[0, 1]), (16, 8, 8)),
    "kandinsky5_image": ("Kandinsky5Image", dict(image_model="kandinsky5", model_dim=64, axes_dims=(8, 12, 12),
                                                 rope_scale_factor=(1.0, 1.0, 1.0), time_dim=32, ff_dim=128,
                                                 visual_embed_dim=64, num_text_blocks=1, num_visual_blocks=1,
                                                 in_text_dim=64, in_text_dim2=32), (16, 8, 8)),
}
_WAN = dict(image_model="wan2.1", patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True,
            eps=1e-6, text_dim=64, model_type="t2v", dim=64, ffn_dim=128, num_heads=2, num_layers=1, in_dim=16, out_dim=16)
VIDEO_FAMILIES = {  # latent (C, T, H, W) with T = 3 latent frames
    "wan21": ("WAN21_T2V", _WAN, (16, 3, 8, 8)),
    "wan21_i2v": ("WAN21_I2V", dict(_WAN, model_type="i2v", in_dim=36), (16, 3, 8, 8)),
    "wan22_5b": ("WAN22_T2V", dict(_WAN, in_dim=48, out_dim=48), (48, 3, 8, 8)),
    "hunyuan_video15": ("HunyuanVideo15", dict(
        image_model="hunyuan_video", in_channels=65, out_channels=32, patch_size=[1, 1, 1], vec_in_dim=None, axes_dim=[8, 12, 12],
        meanflow=False, context_in_dim=64, hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, theta=256,
        qkv_bias=True, byt5=True, guidance_embed=False, use_cond_type_embedding=True, vision_in_dim=32, meanflow_sum=False,
    ), (32, 3, 8, 8)),
    "ltxv": ("LTXV", dict(image_model="ltxv", num_layers=1, attention_head_dim=32, num_attention_heads=2, cross_attention_dim=64,
                          caption_channels=48, in_channels=128), (128, 3, 4, 4)),
}
ALL_FAMILIES = {**FAMILIES, **VIDEO_FAMILIES}
BASE = {"sd15": ("SD15", SD15_CONFIG), "sd2": ("SD20", SD2_CONFIG), "sdxl": ("SDXL", SDXL_CONFIG), "flux": ("Flux", FLUX_CONFIG)}
# the shift node users put in front of each flow family (its node id, its inputs), from ComfyUI's templates
SHIFT = {
    "flux": ("ModelSamplingFlux", dict(max_shift=1.15, base_shift=0.5, width=64, height=64)),
    "sd3": ("ModelSamplingSD3", dict(shift=3.0)),
    "auraflow": ("ModelSamplingAuraFlow", dict(shift=1.73)),
    "flux2": ("ModelSamplingFlux", dict(max_shift=1.15, base_shift=0.5, width=64, height=64)),
    "chroma": ("ModelSamplingAuraFlow", dict(shift=1.0)),
    "chroma_radiance": ("ModelSamplingAuraFlow", dict(shift=1.0)),
    "qwen_image": ("ModelSamplingAuraFlow", dict(shift=3.1)),
    "lumina2": ("ModelSamplingAuraFlow", dict(shift=6.0)),
    "z_image": ("ModelSamplingAuraFlow", dict(shift=3.0)),
    "hidream": ("ModelSamplingSD3", dict(shift=3.0)),
    "kandinsky5_image": ("ModelSamplingSD3", dict(shift=3.0)),
    "wan21": ("ModelSamplingSD3", dict(shift=8.0)),
    "wan21_i2v": ("ModelSamplingSD3", dict(shift=8.0)),
    "wan22_5b": ("ModelSamplingSD3", dict(shift=8.0)),
    "hunyuan_video15": ("ModelSamplingSD3", dict(shift=7.0)),
    "ltxv": ("ModelSamplingFlux", dict(max_shift=2.05, base_shift=0.95, width=64, height=64)),
}


def available(kind: str) -> bool:
    """Does this ComfyUI have the family's model class?"""
    cls = (BASE.get(kind) or ALL_FAMILIES[kind])[0]
    return hasattr(comfy.supported_models, cls)


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
        for name, b in model.named_buffers():
            if name.endswith("pos_embed") and b.is_floating_point():  # SD3's: made with torch.empty
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)


def _config(kind: str, dtype: torch.dtype, changes: dict | None = None):
    """The family's supported_models config for its tiny unet_config (with ``changes``); a key
    this ComfyUI's model class doesn't know (a newer version's) is dropped."""
    class_name, unet_config = BASE.get(kind) or ALL_FAMILIES[kind][:2]
    config_class = getattr(comfy.supported_models, class_name)
    unet_config = dict(unet_config, **(changes or {}))
    while True:
        model_config = config_class(dict(unet_config, dtype=dtype))
        model_config.set_inference_dtype(dtype, None)
        try:
            model_config.get_model({}, device="meta")
            return model_config
        except TypeError as err:
            unknown = re.search(r"unexpected keyword argument '(\w+)'", str(err))
            if unknown is None or unknown.group(1) not in unet_config:
                raise
            del unet_config[unknown.group(1)]


def build(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32, model_type=None,
          changes: dict | None = None) -> comfy.model_patcher.ModelPatcher:
    """kind: "sd15", "sd2", "sdxl", "flux" or a key of ALL_FAMILIES; ``changes``: entries of its
    tiny unet_config to replace (e.g. the sizes ComfyUI's detection of a file needs)."""
    model_config = _config(kind, dtype, changes)
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


LATENT = {"sd15": (4, 8, 8), "sd2": (4, 8, 8), "sdxl": (4, 8, 8), "flux": (16, 8, 8),
          **{kind: spec[2] for kind, spec in ALL_FAMILIES.items()}}
# text context width of each family's tiny model
CONTEXT = {"sd15": 768, "sd2": 1024, "sdxl": 2048, "flux": 64, "sd3": 64, "auraflow": 64, "flux2": 96, "chroma": 64,
           "chroma_radiance": 64,
           "qwen_image": 96, "lumina2": 64, "z_image": 48, "hidream": 48, "kandinsky5_image": 64, "wan21": 64,
           "wan21_i2v": 64, "wan22_5b": 64, "hunyuan_video15": 64, "ltxv": 48}


def latent_shape(kind: str, frames: int | None = None) -> tuple[int, ...]:
    """The family's latent shape without batch; ``frames``: another number of latent frames (video)."""
    shape = LATENT[kind]
    return shape if frames is None else (shape[0], frames, *shape[2:])


def _extra(kind: str, g: torch.Generator, batch: int, tokens: int, scale: float, frames: int | None = None) -> dict:
    """What a family's conditioning carries beside the text context (what its text encoder and
    conditioning nodes add)."""
    def rnd(*shape):
        return torch.randn(*shape, generator=g) * scale

    ones = torch.ones(batch, tokens, dtype=torch.long)
    frames = frames or (LATENT[kind][1] if kind in VIDEO_FAMILIES else 1)
    if kind == "sdxl":
        return {"pooled_output": rnd(batch, 1280), "width": 64, "height": 64}
    if kind == "flux":
        return {"pooled_output": rnd(batch, 32), "guidance": 3.5}
    if kind in ("sd3", "kandinsky5_image"):
        return {"pooled_output": rnd(batch, 32)}
    if kind == "flux2":
        return {"guidance": 4.0}
    if kind in ("chroma", "chroma_radiance"):
        return {"pooled_output": None}  # 0.3.64's Chroma looks the key up
    if kind in ("qwen_image", "lumina2", "z_image"):
        return {"attention_mask": ones}
    if kind == "hidream":  # T5 as the context, Llama-3.1's layers and the CLIPs' pooled vector beside it
        return {"pooled_output": rnd(batch, 24), "conditioning_llama3": rnd(batch, 2, tokens, 40)}
    if kind == "wan21_i2v":  # what WanImageToVideo + CLIPVisionEncode give
        mask = torch.ones(batch, 1, frames, 8, 8)
        mask[:, :, :1] = 0.0
        vision = comfy.clip_vision.Output()
        vision["penultimate_hidden_states"] = rnd(batch, 257, 1280)
        return {"concat_latent_image": rnd(batch, 16, frames, 8, 8), "concat_mask": mask, "clip_vision_output": vision}
    if kind == "hunyuan_video15":  # t2v: no start image (zeros), glyph tokens, no attention mask
        vision = comfy.clip_vision.Output()
        vision["last_hidden_state"] = rnd(batch, 9, 32)
        return {"pooled_output": None, "conditioning_byt5small": rnd(batch, 4, 1472),
                "concat_latent_image": torch.zeros(batch, 32, frames, 8, 8), "concat_mask": torch.ones(batch, 1, frames, 8, 8),
                "clip_vision_output": vision}
    if kind == "ltxv":
        return {"attention_mask": ones, "frame_rate": 25}
    return {}


def conditioning(kind: str, seed: int = 0, batch: int = 1, tokens: int = 6, frames: int | None = None):
    """A positive and a negative CONDITIONING for the model kind (random embeddings); ``frames``:
    the latent frames a video family's start image is made for (default: LATENT's)."""
    g = torch.Generator().manual_seed(1000 + seed)
    width = CONTEXT[kind]

    def one(scale: float):
        context = torch.randn(batch, tokens, width, generator=g) * scale
        return [[context, _extra(kind, g, batch, tokens, scale, frames)]]

    return one(1.0), one(0.5)


def with_shift(model, kind: str):
    """The model with its family's shift node applied, as ComfyUI's workflows do."""
    import comfy_extras.nodes_model_advanced as advanced

    node, inputs = SHIFT[kind]
    patcher = getattr(advanced, node)()
    return (patcher.patch_aura(model, **inputs) if node == "ModelSamplingAuraFlow" else patcher.patch(model, **inputs))[0]


def noise(kind: str, seed: int = 0, batch: int = 1, frames: int | None = None) -> torch.Tensor:
    return torch.randn(batch, *latent_shape(kind, frames), generator=torch.Generator().manual_seed(seed))


def sample(model, kind: str, sampler="euler", scheduler="normal", steps=4, cfg=3.0, seed=0, batch=1, positive=None, negative=None,
           callback=None, frames=None, **kwargs):
    """``frames``: latent frames of a video family (default: LATENT's); ``kwargs`` go to
    comfy.sample.sample (start_step, last_step, ... as KSamplerAdvanced passes them)."""
    pos, neg = conditioning(kind, batch=batch, frames=frames)
    latent = torch.zeros(batch, *latent_shape(kind, frames))
    return comfy.sample.sample(
        model,
        noise(kind, seed, batch, frames),
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
        **kwargs,
    )


class StandInVAE:
    """Stands in for a video VAE where ComfyUI's image-to-video nodes (WanImageToVideo,
    Wan22ImageToVideoLatent, ...) encode their start image: they only call ``encode``. Frames
    (F, H, W, 3) -> (1, channels, (F - 1) // stride + 1, H / down, W / down), as a video VAE
    groups them (the first frame alone, then ``stride`` per latent frame), each group pooled and
    mixed into the channels by a fixed random matrix: a deterministic latent of the right shape."""

    def __init__(self, channels: int, down: int = 8, stride: int = 4, seed: int = 0):
        self.down, self.stride = down, stride
        self.downscale_index_formula = (stride, down, down)  # what LTXVImgToVideoInplace reads
        self.mix = torch.randn(channels, 3, generator=torch.Generator().manual_seed(seed))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.avg_pool2d(pixels[..., :3].movedim(-1, 1).float(), self.down)  # (F, 3, h, w)
        groups = [x[:1]] + [x[i : i + self.stride].mean(0, keepdim=True) for i in range(1, x.shape[0], self.stride)]
        frames = torch.einsum("kc,tchw->kthw", self.mix, torch.cat(groups))
        return frames.unsqueeze(0)
