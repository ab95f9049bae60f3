"""The T-LoRA rank schedule: how many rank components are active at a given timestep.

    r(t) = int( ((T - t) / T) ** p * (R - r_min) ) + r_min          (SPEC §2)

evaluated in float32 with truncation, exactly as the reference trainer does
(``get_mask_by_timestep`` in ControlGenAI/T-LoRA). High noise (t near T) gets r_min
components, low noise (t near 0) gets all R.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class RankSchedule:
    """Validated schedule parameters.

    rank: R, the adapter rank (number of components).
    min_rank: r_min, components kept at the highest noise.
    schedule_power: p, the exponent of the schedule (``alpha_rank_scale`` in the reference).
    num_timesteps: T, the training timesteps of the model (1000 for every supported model).
    """

    rank: int
    min_rank: int
    schedule_power: float = 1.0
    num_timesteps: int = NUM_TRAIN_TIMESTEPS

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"T-LoRA: rank ({self.rank!r}) must be a whole number >= 1. Set 'rank' to e.g. 64.")
        if isinstance(self.min_rank, bool) or not isinstance(self.min_rank, int) or self.min_rank < 1:
            raise ValueError(
                f"T-LoRA: min_rank ({self.min_rank!r}) must be a whole number >= 1. "
                f"Set 'min_rank' to e.g. half of rank ({max(1, self.rank // 2)})."
            )
        if self.min_rank > self.rank:
            raise ValueError(
                f"T-LoRA: min_rank ({self.min_rank}) must be <= rank ({self.rank}). "
                f"Lower 'min_rank' or raise 'rank'."
            )
        power = float(self.schedule_power)
        if not (power > 0.0) or power != power or power == float("inf"):
            raise ValueError(
                f"T-LoRA: schedule_power ({self.schedule_power!r}) must be a finite number > 0. "
                f"Use 1.0 for the paper's linear schedule."
            )
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 1:
            raise ValueError(f"T-LoRA: num_timesteps ({self.num_timesteps!r}) must be a whole number >= 1.")

    def rank_at(self, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Active rank for each timestep.

        timestep: scalar or (B,) timesteps on the model's discrete scale [0, T]
            (flow models: 1000 * sigma). Values outside [0, T] are clamped.
        Returns an int64 tensor of the same shape, on the same device.
        """
        t = torch.as_tensor(timestep)
        # float32 throughout, in the reference's order of operations: (T - t) / T, ** p, * (R - r_min)
        t = t.to(torch.float32).clamp(0.0, float(self.num_timesteps))
        span = self.rank - self.min_rank
        frac = (self.num_timesteps - t) / self.num_timesteps
        scaled = frac ** float(self.schedule_power) * span
        return scaled.to(torch.int64) + self.min_rank  # .to(int64) truncates toward zero, like int()

    def mask_at(self, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Rank masks: the first r(t) of R components on.

        Returns float32 (R,) for a scalar timestep, (B, R) for (B,) timesteps.
        """
        ranks = self.rank_at(timestep)
        positions = torch.arange(self.rank, device=ranks.device)
        return (positions < ranks.unsqueeze(-1)).to(torch.float32)
