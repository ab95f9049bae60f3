"""Sample images while T-LoRA Train trains: the current adapter under the timestep-aware schedule,
every N steps and at the end, so over-fitting shows as it happens.

Each preview samples the user's MODEL with the adapter attached exactly as Timestep-Aware Apply
attaches it (a fresh clone: none of the training clone's patches, no autograd, the adapter's
current values), with its own noise generator: previews change nothing about training (the
trainer's generator and the adapter are only read). The trainer runs in parts between previews,
so ComfyUI loads the training clone and the preview clone one after the other, as for any two
samplers. Each preview shows on the node (ComfyUI's progress preview), is saved next to the
checkpoints (``<run>_stepNNNNN_preview.png``, prompts top to bottom) and joins the grid the node
outputs (rows = prompts, columns = steps). Video models preview the first frame.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy.cli_args import args

from . import model_kinds, patching
from .routes import prompt_server

log = logging.getLogger(__name__)

SAMPLERS = list(comfy.samplers.KSampler.SAMPLERS)
SCHEDULERS = list(comfy.samplers.KSampler.SCHEDULERS)
EMPTY_GRID_SIZE = 64  # the IMAGE output when no previews were asked for: a black square


@dataclass(frozen=True)
class PreviewSettings:
    """prompts / negative: flat CONDITIONING entries (negative None: each prompt zeroed out, as
    ComfyUI's ConditioningZeroOut makes it). cfg 0: the model family's (model_kinds.Recipe)."""

    prompts: list
    negative: list | None
    vae: object
    every: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    seed: int

    def due(self, step: int, total: int) -> bool:
        return step == total or (self.every > 0 and step % self.every == 0)

    def next_stop(self, step: int, total: int) -> int:
        """The next step after ``step`` that gets a preview."""
        if self.every <= 0:
            return total
        return min(total, (step // self.every + 1) * self.every)


def _width(entry) -> tuple[int, int | None]:
    """(text embedding width, pooled width or None) of one conditioning entry."""
    tensor, extra = entry[0], entry[1] if len(entry) > 1 else {}
    pooled = extra.get("pooled_output") if isinstance(extra, dict) else None
    return int(tensor.shape[-1]), None if pooled is None else int(pooled.shape[-1])


def check(settings: PreviewSettings, model, training_conditioning: list, node: str) -> None:
    """Everything about the preview inputs that would otherwise fail only at the first preview."""
    kind = model_kinds.kind_of(model, node)
    latent_format = model.get_model_object("latent_format")
    channels = latent_format.latent_channels
    dims = getattr(latent_format, "latent_dimensions", 2)
    vae = settings.vae
    vae_channels, vae_dims = getattr(vae, "latent_channels", None), getattr(vae, "latent_dim", 2)
    if vae_channels != channels or vae_dims != dims:
        what = f"{vae_channels}-channel {'video' if vae_dims == 3 else 'image'} latents"
        raise ValueError(
            f"{node}: preview_vae decodes {what}, but this {kind.label} model makes {channels}-channel "
            f"{'video' if dims == 3 else 'image'} latents: it is another model family's VAE. Connect the VAE of the "
            f"model you train (the one you encoded the images with)."
        )
    want = _width(training_conditioning[0])
    for what, entries in (("preview_prompts", settings.prompts), ("preview_negative", settings.negative or [])):
        for entry in entries:
            got = _width(entry)
            if got[0] != want[0] or (want[1] is not None and got[1] != want[1]):
                raise ValueError(
                    f"{node}: {what} come from another text encoder ({got[0]}-wide embeddings) than the training "
                    f"prompt ({want[0]}-wide). Encode them with the CLIP of the model you train."
                )
    if settings.sampler not in SAMPLERS or settings.scheduler not in SCHEDULERS:
        raise ValueError(f"{node}: unknown preview sampler {settings.sampler!r} or scheduler {settings.scheduler!r}.")


def _zeroed(entry) -> list:
    """A prompt as an empty negative: ComfyUI's ConditioningZeroOut, for models sampled with CFG
    when no negative prompt is connected."""
    extra = dict(entry[1])
    if extra.get("pooled_output") is not None:
        extra["pooled_output"] = torch.zeros_like(extra["pooled_output"])
    return [torch.zeros_like(entry[0]), extra]


def _to_image(images: torch.Tensor) -> torch.Tensor:
    """A VAE's decode as one (H, W, 3) image: the first of the batch, the first frame of a video."""
    while images.dim() > 4:
        images = images[:, 0]
    return images[0, ..., :3].float().clamp(0, 1).cpu()


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.numpy() * 255.0).round().astype(np.uint8))


@dataclass
class Previewer:
    """Samples the previews of one run. latent_shape: one sample's (C, H, W) or (C, T, H, W)."""

    settings: PreviewSettings
    model: object
    latent_shape: tuple[int, ...]
    node: str
    node_id: str | None
    columns: list[tuple[int, list[torch.Tensor]]] = field(default_factory=list)  # (step, one image per prompt)
    seconds: float = 0.0

    def cfg(self) -> float:
        return self.settings.cfg if self.settings.cfg > 0 else model_kinds.kind_of(self.model, self.node).recipe.preview_cfg

    def _latent(self) -> torch.Tensor:
        shape = list(self.latent_shape)
        if len(shape) == 4:
            shape[1] = 1  # video: one latent frame, the first frame of the clip
        return torch.zeros((1, *shape))

    def take(self, adapter, step: int, total: int) -> list[torch.Tensor]:
        """Sample every prompt with the adapter as it is now; raises ComfyUI's interrupt when
        Cancel is pressed (checked at every sampling step)."""
        started = time.perf_counter()
        s = self.settings
        preview_model = self.model.clone()
        patching.attach(preview_model, adapter, 1.0, self.node)
        latent = self._latent()
        cfg = self.cfg()
        server = prompt_server()
        images = []

        def check_cancel(*_args) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()

        with torch.inference_mode():
            for index, prompt in enumerate(s.prompts):
                if server is not None and self.node_id is not None:
                    server.send_progress_text(f"preview at step {step}: prompt {index + 1}/{len(s.prompts)}", self.node_id)
                # its own generator: neither the trainer's nor torch's global one is touched
                noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(s.seed))
                negative = [s.negative[min(index, len(s.negative) - 1)]] if s.negative else [_zeroed(prompt)]
                samples = comfy.sample.sample(
                    preview_model, noise, s.steps, cfg, s.sampler, s.scheduler, [prompt], negative, latent,
                    denoise=1.0, callback=check_cancel, disable_pbar=True, seed=s.seed,
                )
                images.append(_to_image(s.vae.decode(samples)))
        self.columns.append((step, images))
        self.seconds += time.perf_counter() - started
        column = torch.cat(images, dim=0)
        comfy.utils.ProgressBar(total, node_id=self.node_id).update_absolute(
            step, total, ("JPEG", _pil(column), args.preview_size)
        )
        return images

    def save(self, path: str) -> None:
        _, images = self.columns[-1]
        _pil(torch.cat(images, dim=0)).save(path)

    def grid(self) -> torch.Tensor:
        """(1, rows·H, columns·W, 3): rows = prompts, columns = the steps previewed."""
        if not self.columns:
            return empty_grid()
        columns = [torch.cat(images, dim=0) for _, images in self.columns]
        return torch.cat(columns, dim=1).unsqueeze(0)

    def save_grid(self, path: str) -> None:
        _pil(self.grid()[0]).save(path)

    def describe(self) -> str:
        steps = ", ".join(str(step) for step, _ in self.columns)
        return f"previews at steps {steps}, {self.seconds:.1f} s" if self.columns else "no previews"


def empty_grid() -> torch.Tensor:
    return torch.zeros((1, EMPTY_GRID_SIZE, EMPTY_GRID_SIZE, 3))


def saved_path(folder: str, stem: str, step: int) -> str:
    return os.path.join(folder, f"{stem}_step{step:05}_preview.png")


__all__ = ["PreviewSettings", "Previewer", "SAMPLERS", "SCHEDULERS", "check", "empty_grid", "saved_path"]
