"""The T-LoRA training loop (SPEC §5), with everything model-specific injected.

The loop owns what must be exact and resumable: the optimizer (AdamW or Prodigy, with the
reference's hyper-parameters), gradient-norm clipping, every random draw (which samples, which
timesteps, which noise — all from one CPU generator, so a seed means the same run everywhere and
a checkpoint resumes it bit for bit), the step count, divergence checks, checkpoints and cancel.

The caller passes ``compute_gradients(batch) -> loss`` to ``Trainer.run``: run the model on the
batch and call ``backward()`` (ComfyUI's side does that in nodes/train.py). Checkpoints go out
through ``Callbacks.save`` with everything a file needs; the callbacks never reach back into the
trainer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from .adapter import TLoRA, check_timestep_range
from .schedule import NUM_TRAIN_TIMESTEPS

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "prodigy")
# Prodigy's per-group values that change while it trains (its step-size estimate d and the sums
# behind it): a checkpoint must carry them to resume exactly; the rest are hyper-parameters.
_EVOLVING_GROUP_KEYS = {"adamw": (), "prodigy": ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k")}
# What a file written before the recipe was recorded was trained with (recipe_from).
_LEGACY = {"optimizer": "adamw", "max_grad_norm": None, "first_timestep": 0}


@dataclass(frozen=True)
class TrainSettings:
    """steps: total optimizer steps of the run (a resumed run continues up to it).
    save_every: write a checkpoint every N steps (0 = only at the last step and on cancel); the
        last step always gets one, so a finished run can be continued to more steps.
    optimizer: "adamw" or "prodigy" (the reference FLUX code's; ``learning_rate`` is then its
        multiplier, 1.0). betas, weight_decay and eps are both optimizers' (the reference's values);
        Prodigy also runs with the reference's bias correction and safeguard warm-up.
    max_grad_norm: clip the adapter's gradient norm to this (the reference FLUX code: 1.0); None: no
        clipping (the reference SD-XL code).
    first_timestep: timesteps are drawn uniformly from [first_timestep, first_timestep + num_timesteps):
        0 gives the DDPM indices 0..999, 1 gives the flow-matching scheduler's 1..1000 (SPEC §5).
    timestep_range: draw timesteps from [first, end) instead (one expert of a two-expert model, as
        given: first_timestep does not shift it); None: all of them."""

    steps: int = 800
    learning_rate: float = 1e-4
    batch_size: int = 1
    seed: int = 0
    save_every: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    num_timesteps: int = NUM_TRAIN_TIMESTEPS
    optimizer: str = "adamw"
    max_grad_norm: float | None = None
    first_timestep: int = 0
    timestep_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "timestep_range", check_timestep_range(self.timestep_range, self.num_timesteps))
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"T-LoRA: steps ({self.steps!r}) must be >= 1. The paper trains 800 steps.")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"T-LoRA: learning_rate ({self.learning_rate!r}) must be > 0; the paper uses 1e-4.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"T-LoRA: batch_size ({self.batch_size!r}) must be >= 1.")
        if not isinstance(self.save_every, int) or self.save_every < 0:
            raise ValueError(f"T-LoRA: save_every ({self.save_every!r}) must be >= 0 (0 = no intermediate checkpoints).")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"T-LoRA: optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"T-LoRA: max_grad_norm ({self.max_grad_norm!r}) must be > 0, or None for no clipping.")
        if self.first_timestep not in (0, 1):
            raise ValueError(f"T-LoRA: first_timestep ({self.first_timestep!r}) must be 0 (0..999) or 1 (1..1000).")

    def recipe(self) -> dict[str, str]:
        """How this run optimises and draws, as file metadata (``recipe_from``); a resumed run
        follows its checkpoint's, so old files keep the rule they were trained with."""
        return {
            "optimizer": self.optimizer,
            "betas": ",".join(map(repr, self.betas)),
            "weight_decay": repr(self.weight_decay),
            "eps": repr(self.eps),
            "max_grad_norm": "none" if self.max_grad_norm is None else repr(self.max_grad_norm),
            "timesteps": f"{self.first_timestep}..{self.first_timestep + self.num_timesteps - 1}",
        }


def recipe_from(metadata: Mapping[str, str]) -> dict[str, Any]:
    """TrainSettings fields recorded by ``TrainSettings.recipe`` in a file's metadata; a file
    from before they were recorded was trained with AdamW, no clipping and timesteps 0..999."""
    if "optimizer" not in metadata:
        return dict(_LEGACY)
    try:
        clip = metadata.get("max_grad_norm", "none")
        out: dict[str, Any] = {
            "optimizer": metadata["optimizer"],
            "max_grad_norm": None if clip == "none" else float(clip),
            "first_timestep": int(metadata.get("timesteps", "0..999").split("..")[0]),
        }
        if "betas" in metadata:
            beta1, beta2 = (float(b) for b in metadata["betas"].split(","))
            out["betas"] = (beta1, beta2)
        for key in ("weight_decay", "eps"):
            if key in metadata:
                out[key] = float(metadata[key])
    except ValueError as err:
        raise ValueError(f"T-LoRA: the file's training recipe can't be read ({err}): {dict(metadata)}.") from err
    return out


def _optimizer(params: list[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=settings.learning_rate, betas=settings.betas, weight_decay=settings.weight_decay, eps=settings.eps
        )
    try:
        from prodigyopt import Prodigy  # optional: only runs that ask for Prodigy need it
    except ImportError as err:
        raise ImportError(
            "T-LoRA: the Prodigy optimizer needs the 'prodigyopt' package. Install it into ComfyUI's Python "
            "(pip install prodigyopt, or pip install -r requirements.txt of this pack), or choose optimizer AdamW."
        ) from err
    # the reference FLUX run.py's settings: decoupled weight decay, bias correction, safeguard warm-up
    return Prodigy(
        params, lr=settings.learning_rate, betas=settings.betas, weight_decay=settings.weight_decay, eps=settings.eps,
        decouple=True, use_bias_correction=True, safeguard_warmup=True,
    )


@dataclass(frozen=True)
class Batch:
    """One optimizer step's draw. step: 1-based number of the step this batch trains.
    indices: (B,) which training samples; timesteps: (B,) int64 in [first_timestep, first_timestep + T);
    noise: one float32 standard-normal tensor per row, of that row's sample shape."""

    step: int
    indices: torch.Tensor
    timesteps: torch.Tensor
    noise: tuple[torch.Tensor, ...]

    def stacked_noise(self, rows: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """(len(rows), *shape) noise of these rows (all of one sample shape); None: every row."""
        picked = self.noise if rows is None else [self.noise[int(r)] for r in rows]
        return torch.stack(list(picked))


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds, handed to ``Callbacks.save``. reason: "checkpoint" (every
    save_every steps and the last step), "cancelled", "error" or "diverged"."""

    step: int
    reason: str
    adapter: TLoRA
    training_state: dict[str, torch.Tensor]


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf; the adapter keeps its last good values, saved as
    the checkpoint of the step before (unless that step was already saved)."""

    def __init__(self, step: int, loss: float, last_checkpoint_step: int) -> None:
        self.step = step
        self.last_checkpoint_step = last_checkpoint_step
        kept = (
            f"the checkpoint of step {last_checkpoint_step} is kept"
            if last_checkpoint_step > 0
            else "no checkpoint was written before it"
        )
        super().__init__(
            f"T-LoRA: training diverged at step {step} (loss {loss}); {kept}. "
            f"Lower 'learning_rate' (e.g. by 10x) or use training_dtype fp32, then resume or retrain."
        )


class NoGradient(RuntimeError):
    """compute_gradients ran but no gradient reached the adapter: it isn't in the model's graph."""


class Callbacks(Protocol):
    def on_step(self, step: int, total: int, loss: float) -> None: ...

    def should_stop(self) -> bool: ...

    def save(self, checkpoint: Checkpoint) -> None: ...


@dataclass
class TrainResult:
    steps_done: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss
    cancelled: bool = False


class Trainer:
    """Train ``adapter`` in place.

    sample_shapes: one shape per training sample (latent); samples of different shapes (resolution
    buckets) are fine: a batch's noise is drawn per shape.
    """

    def __init__(
        self,
        adapter: TLoRA,
        settings: TrainSettings,
        sample_shapes: Sequence[tuple[int, ...]],
        callbacks: Callbacks | None = None,
    ) -> None:
        if len(sample_shapes) < 1:
            raise ValueError("T-LoRA: there is nothing to train on (0 latents).")
        self.adapter = adapter
        self.settings = settings
        self.sample_shapes = [tuple(shape) for shape in sample_shapes]
        self.num_samples = len(self.sample_shapes)
        self.callbacks = callbacks
        self.params = list(adapter.trainable_parameters())
        self.optimizer = _optimizer(self.params, settings)
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed & 0xFFFF_FFFF_FFFF_FFFF)
        self.step = 0
        self.start_step = 0
        self.last_checkpoint_step = 0
        self.losses: dict[int, float] = {}

    # -- state, for checkpoints and resume ----------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Step, generator and optimizer state as tensors. The optimizer's per-parameter state
        goes under ``optimizer.<i>.<key>`` (Python numbers, like Prodigy's step count, under
        ``optimizer_value.<i>.<key>``), its evolving per-group values under
        ``optimizer_group.<g>.<key>``."""
        state: dict[str, torch.Tensor] = {
            "step": torch.tensor(self.step, dtype=torch.int64),
            "rng": self.generator.get_state(),
        }
        for index, param in enumerate(self.params):
            for key, value in self.optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    state[f"optimizer.{index}.{key}"] = value.detach().to("cpu", copy=True)
                else:
                    state[f"optimizer_value.{index}.{key}"] = _number_tensor(value)
        for g, group in enumerate(self.optimizer.param_groups):
            for key in _EVOLVING_GROUP_KEYS[self.settings.optimizer]:
                if key in group:
                    state[f"optimizer_group.{g}.{key}"] = _number_tensor(group[key])
        if self.losses:
            steps = sorted(self.losses)
            state["losses"] = torch.tensor([[s, self.losses[s]] for s in steps], dtype=torch.float64)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        try:
            self.step = int(state["step"])
            self.generator.set_state(state["rng"].to(torch.uint8))
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"T-LoRA: the checkpoint has no usable training state ({err}).") from err
        per_param: dict[int, dict[str, Any]] = {}
        groups: dict[int, dict[str, Any]] = {}
        for key, tensor in state.items():
            kind, _, rest = key.partition(".")
            if kind in ("optimizer", "optimizer_value", "optimizer_group"):
                position, entry = rest.split(".", 1)
                value: Any = tensor if kind == "optimizer" else tensor.item()
                (groups if kind == "optimizer_group" else per_param).setdefault(int(position), {})[entry] = value
        if per_param and max(per_param) >= len(self.params):
            raise ValueError(
                f"T-LoRA: the checkpoint's optimizer state is for {max(per_param) + 1} parameters, this adapter has "
                f"{len(self.params)}. It belongs to another rank or variant."
            )
        for index, values in per_param.items():
            param = self.params[index]
            self.optimizer.state[param] = {
                k: (v.to(param.device) if k != "step" else v.to(torch.float32)) if isinstance(v, torch.Tensor) else v
                for k, v in values.items()
            }
        for g, values in groups.items():
            self.optimizer.param_groups[g].update(values)
        if "losses" in state:
            self.losses = {int(s): float(v) for s, v in state["losses"].tolist()}
        self.start_step = self.step
        self.last_checkpoint_step = self.step

    # -- the loop ---------------------------------------------------------------------------------
    def draw(self) -> Batch:
        """The next batch; consumes the generator exactly like every other run with this seed.
        Noise is drawn once per sample shape, in the order the shapes first occur among the rows,
        so a batch of one shape draws exactly (B, *shape)."""
        s = self.settings
        g = self.generator
        indices = torch.randint(0, self.num_samples, (s.batch_size,), generator=g)
        first, end = s.timestep_range or (s.first_timestep, s.first_timestep + s.num_timesteps)
        # one draw per row whatever the range: a sub-range consumes the generator like the full one
        timesteps = torch.randint(first, end, (s.batch_size,), generator=g)
        shapes = [self.sample_shapes[int(i)] for i in indices]
        noise: list[torch.Tensor | None] = [None] * len(shapes)
        for shape in dict.fromkeys(shapes):
            rows = [r for r, row_shape in enumerate(shapes) if row_shape == shape]
            for r, row_noise in zip(rows, torch.randn((len(rows), *shape), generator=g).unbind(0)):
                noise[r] = row_noise
        return Batch(self.step + 1, indices, timesteps, tuple(n for n in noise if n is not None))

    def _gradients_finite(self, step: int) -> bool:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            raise NoGradient(
                f"T-LoRA: no gradient reached the adapter at step {step}: it is not part of the model's "
                f"computation (not attached, or the model ran without autograd)."
            )
        # one multi-tensor norm and one device sync, not a check per tensor: a NaN or inf
        # anywhere makes its tensor's norm non-finite
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())

    def _save(self, reason: str) -> None:
        if self.callbacks is not None:
            self.callbacks.save(Checkpoint(self.step, reason, self.adapter, self.state_dict()))
        self.last_checkpoint_step = self.step

    def run(self, compute_gradients: Callable[[Batch], float], stop_at: int | None = None) -> TrainResult:
        """Train up to ``settings.steps`` (or only up to ``stop_at``, to do something between two
        parts of a run, like sampling previews; calling ``run`` again continues exactly)."""
        total = self.settings.steps
        end = total if stop_at is None else min(stop_at, total)
        every = self.settings.save_every
        base_steps = self.adapter.training_steps - self.step
        while self.step < end:
            if self.callbacks is not None and self.callbacks.should_stop():
                return self.stop()
            # a failed step is saved as if its draw never happened, so resuming retries this batch
            rng_before = self.generator.get_state()
            batch = self.draw()
            self.optimizer.zero_grad(set_to_none=True)
            try:
                loss = float(compute_gradients(batch))
                finite = math.isfinite(loss) and self._gradients_finite(batch.step)
            except BaseException:
                self.generator.set_state(rng_before)
                if self.callbacks is not None and self.callbacks.should_stop():
                    # Cancel reached the model mid-step (ComfyUI 0.33 checks it on every op): the
                    # step never happened; end as a cancel at the step before, like one between steps
                    self.optimizer.zero_grad(set_to_none=True)
                    return self.stop()
                self._save_after_error("error")
                raise
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                self.generator.set_state(rng_before)
                self._save_after_error("diverged")
                raise TrainingDiverged(batch.step, loss, self.last_checkpoint_step)
            if self.settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
            self.optimizer.step()
            self.step = batch.step
            self.adapter.training_steps = base_steps + self.step
            self.losses[self.step] = loss
            if self.callbacks is not None:
                self.callbacks.on_step(self.step, total, loss)
            if self.step == total or (every and self.step % every == 0):
                self._save("checkpoint")
        return TrainResult(self.step, dict(self.losses))

    def stop(self) -> TrainResult:
        """End the run as cancelled at the current step, saving it unless it is saved already
        (also for a cancel the caller noticed between two ``run`` calls)."""
        if self.step > self.last_checkpoint_step:
            self._save("cancelled")
        return TrainResult(self.step, dict(self.losses), cancelled=True)

    def _save_after_error(self, reason: str) -> None:
        """Keep what was learned when a step fails midway (out of memory, a crash in a callback,
        divergence); the adapter still holds the values of the last completed step."""
        if self.step <= max(self.last_checkpoint_step, self.start_step):
            return
        try:
            self._save(reason)
        except Exception:  # the original error matters more than this one
            log.exception("T-LoRA: could not save the adapter after a failed step")


def _number_tensor(value: Any) -> torch.Tensor:
    """A Python number as a 0-d tensor that gives it back exactly with ``.item()``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"T-LoRA: can't store optimizer value {value!r} in a checkpoint.")
    return torch.tensor(value, dtype=torch.int64 if isinstance(value, int) else torch.float64)
