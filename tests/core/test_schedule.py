"""The rank schedule against an independent float32 evaluation of SPEC §2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlora_nodes.tlora_core import RankSchedule


def reference_rank(t: int, rank: int, min_rank: int, power: float, T: int = 1000) -> int:
    """SPEC §2 in numpy float32, one operation at a time, truncated like int()."""
    frac = np.float32(T - t) / np.float32(T)
    scaled = np.power(frac, np.float32(power), dtype=np.float32) * np.float32(rank - min_rank)
    return int(np.float32(scaled)) + min_rank


@pytest.mark.parametrize(
    "rank,min_rank,power",
    [(64, 32, 1.0), (64, 1, 1.0), (32, 1, 1.0), (16, 16, 1.0), (128, 40, 2.0), (64, 32, 0.5), (50, 7, 1.0), (10, 3, 1.0)],
)
def test_schedule_matches_formula_at_every_timestep(rank, min_rank, power):
    schedule = RankSchedule(rank, min_rank, power)
    timesteps = torch.arange(1000)
    got = schedule.rank_at(timesteps).tolist()
    want = [reference_rank(t, rank, min_rank, power) for t in range(1000)]
    assert got == want
    # the scalar path gives the batched path's values
    for t in (0, 1, 499, 500, 999):
        assert int(schedule.rank_at(t)) == want[t]


def test_schedule_gives_spec_example_values():
    schedule = RankSchedule(64, 32)
    assert [int(schedule.rank_at(t)) for t in (0, 1, 968)] == [64, 63, 33]
    assert schedule.rank_at(torch.arange(969, 1000)).tolist() == [32] * 31


def test_schedule_gives_min_rank_at_last_timestep():
    assert int(RankSchedule(64, 32).rank_at(999)) == 32
    assert int(RankSchedule(64, 32).rank_at(1000)) == 32


def test_schedule_reproduces_sdxl_ddim_uniform_rank_list():
    # SPEC §2: 25 steps, t = 961, 921, ..., 41, 1
    timesteps = torch.arange(961, 0, -40)
    assert schedule_list(timesteps) == [
        33, 34, 35, 37, 38, 39, 40, 42, 43, 44, 46, 47, 48, 49, 51, 52, 53, 55, 56, 57, 58, 60, 61, 62, 63
    ]


def schedule_list(timesteps):
    return RankSchedule(64, 32).rank_at(timesteps).tolist()


def test_schedule_accepts_fractional_flow_timesteps():
    schedule = RankSchedule(32, 1)
    # flow models: t = 1000 * sigma, not an integer
    assert int(schedule.rank_at(0.0)) == 32
    assert int(schedule.rank_at(999.9)) == 1
    assert int(schedule.rank_at(500.5)) == reference_rank_float(500.5, 32, 1)


def reference_rank_float(t: float, rank: int, min_rank: int) -> int:
    frac = (np.float32(1000) - np.float32(t)) / np.float32(1000)
    return int(np.float32(frac * np.float32(rank - min_rank))) + min_rank


def test_mask_has_first_r_components_on():
    schedule = RankSchedule(8, 2)
    masks = schedule.mask_at(torch.tensor([0, 500, 999]))
    assert masks.shape == (3, 8) and masks.dtype == torch.float32
    assert masks.sum(dim=1).tolist() == [8.0, 5.0, 2.0]
    assert masks[1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert schedule.mask_at(0).shape == (8,)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(rank=32, min_rank=48), "min_rank (48) must be <= rank (32)"),
        (dict(rank=32, min_rank=0), "min_rank (0)"),
        (dict(rank=0, min_rank=0), "rank (0)"),
        (dict(rank=32, min_rank=16, schedule_power=0.0), "schedule_power (0.0)"),
        (dict(rank=32, min_rank=16, schedule_power=-1.0), "schedule_power (-1.0)"),
        (dict(rank=32, min_rank=16, schedule_power=float("nan")), "schedule_power (nan)"),
    ],
)
def test_schedule_rejects_bad_parameters_with_the_fix(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        RankSchedule(**kwargs)
    assert fragment in str(err.value)
    assert str(err.value).startswith("T-LoRA: ")
