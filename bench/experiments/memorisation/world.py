"""A synthetic captioned image world, small enough to pretrain a diffusion model on a 2-core CPU.

Every image is 16x16 RGB: one object (a shape in a flat colour) on a background (four flat
colours, two textures), in one of four quadrants, at a random size and sub-pixel jitter. Shapes
are drawn at 4x supersampling and box-filtered, so edges are anti-aliased. Captions come from a
small vocabulary ("a red circle on striped background, top left"); words become cross-attention
context through a fixed random token-embedding table (a frozen "text encoder" with no learning).

The novel concept of the experiment, "sks", is a pink bar (a wide, flat rectangle): a colour and
a shape that never occur in pretraining and have no word of their own.

Pure torch: no comfy import, so the judges and the renderer can be tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIDE = 16  # image side in pixels = latent side (the images are used as latents directly)
SUPERSAMPLE = 4
CONTEXT_DIM = 64
CONTEXT_TOKENS = 10
EMBED_SEED = 1234

# Palettes (RGB in [0, 1]) chosen so that every object colour is far from every background colour
# (judges.py segments by nearest palette colour; min distance is checked by the self-test).
COLOURS = {
    "red": (0.90, 0.10, 0.10),
    "yellow": (1.00, 0.90, 0.00),
    "purple": (0.60, 0.10, 0.80),
    "cyan": (0.00, 0.85, 0.85),
}
SHAPES = ["circle", "square", "triangle", "diamond"]
BACKGROUNDS = {  # one colour: flat; two colours: a texture (stripes 2 px, checks 4 px)
    "sky": [(0.55, 0.75, 1.00)],
    "grass": [(0.15, 0.50, 0.15)],
    "sand": [(0.90, 0.80, 0.55)],
    "night": [(0.05, 0.05, 0.30)],
    "striped": [(0.95, 0.95, 0.95), (0.55, 0.55, 0.55)],
    "checkered": [(0.55, 0.30, 0.10), (0.30, 0.15, 0.05)],
}
POSITIONS = {  # quadrant name -> centre (row, col) in pixels
    "top left": (4.0, 4.0),
    "top right": (4.0, 12.0),
    "bottom left": (12.0, 4.0),
    "bottom right": (12.0, 12.0),
}
# The novel concept: never rendered or named in pretraining.
CONCEPT_COLOUR = ("pink", (1.00, 0.45, 0.75))
CONCEPT_SHAPE = "bar"  # aspect about 2.3 : 1, every pretraining shape is about 1 : 1
CONCEPT_WORD = "sks"

ALL_COLOURS = list(COLOURS) + [CONCEPT_COLOUR[0]]  # object colour index -> name
ALL_COLOUR_RGB = torch.tensor(list(COLOURS.values()) + [CONCEPT_COLOUR[1]])
ALL_SHAPES = SHAPES + [CONCEPT_SHAPE]
BG_NAMES = list(BACKGROUNDS)
POS_NAMES = list(POSITIONS)

SIZE_RANGE = (2.6, 3.4)  # half-extent of an object, pixels
JITTER = 0.75  # +- pixels around the quadrant centre
COLOUR_JITTER = 0.03  # per-image std of every palette colour (lighting variation)

VOCAB = (
    ["<bos>", "<pad>", "a", "on", "background", "object", CONCEPT_WORD]
    + list(COLOURS) + SHAPES + BG_NAMES + ["top", "bottom", "left", "right"]
)


@dataclass
class Scenes:
    """A batch of scene descriptions. Indices into ALL_COLOURS, ALL_SHAPES, BG_NAMES; centres
    (row, col) and half-extents in pixels. All tensors (B,)."""

    bg: torch.Tensor
    colour: torch.Tensor
    shape: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    size: torch.Tensor

    def __len__(self) -> int:
        return int(self.bg.shape[0])

    def position(self) -> torch.Tensor:
        """(B,) index into POS_NAMES of the quadrant the centre lies in."""
        return (self.row >= SIDE / 2).long() * 2 + (self.col >= SIDE / 2).long()


def random_scenes(n: int, generator: torch.Generator, concept: bool = False) -> Scenes:
    """n scenes from the pretraining distribution (concept=False: the four colours and shapes),
    or with the concept object in every scene (concept=True)."""
    g = generator
    if concept:
        colour = torch.full((n,), len(COLOURS), dtype=torch.long)
        shape = torch.full((n,), len(SHAPES), dtype=torch.long)
    else:
        colour = torch.randint(0, len(COLOURS), (n,), generator=g)
        shape = torch.randint(0, len(SHAPES), (n,), generator=g)
    bg = torch.randint(0, len(BACKGROUNDS), (n,), generator=g)
    pos = torch.randint(0, len(POSITIONS), (n,), generator=g)
    return scenes_at(bg, colour, shape, pos, g)


def scenes_at(bg, colour, shape, pos, generator: torch.Generator | None = None, size=None, jitter: bool = True) -> Scenes:
    """Scenes with given indices; size and jitter random (from ``generator``) unless given/off."""
    n = int(bg.shape[0])
    centres = torch.tensor(list(POSITIONS.values()))[pos]
    if jitter:
        offset = (torch.rand(n, 2, generator=generator) * 2 - 1) * JITTER
    else:
        offset = torch.zeros(n, 2)
    if size is None:
        size = SIZE_RANGE[0] + torch.rand(n, generator=generator) * (SIZE_RANGE[1] - SIZE_RANGE[0])
    elif not torch.is_tensor(size):
        size = torch.full((n,), float(size))
    return Scenes(bg, colour, shape, centres[:, 0] + offset[:, 0], centres[:, 1] + offset[:, 1], size)


# -- rendering -------------------------------------------------------------------------------------
def _grid(side: int, supersample: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = (torch.arange(side * supersample, dtype=torch.float32) + 0.5) / supersample
    return coords.view(-1, 1), coords.view(1, -1)  # rows (H, 1), cols (1, W) in pixels


def shape_masks(shape: torch.Tensor, row: torch.Tensor, col: torch.Tensor, size: torch.Tensor,
                side: int = SIDE, supersample: int = SUPERSAMPLE) -> torch.Tensor:
    """(B, side, side) coverage in [0, 1] of each shape (anti-aliased by supersampling).
    Shapes are defined in units of the half-extent, all of similar area."""
    ys, xs = _grid(side, supersample)
    fine = torch.zeros(shape.shape[0], side * supersample, side * supersample)
    for k in torch.unique(shape).tolist():
        rows = (shape == k).nonzero().flatten()
        v = (ys.unsqueeze(0) - row[rows].view(-1, 1, 1)) / size[rows].view(-1, 1, 1)
        u = (xs.unsqueeze(0) - col[rows].view(-1, 1, 1)) / size[rows].view(-1, 1, 1)
        fine[rows] = _inside(ALL_SHAPES[k], u, v).float()
    return torch.nn.functional.avg_pool2d(fine.unsqueeze(1), supersample).squeeze(1)


def _inside(name: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether (u, v), in units of the half-extent around the centre, is inside the shape."""
    if name == "circle":
        return u**2 + v**2 <= 1.0
    if name == "square":
        return (u.abs() <= 0.85) & (v.abs() <= 0.85)
    if name == "triangle":
        return (v >= -1.0) & (v <= 0.9) & (u.abs() <= (v + 1.0) / 1.9)
    if name == "diamond":
        return u.abs() + v.abs() <= 1.2
    if name == "bar":
        return (u.abs() <= 1.15) & (v.abs() <= 0.5)
    raise ValueError(f"memorisation world: unknown shape {name!r}")


def background_images(bg: torch.Tensor, palette_noise: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, SIDE, SIDE) backgrounds. palette_noise: (B, 2, 3) added to the two texture colours."""
    n = int(bg.shape[0])
    first = torch.tensor([c[0] for c in BACKGROUNDS.values()])[bg]  # (B, 3)
    second = torch.tensor([c[-1] for c in BACKGROUNDS.values()])[bg]
    if palette_noise is not None:
        first, second = first + palette_noise[:, 0], second + palette_noise[:, 1]
    ys, xs = _grid(SIDE, 1)
    stripes = (torch.div(ys, 2, rounding_mode="floor") % 2).expand(SIDE, SIDE)
    checks = ((torch.div(ys, 4, rounding_mode="floor") + torch.div(xs, 4, rounding_mode="floor")) % 2)
    pattern = torch.zeros(n, SIDE, SIDE)
    names = torch.tensor([BG_NAMES.index("striped"), BG_NAMES.index("checkered")])
    pattern = torch.where((bg == names[0]).view(-1, 1, 1), stripes, pattern)
    pattern = torch.where((bg == names[1]).view(-1, 1, 1), checks, pattern)
    p = pattern.unsqueeze(1)
    return first.view(n, 3, 1, 1) * (1 - p) + second.view(n, 3, 1, 1) * p


def render(scenes: Scenes, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 3, SIDE, SIDE) RGB in [0, 1]. With a generator, palette colours get a small per-image
    jitter (lighting); without one, the exact palette."""
    n = len(scenes)
    noise_bg = noise_obj = None
    if generator is not None:
        noise_bg = torch.randn(n, 2, 3, generator=generator) * COLOUR_JITTER
        noise_obj = torch.randn(n, 3, generator=generator) * COLOUR_JITTER
    image = background_images(scenes.bg, noise_bg)
    obj = ALL_COLOUR_RGB[scenes.colour]
    if noise_obj is not None:
        obj = obj + noise_obj
    cover = shape_masks(scenes.shape, scenes.row, scenes.col, scenes.size).unsqueeze(1)
    image = image * (1 - cover) + obj.view(n, 3, 1, 1) * cover
    return image.clamp(0, 1)


# -- captions and the fixed text "encoder" --------------------------------------------------------------
def caption(colour: str | None, shape: str | None, bg: str | None, pos: str | None) -> str:
    """"a red circle on sky background, top left"; None drops a part. colour=CONCEPT_WORD with
    shape None gives "a sks object"."""
    words = ["a"]
    if colour is not None:
        words.append(colour)
    words.append(shape if shape is not None else "object")
    text = " ".join(words)
    if bg is not None:
        text += f" on {bg} background"
    if pos is not None:
        text += f", {pos}"
    return text


def scene_captions(scenes: Scenes, generator: torch.Generator | None = None,
                   drop: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)) -> list[str]:
    """Captions of scenes; drop = probabilities of leaving out (colour, shape, background,
    position, everything: the empty caption used for classifier-free guidance)."""
    n = len(scenes)
    r = torch.rand(n, 5, generator=generator) if generator is not None else torch.ones(n, 5)
    out = []
    pos = scenes.position()
    for i in range(n):
        if r[i, 4] < drop[4]:
            out.append("")
            continue
        out.append(caption(
            None if r[i, 0] < drop[0] else ALL_COLOURS[int(scenes.colour[i])],
            None if r[i, 1] < drop[1] else ALL_SHAPES[int(scenes.shape[i])],
            None if r[i, 2] < drop[2] else BG_NAMES[int(scenes.bg[i])],
            None if r[i, 3] < drop[3] else POS_NAMES[int(pos[i])],
        ))
    return out


def tokenize(text: str) -> list[int]:
    words = text.replace(",", " ").lower().split()
    unknown = [w for w in words if w not in VOCAB]
    if unknown:
        raise ValueError(f"memorisation world: unknown words {unknown}; the vocabulary is {VOCAB}.")
    ids = [VOCAB.index("<bos>")] + [VOCAB.index(w) for w in words]
    if len(ids) > CONTEXT_TOKENS:
        raise ValueError(f"memorisation world: '{text}' has {len(ids)} tokens, at most {CONTEXT_TOKENS}.")
    return ids + [VOCAB.index("<pad>")] * (CONTEXT_TOKENS - len(ids))


_TABLE: torch.Tensor | None = None


def embedding_table() -> torch.Tensor:
    """(len(VOCAB), CONTEXT_DIM) fixed N(0, 1) rows: the same for every run (seeded)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = torch.randn(len(VOCAB), CONTEXT_DIM, generator=torch.Generator().manual_seed(EMBED_SEED))
    return _TABLE


def embed(texts: list[str]) -> torch.Tensor:
    """(B, CONTEXT_TOKENS, CONTEXT_DIM) cross-attention context for the captions."""
    ids = torch.tensor([tokenize(t) for t in texts])
    return embedding_table()[ids]


# -- images <-> model space ------------------------------------------------------------------------------
def to_model_space(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 4, H, W): RGB scaled to [-1, 1] plus a constant-zero fourth
    channel (SD1.5 models have 4 latent channels; the fourth carries nothing)."""
    return torch.cat([rgb * 2 - 1, torch.zeros_like(rgb[:, :1])], dim=1)


def from_model_space(x: torch.Tensor) -> torch.Tensor:
    return ((x[:, :3] + 1) / 2).clamp(0, 1)
