"""The one T-LoRA adapter, used by the trainer and by the loader (SPEC §3).

A ``TLoRA`` holds one ``TLoRALayer`` per adapted Linear (named by its diffusers module path,
e.g. ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``), the validated
``TLoRAConfig`` and the step count it was trained for. Parameters live in float32; the
adapter maths runs in float32 and is cast back to the caller's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .functional import ortho_delta, ortho_delta_weight, vanilla_delta, vanilla_delta_weight
from .schedule import NUM_TRAIN_TIMESTEPS, RankSchedule

VARIANTS = ("tlora", "vanilla")
VARIANT_LABELS = {"tlora": "T-LoRA", "vanilla": "Vanilla T-LoRA"}
INITS = ("last", "principal", "middle")


@dataclass(frozen=True)
class TLoRAConfig:
    """What an adapter is; everything a file needs to be self-describing.

    variant: "tlora" (Ortho-LoRA parametrisation) or "vanilla".
    rank / min_rank / schedule_power: the rank schedule (SPEC §2).
    init: which singular components seed the Ortho factors ("last", "principal", "middle").
    model_family: the model family the layers belong to ("sd15", "sdxl", "flux", ...).
    timestep_range: [first, end) of the timesteps the adapter was trained on, when that is not
        all of [0, num_timesteps): one expert of a model that comes as a high-noise and a
        low-noise expert (Wan 2.2 A14B) only ever sees its own range. None: every timestep.
        The rank schedule r(t) stays the global one; the range only says where it was trained.
    """

    variant: str = "tlora"
    rank: int = 64
    min_rank: int = 32
    schedule_power: float = 1.0
    init: str = "last"
    model_family: str = ""
    num_timesteps: int = NUM_TRAIN_TIMESTEPS
    timestep_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(
                f"T-LoRA: unknown variant {self.variant!r}. Use one of {', '.join(map(repr, VARIANTS))}."
            )
        if self.init not in INITS:
            raise ValueError(f"T-LoRA: unknown init {self.init!r}. Use one of {', '.join(map(repr, INITS))}.")
        object.__setattr__(self, "schedule_power", float(self.schedule_power))
        self.schedule  # validates rank, min_rank, schedule_power
        object.__setattr__(self, "timestep_range", check_timestep_range(self.timestep_range, self.num_timesteps))

    @property
    def schedule(self) -> RankSchedule:
        return RankSchedule(self.rank, self.min_rank, self.schedule_power, self.num_timesteps)


def check_timestep_range(span: object, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[int, int] | None:
    """A [first, end) range of whole timesteps inside [0, num_timesteps), or None for all of them
    (the full range is normalised to None, so that equal ranges compare equal)."""
    if span is None:
        return None
    try:
        first, end = (int(v) for v in span)  # type: ignore[union-attr]
        whole = all(float(v) == int(v) for v in span)  # type: ignore[union-attr]
    except (TypeError, ValueError) as err:
        raise ValueError(f"T-LoRA: timestep_range ({span!r}) must be two whole numbers [first, end).") from err
    if not whole or not 0 <= first < end <= num_timesteps:
        raise ValueError(
            f"T-LoRA: timestep_range ({span!r}) must be whole timesteps with 0 <= first < end <= {num_timesteps}."
        )
    return None if (first, end) == (0, num_timesteps) else (first, end)


class TLoRALayer(nn.Module):
    """Adapter for one Linear of shape (out_features, in_features).

    Per-layer rank = min(R, in, out); the layer uses the first ``rank`` entries of the
    adapter-wide (..., R) mask.
    Vanilla parameters: down (rank, in), up (out, rank).
    Ortho parameters: q (rank, in), p (out, rank), lam (rank,) trainable, and the frozen
    initial copies q0, p0, lam0 (buffers) that make the delta exactly zero at init.
    """

    q0: torch.Tensor
    p0: torch.Tensor
    lam0: torch.Tensor

    def __init__(self, in_features: int, out_features: int, rank: int, variant: str) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"T-LoRA: unknown variant {variant!r}. Use one of {', '.join(map(repr, VARIANTS))}.")
        for label, value in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"T-LoRA: layer {label} ({value!r}) must be a whole number >= 1.")
        if rank > min(in_features, out_features):
            raise ValueError(
                f"T-LoRA: layer rank ({rank}) exceeds what a {out_features}x{in_features} layer allows "
                f"({min(in_features, out_features)}). Per-layer rank must be min(rank, in, out)."
            )
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.variant = variant
        if variant == "vanilla":
            self.down = nn.Parameter(torch.zeros(rank, in_features))
            self.up = nn.Parameter(torch.zeros(out_features, rank))
        else:
            self.q = nn.Parameter(torch.zeros(rank, in_features))
            self.p = nn.Parameter(torch.zeros(out_features, rank))
            self.lam = nn.Parameter(torch.zeros(rank))
            self.register_buffer("q0", torch.zeros(rank, in_features))
            self.register_buffer("p0", torch.zeros(out_features, rank))
            self.register_buffer("lam0", torch.zeros(rank))

    # -- initialisation --------------------------------------------------------------------
    @torch.no_grad()
    def reset_(self, init: str, generator: torch.Generator, svd_device: torch.device | None = None) -> None:
        """Draw the reference's initial values (SPEC §3), deterministic for a given generator.

        Random numbers are drawn on the CPU (so a seed means the same thing on every machine);
        the SVD may run on ``svd_device``.
        """
        r = self.rank
        if self.variant == "vanilla":
            self.down.copy_(torch.randn(r, self.in_features, generator=generator) / r)
            self.up.zero_()
            return
        base = torch.randn(self.in_features, self.out_features, generator=generator) / r
        if svd_device is not None:
            base = base.to(svd_device)
        # Full matrices are only needed for non-square layers (Q takes rows of the in x in U,
        # P columns of the out x out Vh); for square ones the reduced SVD is the same, and faster.
        u, s, vh = torch.linalg.svd(base, full_matrices=self.in_features != self.out_features)
        # Rows of U and columns of Vh, as the reference slices them.
        if init == "principal":
            q, p, lam = u[:r], vh[:, :r], s[:r]
        elif init == "last":
            q, p, lam = u[-r:], vh[:, -r:], s[-r:]
        elif init == "middle":
            su = math.ceil((u.shape[0] - r) / 2)
            sv = math.ceil((vh.shape[1] - r) / 2)
            ss = math.ceil((s.shape[0] - r) / 2)
            q, p, lam = u[su : su + r], vh[:, sv : sv + r], s[ss : ss + r]
        else:
            raise ValueError(f"T-LoRA: unknown init {init!r}. Use one of {', '.join(map(repr, INITS))}.")
        for name, value in (("q", q), ("p", p), ("lam", lam)):
            getattr(self, name).copy_(value)
            getattr(self, name + "0").copy_(value)

    # -- maths --------------------------------------------------------------------------------
    def delta(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked delta on activations, maths in float32, returned in x's dtype.

        x: (B, ..., in); mask: (R,) shared or (B, R) per row, adapter-wide R >= self.rank.
        """
        first = self.down if self.variant == "vanilla" else self.q
        m = mask[..., : self.rank].to(device=first.device, dtype=first.dtype)
        xf = x.to(first.dtype)
        if self.variant == "vanilla":
            out = vanilla_delta(xf, self.down, self.up, m)
        else:
            out = ortho_delta(xf, self.q, self.p, self.lam, self.q0, self.p0, self.lam0, m)
        return out.to(x.dtype)

    def delta_weight(self, mask: torch.Tensor) -> torch.Tensor:
        """Merged weight delta (out, in) in float32 for one (R,) mask."""
        if self.variant == "vanilla":
            return vanilla_delta_weight(self.down, self.up, mask[: self.rank].to(self.down))
        m = mask[: self.rank].to(self.q)
        return ortho_delta_weight(self.q, self.p, self.lam, self.q0, self.p0, self.lam0, m)

    def plain_factors(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer as a plain LoRA whose leading components are the active ones.

        Returns (down (K, in), up (out, K)) with delta_W(rank r) = up[:, :k] @ down[:k],
        k = ``components(r)``: K = R for Vanilla; for Ortho K = 2R with the trained and the frozen
        branch interleaved, [Q_0; Q0_0; Q_1; Q0_1; ...] and [λ_0·P_0, −λ0_0·P0_0, ...], so that
        "the first r components on" is a slice rather than a mask.
        dtype: compute in this dtype (the parameters are cast first). float64 makes λ·P exact for
        float32 parameters, which the export needs: rounding λ·P in float32 is an error of the
        branch's size, and the two Ortho branches nearly cancel early in training.
        """
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t if dtype is None else t.to(dtype)

        if self.variant == "vanilla":
            return cast(self.down), cast(self.up)
        r = self.rank
        down = torch.stack([cast(self.q), cast(self.q0)], dim=1).reshape(2 * r, self.in_features)
        branches = [cast(self.p) * cast(self.lam), -(cast(self.p0) * cast(self.lam0))]
        up = torch.stack(branches, dim=2).reshape(self.out_features, 2 * r)
        return down, up

    def components(self, rank: int) -> int:
        """How many leading components of ``plain_factors`` rank ``rank`` uses."""
        r = min(int(rank), self.rank)
        return r if self.variant == "vanilla" else 2 * r

    def lora_factors(self, rank: int, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer frozen at the mask with ``rank`` components on, as a plain LoRA:
        (down (k, in), up (out, k)), k = r for Vanilla, 2r for Ortho (computed in ``dtype``)."""
        down, up = self.plain_factors(dtype)
        k = self.components(rank)
        return down[:k], up[:, :k]


class TLoRA(nn.Module):
    """A whole adapter: config + named layers + how long it was trained."""

    def __init__(self, config: TLoRAConfig, layers: Mapping[str, TLoRALayer], training_steps: int = 0) -> None:
        super().__init__()
        if not layers:
            raise ValueError("T-LoRA: an adapter needs at least one layer.")
        self.config = config
        self.names: list[str] = list(layers)
        self.layer_list = nn.ModuleList(layers[n] for n in self.names)
        self._index = {n: i for i, n in enumerate(self.names)}
        self.training_steps = int(training_steps)
        for name, layer in layers.items():
            if layer.variant != config.variant:
                raise ValueError(f"T-LoRA: layer {name!r} is {layer.variant}, the adapter is {config.variant}.")
            expected = min(config.rank, layer.in_features, layer.out_features)
            if layer.rank != expected:
                raise ValueError(
                    f"T-LoRA: layer {name!r} has rank {layer.rank}, expected min(rank {config.rank}, "
                    f"in {layer.in_features}, out {layer.out_features}) = {expected}."
                )

    @classmethod
    def create(
        cls,
        config: TLoRAConfig,
        shapes: Mapping[str, tuple[int, int]],
        seed: int = 0,
        svd_device: torch.device | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> "TLoRA":
        """New adapter at its initial values. shapes: name -> (in_features, out_features).

        progress(done, total) is called after each layer: the Ortho init runs one SVD per layer,
        which takes minutes for a full-size model on a CPU.
        """
        generator = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
        layers = {}
        for done, (name, (fan_in, fan_out)) in enumerate(shapes.items(), start=1):
            layer = TLoRALayer(fan_in, fan_out, min(config.rank, fan_in, fan_out), config.variant)
            layer.reset_(config.init, generator, svd_device)
            layers[name] = layer
            if progress is not None:
                progress(done, len(shapes))
        return cls(config, layers)

    @property
    def schedule(self) -> RankSchedule:
        return self.config.schedule

    def layer(self, name: str) -> TLoRALayer:
        return self.layer_list[self._index[name]]  # type: ignore[return-value]

    def items(self) -> Iterator[tuple[str, TLoRALayer]]:
        for name, layer in zip(self.names, self.layer_list):
            yield name, layer  # type: ignore[misc]

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (layer.in_features, layer.out_features) for n, layer in self.items()}

    def with_config(self, **changes: object) -> "TLoRA":
        """Same layers (shared, not copied) under a changed config, e.g. another min_rank."""
        return TLoRA(replace(self.config, **changes), dict(self.items()), self.training_steps)  # type: ignore[arg-type]

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        c = self.config
        span = "" if c.timestep_range is None else f", timesteps={c.timestep_range[0]}..{c.timestep_range[1] - 1}"
        return (
            f"{VARIANT_LABELS[c.variant]}, rank={c.rank}, min_rank={c.min_rank}, "
            f"schedule_power={c.schedule_power}, family={c.model_family or '?'}{span}, layers={len(self.names)}"
        )
