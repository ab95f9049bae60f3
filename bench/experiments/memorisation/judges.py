"""Analytic judges for the synthetic world: which background, which object (colour, shape), where.

No learned model: every pixel is labelled with its nearest palette colour (world.py's palettes
keep object and background colours far apart), the object is the largest 4-connected blob of
object-coloured pixels, its colour the majority colour of its pixels, its position the quadrant
of its centroid, its shape the best IoU over rendered templates (every shape, at sizes fitted to
the blob's area and centres around its centroid), and the background the majority background
class of the remaining pixels. Accuracy on held-out renders is measured by ``judge_accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import world

MIN_OBJECT_PIXELS = 6
# the training background's texture (2-px stripes, period 4 rows) counts as visible above this
# amplitude of the period-4 component of row-mean luminance; the rendered stripes have about 0.3
STRIPES_VISIBLE = 0.06
# palette: background colours first (each labelled with its class), then object colours
_BG_RGB = [(rgb, k) for k, name in enumerate(world.BG_NAMES) for rgb in world.BACKGROUNDS[name]]
PALETTE = torch.tensor([rgb for rgb, _ in _BG_RGB] + world.ALL_COLOUR_RGB.tolist())
PALETTE_CLASS = torch.tensor([k for _, k in _BG_RGB] + list(range(len(world.ALL_COLOURS))))
PALETTE_IS_OBJECT = torch.tensor([False] * len(_BG_RGB) + [True] * len(world.ALL_COLOURS))
# area of each shape per size**2 (world.shape_masks), and its centroid's row offset per size
_SHAPE_AREA = {"circle": np.pi, "square": 4 * 0.85**2, "triangle": 1.9, "diamond": 2 * 1.2**2, "bar": 4 * 1.15 * 0.5}
_SHAPE_ROW_OFFSET = {"circle": 0.0, "square": 0.0, "triangle": (-1.0 + 2.0 / 3.0 * 1.9), "diamond": 0.0, "bar": 0.0}
_OFFSETS = torch.tensor([-0.5, -0.25, 0.0, 0.25, 0.5])
_SCALES = torch.tensor([0.9, 0.95, 1.0, 1.05, 1.1])


@dataclass
class Verdicts:
    """Per image (B,): -1 where the judge found nothing. Indices into world.BG_NAMES,
    ALL_COLOURS, ALL_SHAPES, POS_NAMES. shape_iou: (B, len(ALL_SHAPES)) best IoU per shape."""

    bg: torch.Tensor
    colour: torch.Tensor
    shape: torch.Tensor
    position: torch.Tensor
    object_pixels: torch.Tensor
    shape_iou: torch.Tensor
    stripes: torch.Tensor  # (B,) amplitude of 2-px horizontal stripes in the background

    def stripes_visible(self) -> torch.Tensor:
        return self.stripes > STRIPES_VISIBLE

    def concept(self) -> torch.Tensor:
        """(B,) bool: the novel concept (its colour and its shape) was generated."""
        return (self.colour == len(world.COLOURS)) & (self.shape == len(world.SHAPES))


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a (H, W) bool mask."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        current += 1
        stack, size = [start], 0
        labels[start] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


def _coverage(pixels: torch.Tensor, obj: torch.Tensor, bg_colours: torch.Tensor) -> torch.Tensor:
    """(H, W) fraction of each pixel covered by the object colour ``obj`` (3,), the rest being
    whichever of the background's colours (K, 3) explains the pixel best (textures alternate)."""
    diff = obj.view(1, 1, 1, 3) - bg_colours.view(-1, 1, 1, 3)  # (K, 1, 1, 3)
    rel = pixels.unsqueeze(0) - bg_colours.view(-1, 1, 1, 3)  # (K, H, W, 3)
    alpha = ((rel * diff).sum(-1) / (diff * diff).sum(-1).clamp(min=1e-6)).clamp(0, 1)
    residual = (rel - alpha.unsqueeze(-1) * diff).norm(dim=-1)
    best = residual.argmin(0, keepdim=True)
    return alpha.gather(0, best).squeeze(0)


def _shape_ious(alpha: torch.Tensor) -> torch.Tensor:
    """(len(ALL_SHAPES),) best soft IoU of the coverage map (H, W) with each shape's templates,
    at sizes fitted to its area and centres around its centroid."""
    area = float(alpha.sum())
    ys = torch.arange(world.SIDE, dtype=torch.float32).view(-1, 1) + 0.5
    xs = torch.arange(world.SIDE, dtype=torch.float32).view(1, -1) + 0.5
    row, col = float((alpha * ys).sum()) / area, float((alpha * xs).sum()) / area
    rows, cols, sizes, shapes = [], [], [], []
    for k, name in enumerate(world.ALL_SHAPES):
        size0 = (area / _SHAPE_AREA[name]) ** 0.5
        for scale in _SCALES.tolist():
            size = size0 * scale
            for dr in _OFFSETS.tolist():
                for dc in _OFFSETS.tolist():
                    rows.append(row - _SHAPE_ROW_OFFSET[name] * size + dr)
                    cols.append(col + dc)
                    sizes.append(size)
                    shapes.append(k)
    templates = world.shape_masks(torch.tensor(shapes), torch.tensor(rows), torch.tensor(cols), torch.tensor(sizes))
    inter = torch.minimum(templates, alpha).flatten(1).sum(1)
    union = torch.maximum(templates, alpha).flatten(1).sum(1).clamp(min=1e-6)
    iou = (inter / union).view(len(world.ALL_SHAPES), -1)
    return iou.max(dim=1).values


def stripe_amplitude(rgb: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """(B,) amplitude of a period-4-row luminance wave (the striped background's texture) over
    the pixels not in ``exclude`` (B, H, W bool), whatever its colours or phase."""
    lum = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    keep = (~exclude).float()
    counts = keep.sum(-1)
    overall = (lum * keep).sum((-1, -2)) / keep.sum((-1, -2)).clamp(min=1)
    rows = torch.where(counts > 0, (lum * keep).sum(-1) / counts.clamp(min=1), overall.unsqueeze(-1)) - overall.unsqueeze(-1)
    y = torch.arange(rgb.shape[-2], dtype=torch.float32)
    wave = torch.polar(torch.ones_like(y), -2 * np.pi * y / 4)
    return (rows.to(torch.complex64) * wave).sum(-1).abs() * 2 / rgb.shape[-2]


def judge(rgb: torch.Tensor) -> Verdicts:
    """rgb: (B, 3, H, W) in [0, 1] (world.SIDE square)."""
    rgb = rgb.float().clamp(0, 1)
    n = rgb.shape[0]
    pixels = rgb.permute(0, 2, 3, 1)  # (B, H, W, 3)
    distance = torch.cdist(pixels.reshape(n, -1, 3), PALETTE.unsqueeze(0).expand(n, -1, -1))
    nearest = distance.argmin(-1).view(n, world.SIDE, world.SIDE)
    is_object = PALETTE_IS_OBJECT[nearest]
    cls = PALETTE_CLASS[nearest]
    bg = torch.full((n,), -1, dtype=torch.long)
    colour = torch.full((n,), -1, dtype=torch.long)
    shape = torch.full((n,), -1, dtype=torch.long)
    position = torch.full((n,), -1, dtype=torch.long)
    count = torch.zeros(n, dtype=torch.long)
    ious = torch.zeros(n, len(world.ALL_SHAPES))
    for i in range(n):
        rest = cls[i][~is_object[i]]
        if rest.numel():
            bg[i] = torch.bincount(rest, minlength=len(world.BG_NAMES)).argmax()
        blob = torch.from_numpy(_largest_blob(is_object[i].numpy()))
        count[i] = int(blob.sum())
        if count[i] < MIN_OBJECT_PIXELS:
            continue
        colour[i] = torch.bincount(cls[i][blob], minlength=len(world.ALL_COLOURS)).argmax()
        ys, xs = torch.nonzero(blob, as_tuple=True)
        row, col = ys.float().mean() + 0.5, xs.float().mean() + 0.5
        position[i] = int(row >= world.SIDE / 2) * 2 + int(col >= world.SIDE / 2)
        if bg[i] >= 0:
            # soft coverage near the blob (its pixels and their neighbours), for the shape
            near = torch.nn.functional.max_pool2d(blob.float().view(1, 1, *blob.shape), 3, 1, 1).view(blob.shape) > 0
            bg_colours = torch.tensor(world.BACKGROUNDS[world.BG_NAMES[int(bg[i])]])
            obj = pixels[i][blob & (cls[i] == colour[i])].mean(0) if bool((blob & (cls[i] == colour[i])).any()) else world.ALL_COLOUR_RGB[colour[i]]
            alpha = _coverage(pixels[i], obj, bg_colours) * near
            ious[i] = _shape_ious(alpha)
            shape[i] = ious[i].argmax()
    near_object = torch.nn.functional.max_pool2d(is_object.float().unsqueeze(1), 3, 1, 1).squeeze(1) > 0
    return Verdicts(bg, colour, shape, position, count, ious, stripe_amplitude(rgb, near_object))


def judge_accuracy(n: int = 1000, seed: int = 777, noise: float = 0.0) -> dict[str, float]:
    """Accuracy of every judge on n held-out renders (half pretraining objects, half the
    concept; other seed than pretraining), optionally with Gaussian pixel noise of std ``noise``."""
    g = torch.Generator().manual_seed(seed)
    half = n // 2
    a = world.random_scenes(half, g)
    b = world.random_scenes(n - half, g, concept=True)
    scenes = world.Scenes(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in ("bg", "colour", "shape", "row", "col", "size")))
    rgb = world.render(scenes, g)
    if noise:
        rgb = rgb + torch.randn(rgb.shape, generator=g) * noise
    v = judge(rgb)
    concept_truth = scenes.colour == len(world.COLOURS)
    striped = scenes.bg == world.BG_NAMES.index("striped")
    return {
        "images": n,
        "pixel_noise_std": noise,
        "background": float((v.bg == scenes.bg).float().mean()),
        "colour": float((v.colour == scenes.colour).float().mean()),
        "shape": float((v.shape == scenes.shape).float().mean()),
        "position": float((v.position == scenes.position()).float().mean()),
        "concept_detected_when_present": float(v.concept()[concept_truth].float().mean()),
        "concept_detected_when_absent": float(v.concept()[~concept_truth].float().mean()),
        "stripes_detected_when_striped": float(v.stripes_visible()[striped].float().mean()),
        "stripes_detected_when_not": float(v.stripes_visible()[~striped].float().mean()),
    }
