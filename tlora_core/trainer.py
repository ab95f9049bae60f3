"""The T-LoRA training loop (SPEC §5), with everything model-specific injected.

The loop owns what must be exact and resumable: the optimizer (AdamW, the reference's
hyper-parameters), every random draw (which samples, which timesteps, which noise — all from
one CPU generator, so a seed means the same run everywhere and a checkpoint resumes it bit for
bit), the step count, divergence checks, checkpoints and cancel.

The caller supplies ``compute_gradients(batch) -> loss``: run the model on the batch and call
``backward()`` (ComfyUI's side does that in nodes/train.py), and optional callbacks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .adapter import TLoRA, check_timestep_range
from .schedule import NUM_TRAIN_TIMESTEPS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """steps: total optimizer steps of the run (a resumed run continues up to it).
    save_every: write a checkpoint every N steps (0 = only at the end and on cancel).
    timestep_range: draw timesteps from [first, end) instead of [0, num_timesteps) (one expert of
    a two-expert model); None: all of them."""

    steps: int = 800
    learning_rate: float = 1e-4
    batch_size: int = 1
    seed: int = 0
    save_every: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    num_timesteps: int = NUM_TRAIN_TIMESTEPS
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


@dataclass(frozen=True)
class Batch:
    """One optimizer step's draw. step: 1-based number of the step this batch trains.
    indices: (B,) which training samples; timesteps: (B,) int64 in [0, T);
    noise: (B, *sample_shape) float32 standard normal."""

    step: int
    indices: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


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

    def save(self, step: int, reason: str) -> None: ...


@dataclass
class TrainResult:
    steps_done: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss
    cancelled: bool = False


class Trainer:
    """Train ``adapter`` in place.

    num_samples: how many training samples (latents) there are; sample_shape: one latent's shape.
    """

    def __init__(
        self,
        adapter: TLoRA,
        settings: TrainSettings,
        num_samples: int,
        sample_shape: tuple[int, ...],
        compute_gradients: Callable[[Batch], float] | None = None,
        callbacks: Callbacks | None = None,
    ) -> None:
        if num_samples < 1:
            raise ValueError("T-LoRA: there is nothing to train on (0 latents).")
        self.adapter = adapter
        self.settings = settings
        self.num_samples = num_samples
        self.sample_shape = tuple(sample_shape)
        self.compute_gradients = compute_gradients
        self.callbacks = callbacks
        self.params = list(adapter.trainable_parameters())
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=settings.learning_rate,
            betas=settings.betas,
            weight_decay=settings.weight_decay,
            eps=settings.eps,
        )
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed & 0xFFFF_FFFF_FFFF_FFFF)
        self.step = 0
        self.start_step = 0
        self.last_checkpoint_step = 0
        self.losses: dict[int, float] = {}

    # -- state, for checkpoints and resume ----------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {
            "step": torch.tensor(self.step, dtype=torch.int64),
            "rng": self.generator.get_state(),
        }
        for index, param in enumerate(self.params):
            for key, value in self.optimizer.state.get(param, {}).items():
                state[f"optimizer.{index}.{key}"] = value.detach().to("cpu", copy=True)
        if self.losses:
            steps = sorted(self.losses)
            state["losses"] = torch.tensor([[s, self.losses[s]] for s in steps], dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        try:
            self.step = int(state["step"])
            self.generator.set_state(state["rng"].to(torch.uint8))
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"T-LoRA: the checkpoint has no usable training state ({err}).") from err
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in state.items():
            if key.startswith("optimizer."):
                _, position, entry = key.split(".", 2)
                per_param.setdefault(int(position), {})[entry] = tensor
        if per_param and max(per_param) >= len(self.params):
            raise ValueError(
                f"T-LoRA: the checkpoint's optimizer state is for {max(per_param) + 1} parameters, this adapter has "
                f"{len(self.params)}. It belongs to another rank or variant."
            )
        for index, values in per_param.items():
            param = self.params[index]
            self.optimizer.state[param] = {
                k: (v.to(param.device) if k != "step" else v.to(torch.float32)) for k, v in values.items()
            }
        if "losses" in state:
            self.losses = {int(s): float(v) for s, v in state["losses"].tolist()}
        self.start_step = self.step
        self.last_checkpoint_step = self.step

    # -- the loop ---------------------------------------------------------------------------------
    def draw(self) -> Batch:
        """The next batch; consumes the generator exactly like every other run with this seed."""
        b = self.settings.batch_size
        g = self.generator
        first, end = self.settings.timestep_range or (0, self.settings.num_timesteps)
        indices = torch.randint(0, self.num_samples, (b,), generator=g)
        # one draw per row whatever the range: a sub-range consumes the generator like the full one
        timesteps = torch.randint(first, end, (b,), generator=g)
        noise = torch.randn((b, *self.sample_shape), generator=g)
        return Batch(self.step + 1, indices, timesteps, noise)

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
            self.callbacks.save(self.step, reason)
        self.last_checkpoint_step = self.step

    def run(self) -> TrainResult:
        if self.compute_gradients is None:
            raise RuntimeError("T-LoRA: Trainer.run() needs compute_gradients.")
        total = self.settings.steps
        every = self.settings.save_every
        base_steps = self.adapter.training_steps - self.step
        while self.step < total:
            if self.callbacks is not None and self.callbacks.should_stop():
                return self._cancelled()
            # a failed step is saved as if its draw never happened, so resuming retries this batch
            rng_before = self.generator.get_state()
            batch = self.draw()
            self.optimizer.zero_grad(set_to_none=True)
            try:
                loss = float(self.compute_gradients(batch))
                finite = math.isfinite(loss) and self._gradients_finite(batch.step)
            except BaseException:
                self.generator.set_state(rng_before)
                if self.callbacks is not None and self.callbacks.should_stop():
                    # Cancel reached the model mid-step (ComfyUI 0.33 checks it on every op): the
                    # step never happened; end as a cancel at the step before, like one between steps
                    self.optimizer.zero_grad(set_to_none=True)
                    return self._cancelled()
                self._save_after_error("error")
                raise
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                self.generator.set_state(rng_before)
                self._save_after_error("diverged")
                raise TrainingDiverged(batch.step, loss, self.last_checkpoint_step)
            self.optimizer.step()
            self.step = batch.step
            self.adapter.training_steps = base_steps + self.step
            self.losses[self.step] = loss
            if self.callbacks is not None:
                self.callbacks.on_step(self.step, total, loss)
            if every and self.step % every == 0 and self.step < total:
                self._save("checkpoint")
        return TrainResult(self.step, dict(self.losses))

    def _cancelled(self) -> TrainResult:
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
