"""T-LoRA Train: teach the MODEL a concept from one (or a few) images, inside the graph.

Follows the reference recipe of the model's family (SPEC §5; nodes/recipe.py, model_kinds.Recipe),
not ComfyUI's own LoRA trainer: AdamW or Prodigy, uniform timesteps (0..999, flow models 1..1000),
the model's own target (ε, v or flow velocity), and the rank mask of every sample following its
own timestep. Data comes as lists (nodes/dataset.py); previews are sampled between parts of the
run (nodes/previews.py). The loop itself (optimizer, random draws, checkpoints, cancel) is
tlora_core.trainer; this module connects it to ComfyUI: conditioning goes through ComfyUI's own
sampling machinery (a Guider and a Sampler whose ``sample`` is the training loop), the adapter
through the same glue as Timestep-Aware Apply (nodes/patching.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
from comfy_api.latest import io
from comfy_extras.nodes_custom_sampler import Guider_Basic

from ..tlora_core import VARIANT_LABELS, TLoRA, TLoRAConfig, read_tlora, save_tlora
from ..tlora_core.trainer import Batch, Checkpoint, NoGradient, Trainer, TrainingDiverged, TrainResult, TrainSettings, recipe_from
from . import compat, dataset, model_kinds, patching, previews, training_patches, video
from . import recipe as recipes  # 'recipe' is also an input's name
from .load import tlora_files
from .routes import prompt_server
from .types import CATEGORY, TLora, node_message

log = logging.getLogger(__name__)

DISPLAY_NAME = "T-LoRA Train"
VARIANTS = {label: key for key, label in VARIANT_LABELS.items()}  # "T-LoRA" -> "tlora"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NO_RESUME = "none"
# metadata that an exact resume needs unchanged (warned about, not refused)
RESUME_EXACT = ("learning_rate", "batch_size", "images", "training_dtype")
PROGRESS_EVENT = "tlora.train.progress"


def check_trainable(model, samples: torch.Tensor) -> None:
    """Everything about the model and the latents that would otherwise fail only after the
    model is loaded and the adapter initialised."""
    kind = model_kinds.kind_of(model, DISPLAY_NAME)
    model_kinds.check_sampling(model, DISPLAY_NAME)
    model_kinds.prediction(model.get_model_object("model_sampling"), DISPLAY_NAME)
    latent_format = model.get_model_object("latent_format")
    channels = latent_format.latent_channels
    dims = 2 + getattr(latent_format, "latent_dimensions", 2)  # (B, C, H, W) or (B, C, T, H, W)
    if samples.dim() == 5 and not kind.video and (dims == 4 or samples.shape[2] != 1):
        raise ValueError(
            f"{DISPLAY_NAME}: the latents are a video ({samples.shape[2]} frames, shape {tuple(samples.shape)}), but "
            f"{kind.label} makes images. Encode images with this model's VAE (VAE Encode), or train a video model."
        )
    if samples.dim() not in (4, dims) or samples.shape[1] != channels:
        got = f"{samples.shape[1]} channels" if samples.dim() in (4, 5) else f"shape {tuple(samples.shape)}"
        raise ValueError(
            f"{DISPLAY_NAME}: the latents have {got}, this {kind.label} model needs {channels}. Encode the images "
            f"with this model's VAE (VAE Encode)."
        )


def _downscale(model) -> int:
    """Image pixels per latent pixel (ComfyUI 0.3.64's latent formats don't say: 8)."""
    return int(getattr(model.get_model_object("latent_format"), "spacial_downscale_ratio", 8))


def subject_weights(mask: torch.Tensor | None, latents: torch.Tensor, downscale: int = 8) -> torch.Tensor | None:
    """A MASK (image or latent resolution, one or one per image) as 0/1 weights (M, 1, h, w).
    downscale: image pixels per latent pixel (8 for most VAEs, 16 for FLUX.2's, ...)."""
    if mask is None:
        return None
    n, h, w = latents.shape[0], latents.shape[-2], latents.shape[-1]
    mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()
    if mask.shape[0] not in (1, n):
        raise ValueError(
            f"{DISPLAY_NAME}: got {mask.shape[0]} masks for {n} latents. Give one mask for all images or one per image."
        )
    size = tuple(mask.shape[-2:])
    if size not in ((h, w), (downscale * h, downscale * w)):
        raise ValueError(
            f"{DISPLAY_NAME}: the mask is {size[1]}x{size[0]} but the latents need {downscale * w}x{downscale * h} (image size) or "
            f"{w}x{h} (latent size). Make the mask from the same image you encoded."
        )
    weights = (comfy.utils.reshape_mask(mask, (mask.shape[0], 1, h, w)) > 0.5).float()
    if bool((weights.flatten(1).sum(1) == 0).any()):
        raise ValueError(f"{DISPLAY_NAME}: a mask covers no pixel of its image; paint the subject white.")
    return weights


# -- files ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFiles:
    """Where one training run writes: every file inside the first loras folder."""

    folder: str
    stem: str  # e.g. "concept_00003"
    root: str

    @classmethod
    def new(cls, filename_prefix: str, node: str = DISPLAY_NAME) -> "RunFiles":
        root = os.path.abspath(folder_paths.get_folder_paths("loras")[0])
        os.makedirs(root, exist_ok=True)
        try:
            folder, filename, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, root)
        except Exception as err:  # ComfyUI raises a bare Exception for paths outside the folder
            raise ValueError(
                f"{node}: filename_prefix '{filename_prefix}' points outside the loras folder ({root}). "
                f"Use a relative name like 'tlora/my_cat'."
            ) from err
        os.makedirs(folder, exist_ok=True)
        return cls(folder, f"{filename}_{counter:05}", root)

    def final(self) -> str:
        return os.path.join(self.folder, f"{self.stem}_.safetensors")

    def checkpoint(self, step: int, reason: str) -> str:
        suffix = "" if reason == "checkpoint" else f"_{reason}"
        return os.path.join(self.folder, f"{self.stem}_step{step:05}{suffix}.safetensors")

    def preview(self, step: int) -> str:
        return previews.saved_path(self.folder, self.stem, step)

    def preview_grid(self) -> str:
        return os.path.join(self.folder, f"{self.stem}_previews.png")

    def relative(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")


# -- progress, cancel, checkpoints ---------------------------------------------------------------------
class _NodeCallbacks:
    """Progress bar and live loss for the UI, Cancel, and checkpoint files for the core loop."""

    def __init__(self, files: RunFiles, node_id: str | None, metadata: dict[str, str], summary: str = "",
                 schedule: dict | None = None):
        self.files = files
        self.node_id = node_id
        self.metadata = metadata
        self.summary = summary  # what the run trains with, shown under the step counter
        self.schedule = schedule  # recipes.schedule_facts: the frontend plots it from the first step on
        self.interrupted = False
        self.saved: list[str] = []
        self.pbar = None

    def on_step(self, step: int, total: int, loss: float) -> None:
        if self.pbar is None:
            self.pbar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        try:
            self.pbar.update_absolute(step, total)
        except comfy.model_management.InterruptProcessingException:
            self.interrupted = True  # ComfyUI's progress hook reports Cancel by raising; stop at the next step
        server = prompt_server()
        if server is not None and self.node_id is not None:
            text = f"step {step}/{total} · loss {loss:.4f}"
            server.send_progress_text(f"{text}\n{self.summary}" if self.summary else text, self.node_id)
            server.send_sync(PROGRESS_EVENT, {"node": self.node_id, "step": step, "steps": total, "loss": loss,
                                              "schedule": self.schedule})

    def should_stop(self) -> bool:
        return self.interrupted or comfy.model_management.processing_interrupted()

    def noticing_cancel(self, compute_gradients):
        """compute_gradients that remembers a Cancel raised inside the model call (ComfyUI 0.33
        checks it on every op, and clears the flag as it raises), so the trainer ends the run as
        cancelled rather than failed."""

        def compute(batch: Batch) -> float:
            try:
                return compute_gradients(batch)
            except comfy.model_management.InterruptProcessingException:
                self.interrupted = True
                raise

        return compute

    def save(self, checkpoint: Checkpoint) -> None:
        """A resumable checkpoint (adapter, optimizer and RNG state)."""
        path = self.files.checkpoint(checkpoint.step, checkpoint.reason)
        self.write(path, checkpoint.adapter, checkpoint.training_state)
        log.info("T-LoRA: saved %s (step %d, %s)", path, checkpoint.step, checkpoint.reason)

    def write(self, path: str, adapter: TLoRA, training_state: dict | None) -> None:
        try:
            save_tlora(path, adapter, "fp32", training_state=training_state, extra_metadata=self.metadata)
        except OSError as err:
            previous = self.saved[-1] if self.saved else "none written yet"
            raise OSError(
                f"{DISPLAY_NAME}: could not write {path} ({err}). Free disk space and resume from the previous "
                f"checkpoint ({previous}), which is intact."
            ) from err
        self.saved.append(self.files.relative(path))


def _init_progress(node_id: str | None):
    """Shows the (SVD-heavy) initialisation on the node, and lets Cancel stop it."""

    def progress(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        server = prompt_server()
        if server is not None and node_id is not None and (done == total or done % 8 == 0):
            server.send_progress_text(f"initialising adapter: layer {done}/{total}", node_id)

    return progress


# -- the loop inside ComfyUI's sampling machinery -----------------------------------------------------
class _TrainSampler(comfy.samplers.Sampler):
    """A Sampler whose ``sample`` is the training loop (up to ``stop_at``): ComfyUI has loaded the
    model, processed the conditioning and merged our wrappers by the time it is called."""

    def __init__(self, trainer: Trainer, callbacks: _NodeCallbacks, capture: training_patches.OutputCapture,
                 data: dataset.Dataset):
        self.trainer = trainer
        self.callbacks = callbacks
        self.capture = capture
        self.data = data
        self.stop_at: int | None = None
        self.result: TrainResult | None = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        base = model_wrap.inner_model
        sampling = base.model_sampling
        conds = model_wrap.conds["positive"]
        model_options = extra_args["model_options"]
        device = latent_image.device
        # each sample in the model's latent space, as the guider does it for one latent batch
        x0_all = [base.process_latent_in(x.unsqueeze(0).to(device))[0] if torch.count_nonzero(x) > 0 else x.to(device)
                  for x in self.data.latents]
        shapes = self.data.shapes
        captions = self.data.captions
        weights = None if self.data.weights is None else [w.to(device) for w in self.data.weights]

        def compute_gradients(batch: Batch) -> float:
            idx = batch.indices.tolist()
            sigma_all = model_kinds.timestep_to_sigma(sampling, batch.timesteps, DISPLAY_NAME).to(device)
            # one model call per caption (and per size, for resolution buckets), in caption order
            groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
            for row, i in enumerate(idx):
                groups.setdefault((captions[i], shapes[i]), []).append(row)
            total = 0.0
            for (caption, _), rows in sorted(groups.items(), key=lambda item: (item[0][0], item[1][0])):
                x0 = torch.stack([x0_all[idx[r]] for r in rows])
                noise_b = batch.stacked_noise(rows).to(device, x0.dtype)
                sigma = sigma_all[rows].to(x0.dtype)
                x_t = sampling.noise_scaling(sigma, noise_b, x0)
                # a video latent's noise mask (one for all samples): its given frames as the sampler keeps them
                given = None if denoise_mask is None else denoise_mask[:1].expand(len(rows), *denoise_mask.shape[1:])
                x_t = video.as_sampled(base, x_t, sigma, noise_b, x0, given)
                target = model_kinds.training_target(sampling, sigma, noise_b, x0, DISPLAY_NAME)
                comfy.samplers.calc_cond_batch(base, [[conds[caption]]], x_t, sigma, model_options)
                error = (self.capture.take().float() - target) ** 2
                w = None if weights is None else torch.stack([weights[idx[r]] for r in rows])
                w = video.loss_weights(w, given, error.dim())
                if w is None:
                    loss = error.mean()
                else:
                    loss = (error * w).sum() / w.expand_as(error).sum()
                share = len(rows) / len(idx)
                # backward per group: checkpointed blocks recompute with this group's masks
                (loss * share).backward()
                total += loss.item() * share
            return total

        self.result = self.trainer.run(self.callbacks.noticing_cancel(compute_gradients), stop_at=self.stop_at)
        return latent_image


# -- the node -------------------------------------------------------------------------------------------
class TLoRATrain(io.ComfyNode):
    """Train a T-LoRA on one (or a few) VAE-encoded images."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLoRA_Train",
            display_name=DISPLAY_NAME,
            category=CATEGORY,
            description=(
                "Trains a timestep-dependent LoRA on the images: fewer rank components at high noise, so the "
                "concept is learned without memorising the picture's pose, background and layout. Saves the "
                "adapter into models/loras and outputs the model with it applied."
            ),
            is_output_node=True,
            # datasets arrive as lists (ComfyUI 0.33's dataset nodes); a plain LATENT batch is a list of one
            is_input_list=True,
            inputs=[
                io.Model.Input(
                    "model", tooltip="The model to teach (SD, SDXL, FLUX and the other image and video families in the README). It is not changed.",
                ),
                io.Latent.Input(
                    "latents",
                    tooltip="The training image(s) or a short clip, VAE-encoded (VAE Encode), or a dataset's latents (Make "
                            "Training Dataset, Resolution Bucket). One image is enough; different sizes are trained at their size.",
                ),
                io.Conditioning.Input(
                    "positive",
                    tooltip="The prompt, e.g. 'a photo of sks cat': one for all images, or one caption per image (a "
                            "dataset's conditioning).",
                ),
                io.Int.Input("steps", default=800, min=1, max=100000, tooltip="Optimizer steps. The paper: 800 (Vanilla 500)."),
                io.Float.Input(
                    "learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-6, round=False,
                    tooltip="AdamW learning rate. The paper: 1e-4.",
                ),
                io.Int.Input("rank", default=64, min=1, max=1024, tooltip="Adapter rank R, reached at low noise. The paper: 64."),
                io.Int.Input(
                    "min_rank", default=32, min=1, max=1024,
                    tooltip="Rank kept at the highest noise; must be <= rank. The paper: half the rank.",
                ),
                io.Float.Input(
                    "schedule_power", default=1.0, min=0.05, max=10.0, step=0.05,
                    tooltip="Exponent p of r(t) = ((T-t)/T)^p (R - r_min) + r_min. 1.0 is the paper's linear schedule.",
                ),
                io.Combo.Input(
                    "variant", options=list(VARIANTS), default="T-LoRA",
                    tooltip="T-LoRA: orthogonal (Ortho-LoRA) components, the paper's best. Vanilla: plain LoRA factors, masked.",
                ),
                io.Combo.Input(
                    "init", options=["last", "principal", "middle"], default="last",
                    tooltip="Which singular vectors of a random matrix seed the orthogonal factors. 'last' works best.",
                ),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Samples per step, each at its own timestep and rank."),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                    tooltip="Seeds the initial adapter, timesteps and noise. Same seed and inputs: same adapter.",
                ),
                io.Int.Input(
                    "save_every", default=200, min=0, max=100000,
                    tooltip="Write a resumable checkpoint every N steps; the last step and a Cancel always get one "
                            "(0 = only those), so a finished run can be continued with more steps.",
                ),
                io.String.Input(
                    "filename_prefix", default="tlora/concept",
                    tooltip="File name inside models/loras; a counter is added so nothing is overwritten.",
                ),
                io.Combo.Input(
                    "resume_from", options=[NO_RESUME] + tlora_files(), default=NO_RESUME,
                    tooltip="Continue from a checkpoint of an earlier run with the same settings, up to 'steps'.",
                ),
                io.Combo.Input(
                    "training_dtype", options=list(DTYPES), default="fp32",
                    tooltip="Precision of the model during training. fp32 is the reference's; bf16 is faster on GPUs.",
                ),
                io.Boolean.Input(
                    "gradient_checkpointing", default=True,
                    tooltip="Recompute activations in the backward pass: much less memory, about a third slower.",
                ),
                io.Mask.Input(
                    "mask", optional=True,
                    tooltip=(
                        "Optional subject mask: the loss only looks at the white part (recommended for people). "
                        "Video: one mask for all frames, or one per frame (latent or video frames)."
                    ),
                ),
                io.Conditioning.Input(
                    "preview_prompts", optional=True,
                    tooltip="Optional prompts to sample while training (e.g. the concept in new places), one per entry: "
                            "combine several with Conditioning (Combine). Needs preview_vae.",
                ),
                io.Vae.Input(
                    "preview_vae", optional=True,
                    tooltip="The VAE that decodes the previews: the one the images were encoded with.",
                ),
                io.Int.Input(
                    "preview_every", default=100, min=0, max=100000, optional=True,
                    tooltip="Sample the previews every N steps and at the end (0 = only at the end).",
                ),
                io.Int.Input("preview_steps", default=20, min=1, max=200, optional=True,
                             tooltip="Sampling steps of each preview."),
                io.Float.Input(
                    "preview_cfg", default=0.0, min=0.0, max=30.0, step=0.1, optional=True,
                    tooltip="CFG of the previews. 0 = the model family's: 1.0 for FLUX.1/FLUX.2 (guidance-distilled), "
                            "5.0 for the others.",
                ),
                io.Combo.Input("preview_sampler", options=previews.SAMPLERS, default="euler", optional=True,
                               tooltip="Sampler of the previews."),
                io.Combo.Input("preview_scheduler", options=previews.SCHEDULERS, default="simple", optional=True,
                               tooltip="Scheduler of the previews."),
                io.Int.Input(
                    "preview_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False, optional=True,
                    tooltip="Seed of the previews' noise: the same for every preview, so columns differ only by training.",
                ),
                io.Conditioning.Input(
                    "preview_negative", optional=True,
                    tooltip="Optional negative prompt for the previews (default: the prompt zeroed out).",
                ),
                io.Combo.Input(
                    "recipe", options=list(recipes.CHOICES), default=recipes.REFERENCE, optional=True,
                    tooltip="'family reference': the reference's settings for the model's family (SD: T-LoRA 64/32, "
                            "AdamW 1e-4; FLUX and other transformers: Vanilla 32/1, Prodigy 1.0), ignoring variant, rank, "
                            "min_rank, learning_rate and optimizer here. 'custom': the values set on this node.",
                ),
                io.Combo.Input(
                    "optimizer", options=list(recipes.OPTIMIZER_LABELS), default="AdamW", optional=True,
                    tooltip="With recipe 'custom': AdamW (the SD-XL reference; learning_rate ~1e-4) or Prodigy (the FLUX "
                            "reference; learning_rate ~1.0, it finds its own step size).",
                ),
                io.Combo.Input(
                    "expert", options=list(model_kinds.EXPERTS), default="none", optional=True,
                    tooltip=(
                        "Wan 2.2 A14B comes as a high-noise and a low-noise expert, each sampling only its own "
                        "timesteps: say which one MODEL is and train one T-LoRA per expert (the files end in "
                        "_high_noise / _low_noise). Each trains on its expert's timesteps only (split at t 875, I2V "
                        "900), so the high-noise T-LoRA runs at ranks r_min to about r_min + (rank - min_rank)/8 "
                        "(32-36 for 64/32). none: every other model."
                    ),
                ),
            ],
            outputs=[
                # no id: "model" is already an input id, and V3 wants ids unique across inputs and outputs
                io.Model.Output(tooltip="The model with the trained T-LoRA applied timestep-aware."),
                TLora.Output("tlora", tooltip="The trained adapter, for Timestep-Aware Apply on other models of the same kind."),
                io.LossMap.Output("loss", tooltip="Loss per step, for the core 'Plot Loss Graph' node."),
                io.Image.Output(
                    "previews",
                    tooltip="The previews as one grid: a row per prompt, a column per step previewed (a black square "
                            "without previews).",
                ),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls, model, latents, positive, steps, learning_rate, rank, min_rank, schedule_power, variant, init,
        batch_size, seed, save_every, filename_prefix, resume_from, training_dtype, gradient_checkpointing, mask=None,
        preview_prompts=None, preview_vae=None, preview_every=None, preview_steps=None, preview_cfg=None,
        preview_sampler=None, preview_scheduler=None, preview_seed=None, preview_negative=None, recipe=None,
        optimizer=None, expert=None,
    ) -> io.NodeOutput:
        # every input comes as a list (is_input_list): data inputs are the dataset, the rest one value each
        (model, steps, learning_rate, rank, min_rank, schedule_power, variant, init, batch_size, seed, save_every,
         filename_prefix, resume_from, training_dtype, gradient_checkpointing) = (
            _one(v) for v in (model, steps, learning_rate, rank, min_rank, schedule_power, variant, init, batch_size,
                              seed, save_every, filename_prefix, resume_from, training_dtype, gradient_checkpointing))
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        if variant not in VARIANTS:
            raise ValueError(f"{DISPLAY_NAME}: variant {variant!r} is not one of {', '.join(map(repr, VARIANTS))}.")
        try:
            run_recipe = recipes.resolve(
                model, _one(recipe), VARIANTS[variant], rank, min_rank, learning_rate, _one(optimizer), DISPLAY_NAME
            )
            expert = "none" if _one(expert) is None else _one(expert)
            span = model_kinds.expert_range(model, expert, DISPLAY_NAME)
            settings = replace(run_recipe.settings(steps, batch_size, seed, save_every), timestep_range=span)
            kind = model_kinds.kind_of(model, DISPLAY_NAME)
            config = TLoRAConfig(
                variant=run_recipe.variant, rank=run_recipe.rank, min_rank=run_recipe.min_rank,
                schedule_power=schedule_power, init=init, model_family=kind.family, timestep_range=span,
            )
        except ValueError as err:
            raise ValueError(node_message(DISPLAY_NAME, err)) from err
        filename_prefix = video.expert_prefix(filename_prefix, expert, span)
        if training_dtype not in DTYPES:
            raise ValueError(f"{DISPLAY_NAME}: training_dtype must be one of {list(DTYPES)}, got {training_dtype!r}.")
        if kind.video:
            def weights_of(m, samples):
                return video.subject_weights(m, samples, _downscale(model), kind.frame_stride, DISPLAY_NAME)
        else:
            def weights_of(m, samples):
                return subject_weights(m, samples, _downscale(model))
        data = dataset.build(model, latents, positive, mask, DISPLAY_NAME, check_trainable, weights_of)
        noise_mask = video.check_clips(model, latents, positive, data, _downscale(model), DISPLAY_NAME) if kind.video else None
        preview = _preview_settings(
            model, data, preview_prompts, preview_vae, preview_every, preview_steps, preview_cfg, preview_sampler,
            preview_scheduler, preview_seed, preview_negative,
        )
        result = train(
            model, data, settings, config, DTYPES[training_dtype], gradient_checkpointing, filename_prefix,
            None if resume_from == NO_RESUME else resume_from, node_id, run_recipe, preview, noise_mask,
        )
        return io.NodeOutput(
            result.model, result.adapter, {"loss": result.losses}, result.previews,
            # tlora_schedule: the schedule the run used, for the plot (a cached result sends it again)
            ui={"tlora_saved": [result.saved], "tlora_summary": [result.summary], "tlora_schedule": [result.schedule]},
        )


def _one(value):
    """One input's value from the list the executor passes (a node taking lists gets every input
    as a list; a value that isn't a list came from a direct call)."""
    return value[0] if isinstance(value, list) else value


def _entries(conditionings: list | None) -> list:
    """A list of CONDITIONINGs as one flat list of entries (each entry: one prompt)."""
    return [entry for conditioning in conditionings or [] for entry in conditioning]


def _preview_settings(model, data: dataset.Dataset, prompts, vae, every, steps, cfg, sampler, scheduler, seed,
                      negative) -> previews.PreviewSettings | None:
    prompts, vae = _entries(prompts), _one(vae)
    if not prompts and vae is None:
        return None
    if not prompts or vae is None:
        missing = "preview_vae (the VAE the images were encoded with)" if vae is None else "preview_prompts"
        raise ValueError(f"{DISPLAY_NAME}: previews need both preview_prompts and preview_vae; connect {missing}, "
                         f"or disconnect the other to train without previews.")
    settings = previews.PreviewSettings(
        prompts=prompts, negative=_entries(negative) or None, vae=vae,
        every=100 if _one(every) is None else int(_one(every)), steps=int(_one(steps) or 20),
        cfg=float(_one(cfg) or 0.0), sampler=_one(sampler) or "euler", scheduler=_one(scheduler) or "simple",
        seed=int(_one(seed) or 0),
    )
    previews.check(settings, model, data.conditioning, DISPLAY_NAME)
    return settings


@dataclass
class TrainOutput:
    model: object
    adapter: TLoRA
    losses: list[float]
    saved: str  # the final file, relative to the loras folder
    previews: torch.Tensor  # the preview grid (IMAGE)
    summary: str  # what the run trained with, on what
    schedule: dict  # recipes.schedule_facts of the run


def _resume(path_name: str, config: TLoRAConfig, targets: dict[str, model_kinds.Target], optimizer: str):
    path = folder_paths.get_full_path("loras", path_name)
    if path is None:
        raise FileNotFoundError(
            f"{DISPLAY_NAME}: resume_from '{path_name}' is not in the loras folder "
            f"({', '.join(folder_paths.get_folder_paths('loras'))}). Pick a checkpoint from the list (press R to "
            f"refresh it), or 'none' to start a new run."
        )
    try:
        loaded = read_tlora(path)
    except ValueError as err:
        raise ValueError(node_message(DISPLAY_NAME, err)) from err
    if loaded.needs_schedule:
        raise ValueError(
            f"{DISPLAY_NAME}: resume_from '{path_name}' was trained by the reference trainer and has no optimizer "
            f"or RNG state to continue from. Use it with T-LoRA Load, or start a new run (resume_from = none)."
        )
    got = loaded.adapter.config
    differences = [
        f"{field} {getattr(got, field)!r} (this node: {getattr(config, field)!r})"
        for field in ("model_family", "variant", "rank", "min_rank", "schedule_power", "init")
        if getattr(got, field) != getattr(config, field)
    ]
    trained_with = recipe_from(loaded.metadata)["optimizer"]
    if trained_with != optimizer:
        names = {key: label for label, key in recipes.OPTIMIZER_LABELS.items()}
        differences.append(f"optimizer {names[trained_with]} (this node: {names[optimizer]}; set recipe 'custom' and "
                           f"optimizer {names[trained_with]})")
    if got.timestep_range != config.timestep_range:  # the other expert's T-LoRA, or a whole-model one
        differences.append(
            f"timesteps {model_kinds.describe_range(got.timestep_range)} (this node: "
            f"{model_kinds.describe_range(config.timestep_range)}; set 'expert' to match)"
        )
    if not differences and loaded.adapter.shapes() != model_kinds.layer_shapes(targets):
        differences.append("its layers (another architecture)")
    if differences:
        raise ValueError(
            f"{DISPLAY_NAME}: resume_from '{path_name}' was trained with other settings: {', '.join(differences)}. "
            f"Set the same values here, or start a new run (resume_from = none)."
        )
    if not loaded.training_state:
        raise ValueError(
            f"{DISPLAY_NAME}: '{path_name}' has no optimizer/RNG state, so it can't be resumed exactly: it is a run's "
            f"final file, kept small for sharing. Pick the run's checkpoint of its last step instead "
            f"(..._stepNNNNN.safetensors, NNNNN = its steps)."
        )
    return loaded


def _warn_if_resumed_differently(path_name: str, stored: dict[str, str], now: dict[str, str]) -> None:
    """Settings that a resume may change on purpose (a lower learning rate after divergence),
    but then it no longer continues exactly the run it came from: say so."""
    changed = [f"{k} {stored[k]} -> {now[k]}" for k in RESUME_EXACT if k in stored and stored[k] != now[k]]
    if changed:
        log.warning("T-LoRA Train: resuming '%s' with changed %s; the result will differ from an uninterrupted run.",
                    path_name, ", ".join(changed))


def train(
    model, data: dataset.Dataset, settings: TrainSettings, config: TLoRAConfig, dtype: torch.dtype,
    gradient_checkpointing: bool, filename_prefix: str, resume_from: str | None, node_id: str | None = None,
    run_recipe: recipes.RunRecipe | None = None, preview: previews.PreviewSettings | None = None,
    noise_mask: torch.Tensor | None = None,
) -> TrainOutput:
    """Train on ``data`` with ``settings`` (from ``run_recipe``; None: the settings as given, the
    conditioning's own guidance), sampling previews between parts of the run if asked."""
    targets = model_kinds.find_targets(model, DISPLAY_NAME)
    files = RunFiles.new(filename_prefix)
    device = model.load_device
    if run_recipe is None:
        run_recipe = recipes.RunRecipe(
            recipes.CUSTOM, config.variant, config.rank, config.min_rank, settings.optimizer, settings.learning_rate,
            settings.max_grad_norm, settings.first_timestep, None,
        )
    if config.model_family == "flux" and config.variant == "tlora":
        log.info("T-LoRA: the paper trains FLUX with Vanilla T-LoRA; training the orthogonal variant as asked.")
    with torch.inference_mode(False):
        loaded = None
        if resume_from is not None:
            loaded = _resume(resume_from, config, targets, run_recipe.optimizer)
            resumed = recipes.following(run_recipe, loaded.metadata)
            changed = recipes.changed_by_resume(run_recipe, resumed)
            if changed:
                log.info("T-LoRA Train: '%s' continues with the rules it was trained with: %s.", resume_from, ", ".join(changed))
            run_recipe = resumed
            settings = run_recipe.settings(settings.steps, settings.batch_size, settings.seed, settings.save_every)
        metadata = {
            "learning_rate": repr(settings.learning_rate), "seed": str(settings.seed), "batch_size": str(settings.batch_size),
            "steps_planned": str(settings.steps), "training_dtype": str(dtype).removeprefix("torch."),
            "images": str(len(data.latents)), "base_model": type(model.model.model_config).__name__,
            **run_recipe.metadata(settings),
        }
        if loaded is not None:
            _warn_if_resumed_differently(resume_from, loaded.metadata, metadata)
            adapter, state = loaded.adapter, loaded.training_state
        else:
            shapes = model_kinds.layer_shapes(targets)
            adapter = TLoRA.create(config, shapes, settings.seed, svd_device=device, progress=_init_progress(node_id))
            state = None
        adapter.to(device).requires_grad_(True)
        summary = f"{run_recipe.describe()}; {data.describe(_downscale(model))}"
        log.info("T-LoRA Train: %s", summary)
        schedule = recipes.schedule_facts(run_recipe, config)
        callbacks = _NodeCallbacks(files, node_id, metadata, summary, schedule)
        trainer = Trainer(adapter, settings, data.shapes, callbacks=callbacks)
        if state is not None:
            trainer.load_state_dict(state)

        train_model = model.clone()
        if train_model.model.get_dtype() != dtype or train_model.model.manual_cast_dtype not in (None, dtype):
            # forces a per-call cast of every weight (Python work per layer per forward, and a
            # copy when the dtype differs): only when the weights aren't already in ``dtype``
            train_model.set_model_compute_dtype(dtype)
        patching.attach(train_model, adapter, 1.0, DISPLAY_NAME).training = True
        capture = training_patches.OutputCapture(train_model)
        training_patches.add_training_patches(train_model, gradient_checkpointing, DISPLAY_NAME)
        train_model.model.requires_grad_(False)

        conditioning = data.conditioning
        if run_recipe.guidance is not None:  # the family's training guidance, whatever the prompt carries
            conditioning = [[entry[0], {**entry[1], "guidance": run_recipe.guidance}] for entry in conditioning]
        guider = Guider_Basic(train_model)
        guider.set_conds(conditioning)
        sampler = _TrainSampler(trainer, callbacks, capture, data)
        previewer = None if preview is None else previews.Previewer(preview, model, data.shapes[0], DISPLAY_NAME, node_id)
        dummy = data.latents[0].unsqueeze(0)  # the guider wants one latent; the sampler reads the dataset
        try:
            while True:
                sampler.stop_at = settings.steps if previewer is None else preview.next_stop(trainer.step, settings.steps)
                # (again) after a preview, which loaded its own clone of the same weights
                comfy.model_management.load_models_gpu([train_model], memory_required=1e20, force_full_load=True)
                training_patches.make_weights_autograd_safe(train_model)
                with compat.differentiable_kernels():
                    guider.sample(torch.zeros_like(dummy), dummy, sampler, torch.ones(1), denoise_mask=noise_mask,
                                 seed=settings.seed)
                result = sampler.result
                if result.cancelled:
                    break
                if previewer is not None and preview.due(trainer.step, settings.steps):
                    previewer.take(adapter, trainer.step, settings.steps)
                    previewer.save(files.preview(trainer.step))
                if trainer.step >= settings.steps:
                    break
        except comfy.model_management.InterruptProcessingException:
            trainer.stop()  # Cancel during a preview: keep the step it stopped at
            raise
        except (TrainingDiverged, NoGradient) as err:
            kept = f" ({callbacks.saved[-1]})" if callbacks.saved else ""
            raise RuntimeError(node_message(DISPLAY_NAME, err) + kept) from err
        finally:
            adapter.requires_grad_(False)
        if result.cancelled:
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise comfy.model_management.InterruptProcessingException()

        adapter.to(model.offload_device)
        final = files.final()
        callbacks.write(final, adapter, None)
        if previewer is not None and previewer.columns:
            previewer.save_grid(files.preview_grid())
            summary += f"; {previewer.describe()}"
        log.info("T-LoRA: trained %d steps, saved %s", result.steps_done, final)
        server = prompt_server()
        if server is not None and node_id is not None:
            server.send_progress_text(f"trained {result.steps_done} steps · saved {files.relative(final)}\n{summary}", node_id)
        if callbacks.should_stop():  # Cancel during the last step: the run is complete and saved; stop the graph
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise comfy.model_management.InterruptProcessingException()

    out_model = model.clone()
    patching.attach(out_model, adapter, 1.0, DISPLAY_NAME)
    losses = [trainer.losses[s] for s in sorted(trainer.losses)]
    grid = previewer.grid() if previewer is not None else previews.empty_grid()
    return TrainOutput(out_model, adapter, losses, files.relative(final), grid, summary, schedule)
