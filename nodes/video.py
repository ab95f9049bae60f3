"""What T-LoRA Train needs beyond images for the video families (5-D latents (B, C, T, H, W)):
subject masks per frame, the start image of image-to-video models, the frames a latent gives
(its noise_mask) and the files of a two-expert model. Every check here runs before the model is
loaded or an adapter initialised, so bad input costs nothing.
"""

from __future__ import annotations

import torch

import comfy.utils

from . import model_kinds


def video_frames(latent_frames: int, frame_stride: int) -> int:
    """The frames of video a video VAE encodes into ``latent_frames``: the first alone, then
    ``frame_stride`` per latent frame."""
    return frame_stride * (latent_frames - 1) + 1


def subject_weights(mask: torch.Tensor, latents: torch.Tensor, down: int, frame_stride: int, node: str) -> torch.Tensor:
    """Subject masks for video latents (M, C, T, h, w) as 0/1 weights (M, 1, T, h, w), or
    (M, 1, 1, h, w) when one mask holds for every frame. A MASK batch of N frames (image or latent
    size) is: N = 1 one mask for everything; M one per latent, all its frames; M·T one per latent
    frame; M·F one per video frame (F = ``video_frames``): a latent frame then weighs the pixels
    where the subject is in any of its video frames."""
    n, frames, h, w = latents.shape[0], latents.shape[2], latents.shape[-2], latents.shape[-1]
    full = video_frames(frames, frame_stride)
    mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()
    count = mask.shape[0]
    # mask count -> (masks per latent, video frames per mask), the first reading that fits
    readings = ((1, (1, 1)), (n, (1, 1)), (n * frames, (frames, 1)), (n * full, (full, frame_stride)))
    per, steps = next((reading for option, reading in readings if option == count), (0, 0))
    if not per:
        counts = sorted({option for option, _ in readings})
        raise ValueError(
            f"{node}: got a mask of {count} frames for {n} latent(s) of {frames} latent frames ({full} frames of "
            f"video). Give {', '.join(map(str, counts[:-1]))} or {counts[-1]} masks: one for all frames, one per "
            f"latent frame, or one per video frame (the frames the VAE turned into these latents)."
        )
    size = tuple(mask.shape[-2:])
    if size not in ((h, w), (down * h, down * w)):
        raise ValueError(
            f"{node}: the mask is {size[1]}x{size[0]} but the latents need {down * w}x{down * h} (video size) or "
            f"{w}x{h} (latent size). Make the mask from the same frames you encoded."
        )
    flat = (comfy.utils.reshape_mask(mask, (count, 1, h, w)) > 0.5).float()
    groups = flat.reshape(count // per, per, h, w)
    if steps > 1:  # video frames -> the latent frame that encodes them: 0 | 1..s | s+1..2s | ...
        first = groups[:, :1]
        rest = groups[:, 1:].reshape(groups.shape[0], frames - 1, steps, h, w).amax(dim=2)
        groups = torch.cat([first, rest], dim=1)
    weights = groups.unsqueeze(1)  # (M or 1, 1, T or 1, h, w)
    if bool((weights.flatten(1).sum(1) == 0).any()):
        raise ValueError(f"{node}: a mask covers no pixel of its video in any frame; paint the subject white.")
    return weights


_START_IMAGE = {"concat_latent_image": "start image latent (concat_latent_image)",
                "clip_vision_output": "CLIP-vision output of the start image (clip_vision_output)"}


def check_start_image(model, samples: torch.Tensor, positive, down: int, node: str) -> None:
    """An image-to-video model's start image comes from the graph (WanImageToVideo,
    HunyuanVideo15ImageToVideo, ...) in the conditioning: there, and made for these latents.
    ComfyUI itself would fail only at the first step on another frame count, and would stretch
    another size."""
    kind = model_kinds.kind_of(model, node)
    needed = model_kinds.start_image_inputs(model, node)
    frames, h, w = samples.shape[2], samples.shape[-2], samples.shape[-1]
    stride = kind.frame_stride
    for i, entry in enumerate(positive):
        extra = entry[1]
        which = f"conditioning {i + 1}" if len(positive) > 1 else "positive"
        if needed is not None:
            maker, keys = needed
            missing = [_START_IMAGE[k] for k in keys if extra.get(k) is None]
            if missing:
                inputs = "start_image" + (" and clip_vision_output (CLIP Vision Encode)" if "clip_vision_output" in keys else "")
                raise ValueError(
                    f"{node}: {kind.label} makes videos from a start image, but {which} carries no "
                    f"{' and no '.join(missing)}. Make positive with {maker} ({inputs}) and connect its positive here."
                )
        for key in ("concat_latent_image", "concat_mask"):
            value = extra.get(key)
            if not isinstance(value, torch.Tensor) or value.dim() != 5:
                continue
            got_frames, got_h, got_w = value.shape[2], value.shape[-2], value.shape[-1]
            size_differs = key == "concat_latent_image" and (got_h, got_w) != (h, w)
            if got_frames != frames or size_differs:
                raise ValueError(
                    f"{node}: the start image in {which} was made for {got_frames} latent frames "
                    f"({video_frames(got_frames, stride)} video frames) of {got_w * down}x{got_h * down}, the latents "
                    f"have {frames} ({video_frames(frames, stride)} video frames) of {w * down}x{h * down}. Set length "
                    f"to {video_frames(frames, stride)} and width x height to {w * down}x{h * down} on the node that "
                    f"made positive (e.g. WanImageToVideo)."
                )


def noise_mask(latents: dict, samples: torch.Tensor, weights: torch.Tensor | None, node: str) -> torch.Tensor | None:
    """The latents' noise_mask (0 = given and kept, e.g. the start frame of Wan 2.2 TI2V's or
    LTX-Video's image-to-video latent), checked. Training treats it as sampling does: the given
    frames stay as they are (clean, timestep 0, for those models) and the loss skips them, because
    the sampler replaces the model's output there by the given latent, and from a clean frame the
    flow target noise - x0 can't be predicted: it would only add noise."""
    mask = latents.get("noise_mask")
    if mask is None:
        return None
    full = comfy.utils.reshape_mask(mask.float(), samples.shape)  # what the sampler makes of it
    if not bool((full == full[:1]).all()):
        raise ValueError(
            f"{node}: the latents' noise_mask differs between latents. Give one noise mask for all of them "
            f"(train latents with different given frames in separate runs)."
        )
    covered = full if weights is None else full * weights
    if bool((covered.flatten(1).sum(1) == 0).any()):
        where = "everything the subject mask covers" if weights is not None else "every frame"
        raise ValueError(
            f"{node}: the latents' noise_mask marks {where} as given, so there is nothing to learn (an "
            f"image-to-video latent of one frame?). Train on a clip of several frames, or on latents without a noise mask."
        )
    return mask


def check_clips(model, latents: list, positive: list, data, down: int, node: str) -> torch.Tensor | None:
    """A video model's training data checked before any step, LATENT by LATENT (with its own
    CONDITIONING, or the one for all): the start image an i2v conditioning carries fits the
    latents, no latent is empty, and the noise mask; returns that noise mask (0 = given frames,
    one for every sample) or None. ``data``: the dataset built from them (its subject weights);
    ``down``: image pixels per latent pixel."""
    items = [item if isinstance(item, dict) else {"samples": item} for item in latents]
    items = [item for item in items if item["samples"].shape[0] > 0]
    conds = positive if len(positive) == len(items) else [positive[0]] * len(items)
    given_per_item, offset = [], 0
    for item, cond in zip(items, conds):
        samples = item["samples"]
        if samples.dim() == 4:
            samples = samples.unsqueeze(2)  # images: one frame each, as the dataset holds them
        n = samples.shape[0]
        weights = None if data.weights is None else torch.stack(data.weights[offset:offset + n])
        offset += n
        check_start_image(model, samples, cond, down, node)
        given = noise_mask(item, samples, weights, node)
        check_not_empty(samples, given, node)
        given_per_item.append(given)
    if len(given_per_item) > 1 and any(given is not None for given in given_per_item):
        raise ValueError(
            f"{node}: a LATENT with a noise_mask (given frames) came with {len(given_per_item) - 1} other LATENT(s). "
            f"Train latents with given frames as one LATENT batch, on their own."
        )
    return given_per_item[0] if given_per_item else None


def check_not_empty(samples: torch.Tensor, given: torch.Tensor | None, node: str) -> None:
    """Latents with one value per channel wherever the model has to make something hold no
    picture: an empty video (EmptyHunyuanLatentVideo, ...: zeros) or the sampling start of an
    image-to-video node (Wan22ImageToVideoLatent, LTXVImgToVideo: the start image, then the
    format's empty value), not a clip."""
    learn = torch.ones_like(samples, dtype=torch.bool) if given is None else (
        comfy.utils.reshape_mask(given.float(), samples.shape) > 0)
    empty = []
    for i, (latent, where) in enumerate(zip(samples, learn)):
        spread = [float(v.max() - v.min()) for v in (channel[inside] for channel, inside in zip(latent, where)) if v.numel()]
        if not any(spread):
            empty.append(i + 1)
    if empty:
        raise ValueError(
            f"{node}: latent {', '.join(map(str, empty))} holds no picture in the frames to learn (one value per "
            f"channel: an empty latent or the "
            f"start latent of an image-to-video node, not your images. Encode the images or the clip with VAE Encode "
            f"(for LTX-Video i2v: then LTXVImgToVideoInplace)."
        )


def as_sampled(base, x_t: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor,
               given: torch.Tensor | None) -> torch.Tensor:
    """The model input where a latent's noise mask (``given``: 0 = given, e.g. the start frame of
    an image-to-video latent) keeps the latent, made as ComfyUI's sampler makes it: the model's
    own ``scale_latent_inpaint`` there (clean for Wan 2.2, LTX-Video, HunyuanVideo; the noised
    latent, i.e. no change, for the others), x_t elsewhere. The model reads the mask too
    (per-frame timesteps: 0 on given frames) from the conditioning."""
    if given is None:
        return x_t
    kept = base.scale_latent_inpaint(x=x_t, sigma=sigma, noise=noise, latent_image=x0, denoise_mask=given)
    return x_t * given + kept * (1.0 - given)


def loss_weights(weights: torch.Tensor | None, given: torch.Tensor | None, dims: int) -> torch.Tensor | None:
    """The loss weights of a group of rows: their subject masks (``weights``: (n, 1, h, w), one mask
    for every frame, or (n, 1, T, h, w) per frame) times the frames the model has to make
    (``given``, those rows' noise mask): the sampler puts the given latent back where the noise
    mask is 0, so the model's output there counts for nothing. ``dims``: the error's dimensions."""
    w = weights
    if w is not None and w.dim() == dims - 1:
        w = w.unsqueeze(2)  # 5-D latents, one mask for every frame
    if given is not None:
        w = given if w is None else w * given
    return w


def expert_prefix(filename_prefix: str, expert: str, span: tuple[int, int] | None) -> str:
    """One expert's files beside the other's: <prefix>_high_noise_00001_, <prefix>_low_noise_00001_."""
    return filename_prefix if span is None else f"{filename_prefix}_{expert.replace('-', '_')}"
