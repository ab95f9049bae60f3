"""The base model: ComfyUI's own SD1.5 class at a tiny width, pretrained on the synthetic world.

ε-prediction with SD1.5's ModelSamplingDiscrete (scaled-linear betas, 1000 timesteps), as the
real checkpoints. The pretraining loop is plain torch on ``BaseModel.diffusion_model`` (the
UNet), with ComfyUI's own ``model_sampling`` for sigma, input scaling and timestep, so the
trained weights are an ordinary SD1.5-family MODEL once wrapped in a ModelPatcher: the pack's
nodes and ComfyUI's samplers run on it unchanged.

Images are used as latents directly (world.to_model_space): the tensors the UNet sees are RGB in
[-1, 1] plus a zero fourth channel. ComfyUI multiplies LATENTs by SD1.5's scale factor
(0.18215) on the way in and divides on the way out, so a LATENT here is model space / 0.18215
(``to_latent`` / ``from_latent``).

Cached under .cache/ by a hash of every setting that changes the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import world

log = logging.getLogger("memorisation")

UNET_CONFIG = dict(
    use_checkpoint=False, image_size=world.SIDE, in_channels=4, out_channels=4, use_spatial_transformer=True,
    legacy=False, adm_in_channels=None, model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=[1, 1, 1],
    # no attention at 16x16: self-attention over 256 tokens cost 3/4 of a step on this CPU
    transformer_depth=[0, 1, 1], transformer_depth_output=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1,
    use_linear_in_transformer=False, context_dim=world.CONTEXT_DIM, num_heads=-1, num_head_channels=16,
    use_temporal_attention=False, use_temporal_resblock=False,
)


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 1.5e-3
    warmup: int = 100
    final_lr_fraction: float = 0.1  # cosine decay to this fraction of the learning rate
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    # probabilities of dropping colour, shape, background, position, everything (CFG's empty prompt)
    caption_drop: tuple[float, float, float, float, float] = (0.1, 0.1, 0.25, 0.25, 0.1)
    seed: int = 0
    unet: dict = field(default_factory=lambda: dict(UNET_CONFIG))

    def key(self) -> str:
        text = json.dumps({"settings": asdict(self), "world": _world_fingerprint(), "version": 1}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _world_fingerprint() -> dict:
    """What pretraining sees of the world (not the concept, which it never sees)."""
    return {
        "side": world.SIDE, "colours": world.COLOURS, "shapes": world.SHAPES, "backgrounds": world.BACKGROUNDS,
        "positions": world.POSITIONS, "size": world.SIZE_RANGE, "jitter": world.JITTER,
        "colour_jitter": world.COLOUR_JITTER, "vocab": world.VOCAB, "embed_seed": world.EMBED_SEED,
        "context": [world.CONTEXT_TOKENS, world.CONTEXT_DIM],
    }


# -- ComfyUI model ------------------------------------------------------------------------------------
def build_base(unet: dict):
    """A BaseModel of ComfyUI's SD15 class with this UNet config (weights uninitialised)."""
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(unet, dtype=torch.float32))
    config.set_inference_dtype(torch.float32, None)
    return config.get_model({})


def wrap(base):
    import comfy.model_management
    import comfy.model_patcher

    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=comfy.model_management.unet_offload_device())


@torch.no_grad()
def _initialise(unet: torch.nn.Module, seed: int) -> None:
    """PyTorch's default init for every layer (ComfyUI's ops skip it), and zero for the last
    layer of every residual branch and of the output, as SD's UNet was trained from."""
    torch.manual_seed(seed)
    for module in unet.modules():
        for base in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(module, base):
                base.reset_parameters(module)
                break
    for name, module in unet.named_modules():
        if name == "out.2" or name.endswith("out_layers.3") or name.endswith("proj_out"):
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()


def to_latent(latent_format, x: torch.Tensor) -> torch.Tensor:
    return latent_format.process_out(x)


def from_latent(latent_format, latent: torch.Tensor) -> torch.Tensor:
    return latent_format.process_in(latent)


# -- pretraining ----------------------------------------------------------------------------------------
def _lr_at(step: int, s: PretrainSettings) -> float:
    if step < s.warmup:
        return s.learning_rate * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.learning_rate * (s.final_lr_fraction + (1 - s.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(s: PretrainSettings, progress_every: int = 100) -> tuple[dict[str, torch.Tensor], dict]:
    """Train from scratch; returns the EMA weights of the UNet and a report."""
    base = build_base(s.unet)
    unet = base.diffusion_model
    _initialise(unet, s.seed)
    sampling = base.model_sampling
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    params = [p.requires_grad_(True) for p in unet.parameters()]  # ComfyUI 0.33's ops create them frozen
    opt = torch.optim.AdamW(params, lr=s.learning_rate, betas=(0.9, 0.99), weight_decay=s.weight_decay)
    g = torch.Generator().manual_seed(s.seed)
    unet.train()
    losses: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(s.steps):
        scenes = world.random_scenes(s.batch_size, g)
        x0 = world.to_model_space(world.render(scenes, g))
        context = world.embed(world.scene_captions(scenes, g, s.caption_drop))
        timestep = torch.randint(0, 1000, (s.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        sigma = sampling.sigmas[timestep].float()
        x_t = sampling.noise_scaling(sigma, noise, x0)
        out = unet(sampling.calculate_input(sigma, x_t), sampling.timestep(sigma).float(), context=context)
        loss = torch.nn.functional.mse_loss(out, noise)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        losses.append(float(loss.detach()))
        if progress_every and (step + 1) % progress_every == 0:
            recent = sum(losses[-progress_every:]) / progress_every
            log.warning("pretrain step %d/%d loss %.4f (%.0f s)", step + 1, s.steps, recent, time.perf_counter() - t0)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    window = max(1, s.steps // 20)
    report = {
        "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "steps": s.steps, "batch_size": s.batch_size, "torch_threads": torch.get_num_threads(),
        "loss_first": sum(losses[:window]) / window, "loss_last": sum(losses[-window:]) / window,
        "loss_curve": [round(sum(losses[i:i + window]) / len(losses[i:i + window]), 4) for i in range(0, s.steps, window)],
        "parameters": sum(p.numel() for p in params),
    }
    return ema, report


def load_or_pretrain(s: PretrainSettings, cache: Path):
    """The pretrained ModelPatcher (from the cache, or trained now and cached) and its report."""
    from safetensors.torch import load_file, save_file

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"pretrained-{s.key()}.safetensors"
    report_path = path.with_suffix(".json")
    if path.is_file() and report_path.is_file():
        state = load_file(str(path))
        report = json.loads(report_path.read_text())
        report["cached"] = True
    else:
        state, report = pretrain(s)
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp), metadata={"settings": json.dumps(asdict(s))})
        tmp.replace(path)
        report_path.write_text(json.dumps(report, indent=1))
        report["cached"] = False
    base = build_base(s.unet)
    missing, unexpected = base.diffusion_model.load_state_dict(state, strict=True), None
    del missing, unexpected
    base.eval()
    base.requires_grad_(False)
    report["file"] = path.name
    return wrap(base), report
