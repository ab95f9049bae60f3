"""T-LoRA Train's training data: latents and captions as the node receives them, as samples.

The node takes its inputs as lists (ComfyUI's ``is_input_list``), so it accepts both ways of
making a dataset: a LATENT batch from VAE Encode with one prompt for all images or one per image
(ComfyUI 0.3.64's dataset nodes make such a batch and a CONDITIONING of one entry per image), and
ComfyUI 0.33's dataset nodes (Make Training Dataset, Resolution Bucket), which send a list of
LATENTs and a list of CONDITIONINGs, item by item. Every image becomes one sample with its own
caption (an index into one flat list of conditioning entries) and, optionally, its own subject
mask. Images of different sizes are kept at their size: samples of one size form a bucket, and
a training batch runs one model call per bucket and caption it holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import model_kinds

Weights = Callable[[torch.Tensor | None, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class Dataset:
    """latents: one (C, H, W) or (C, T, H, W) tensor per sample, as encoded (the sampler applies
    the model's latent scaling). captions: per sample, its index into ``conditioning``, a flat
    CONDITIONING (a list of [tensor, dict] entries). weights: per sample a (1, h, w) 0/1 mask of
    its latent size, or None for no masks."""

    latents: list[torch.Tensor]
    captions: list[int]
    conditioning: list
    weights: list[torch.Tensor] | None

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(latent.shape) for latent in self.latents]

    def describe(self, downscale: int) -> str:
        """What the node tells the user about the data, e.g. '3 images in 2 sizes (2 at 512x512,
        1 at 768x512), 3 captions'."""
        sizes = Counter((shape[-1] * downscale, shape[-2] * downscale) for shape in self.shapes)
        n = len(self.latents)
        images = f"{n} image{'s' if n != 1 else ''}"
        captions = len(set(self.captions))
        caption_text = f"{captions} caption{'s' if captions != 1 else ''}"
        if len(sizes) == 1:
            (w, h), = sizes
            return f"{images} at {w}x{h}, {caption_text}"
        listed = ", ".join(f"{count} at {w}x{h}" for (w, h), count in sizes.most_common())
        return f"{images} in {len(sizes)} sizes ({listed}; a batch runs once per size), {caption_text}"


def _entries(conditioning: Any, node: str, what: str) -> list:
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"{node}: {what} is empty. Connect a prompt (CLIP Text Encode) or the captions of the dataset.")
    return list(conditioning)


def build(model, latents: list[dict], positive: list, masks: list | None, node: str,
          check: Callable[[Any, torch.Tensor], None], weights_of: Weights) -> Dataset:
    """The samples of ``latents`` (a list of LATENT dicts) with their captions from ``positive``
    (a list of CONDITIONINGs) and masks (a list of MASKs, or None).

    Captions pair with images in one of these ways, else an error says what was found:
    - as many CONDITIONINGs as LATENTs: each LATENT's images get its CONDITIONING's one entry, or
      one entry each (0.33's Make Training Dataset / Resolution Bucket, or one LATENT as today);
    - one CONDITIONING: one entry for every image, or one entry per image over all LATENTs;
    - one LATENT batch and one single-entry CONDITIONING per image (a list of prompts).
    check(model, samples): the node's checks of a LATENT batch; weights_of(mask, samples): a MASK
    as 0/1 weights (M, 1, h, w) for those samples.
    """
    batches: list[torch.Tensor] = []
    latent_dims = getattr(model.get_model_object("latent_format"), "latent_dimensions", 2)
    for item in latents:
        samples = item["samples"] if isinstance(item, dict) else item
        if samples.shape[0] == 0:
            continue
        check(model, samples)
        if samples.dim() == 4 and latent_dims == 3:
            samples = samples.unsqueeze(2)  # an image for a model of 5-D latents (Qwen-Image): one frame, as KSampler does
        batches.append(samples)
    total = sum(b.shape[0] for b in batches)
    if total == 0:
        raise ValueError(
            f"{node}: there are no images to train on (the LATENT is empty: an empty folder, or a loader that found "
            f"no image files). Put .png/.jpg/.webp images in the folder, or connect VAE Encode of an image."
        )
    _check_size(model, batches, node)

    conds = [_entries(c, node, "a prompt (CONDITIONING)") for c in positive]
    counts = [len(c) for c in conds]
    flat = [entry for c in conds for entry in c]
    sizes = [b.shape[0] for b in batches]
    if len(conds) == len(batches) and all(k in (1, n) for k, n in zip(counts, sizes)):
        captions, offset = [], 0
        for k, n in zip(counts, sizes):
            captions += [offset] * n if k == 1 else list(range(offset, offset + n))
            offset += k
    elif len(conds) == 1 and counts[0] in (1, total):
        captions = [0] * total if counts[0] == 1 else list(range(total))
    elif len(batches) == 1 and all(k == 1 for k in counts) and len(conds) == total:
        captions = list(range(total))
    else:
        got = f"{sum(counts)} captions" if len(conds) == 1 else f"{len(conds)} prompt inputs with {sum(counts)} captions"
        raise ValueError(
            f"{node}: got {total} images but {got}. Give one caption for all images or exactly one per image, in "
            f"the same order (with a folder of images, one .txt caption file per image, or none at all)."
        )

    weights = _weights(masks, batches, node, weights_of)
    return Dataset([latent for b in batches for latent in b.unbind(0)], captions, flat, weights)


def _check_size(model, batches: list[torch.Tensor], node: str) -> None:
    smallest = model_kinds.min_latent_size(model)
    downscale = int(getattr(model.get_model_object("latent_format"), "spacial_downscale_ratio", 8))
    for b in batches:
        h, w = b.shape[-2], b.shape[-1]
        if min(h, w) < smallest:
            label = model_kinds.kind_of(model, node).label
            need = smallest * downscale
            raise ValueError(
                f"{node}: an image is {w * downscale}x{h * downscale} pixels (latent {w}x{h}); a {label} model needs at "
                f"least {need}x{need} (latent {smallest}x{smallest}). Use larger images, or enlarge them (Upscale Image)."
            )


def _weights(masks: list | None, batches: list[torch.Tensor], node: str, weights_of: Weights) -> list[torch.Tensor] | None:
    if not masks:
        return None
    if len(masks) == 1 and len(batches) > 1:
        mask = masks[0].reshape(-1, masks[0].shape[-2], masks[0].shape[-1])
        total = sum(b.shape[0] for b in batches)
        if mask.shape[0] == total:  # one mask per image over all items
            masks = list(mask.split([b.shape[0] for b in batches]))
        else:
            masks = [masks[0]] * len(batches)
    if len(masks) != len(batches):
        raise ValueError(
            f"{node}: got {len(masks)} masks for {len(batches)} groups of images. Give one mask for all images, or one per image."
        )
    out: list[torch.Tensor] = []
    for mask, b in zip(masks, batches):
        w = weights_of(mask, b)
        assert w is not None
        out += [w[i if w.shape[0] > 1 else 0] for i in range(b.shape[0])]
    return out
