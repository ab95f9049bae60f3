"""Attaching T-LoRAs to a MODEL: the adapted layers (nodes/model_kinds.py says which they are
and how a sigma becomes t) get their deltas, and every model call's sigma picks the rank mask.

Mechanism: one forward override per adapted Linear, installed as ModelPatcher object patches
(``<module path>.forward``), and one APPLY_MODEL wrapper that turns the sigma of every model
call into the reference's timestep t and sets the rank masks r(t) for that call. The override
adds the T-LoRA deltas in one of two ways (TLoRAStack picks per layer and call):

    merged          y = F.linear(x, W + Σ strength·ΔW(r))     ΔW merged once per rank change
    activation-side y = Linear(x) + Σ strength·delta(x, mask)

The activation-side delta is, for a frozen adapter, the adapter as one plain LoRA of 2R
interleaved components (``TLoRALayer.plain_factors``, float32, strength folded in) with the
mask repeated per component: two GEMMs and one multiply. While T-LoRA Train trains the adapter
it is ``TLoRALayer.delta``: the two Ortho branches apart, so autograd computes no weight
gradient for the frozen branch and the delta is exactly zero at init.

Merged serves sampling: no autograd, one rank for all rows of the call, a resident float
weight. A run uses at most R − r_min + 1 ranks, so it costs one addmm per layer per rank
change, and per model call exactly what a merged LoRA costs. The activation side costs every
call memory-bound passes over the activations and about 4k/d of each projection's FLOPs
(bench/RESULTS.md has the measurements). Activation-side serves everything else: training
(gradients reach the adapter, rank-sized backward instead of the full weight gradient), rows at
different ranks (each training sample follows its own timestep), lowvram or fp8/scaled-fp8
layers that cast their weight per call (the base layer computes Linear(x) its own way and the
float32 delta is added), and torch.compile (masks are tensors whose values change per call and
whose shapes don't, so a compiled model is not recompiled per step; a Python-int rank would be).

Why object patches rather than ComfyUI's weight wrappers (``add_weight_wrapper``): a weight
wrapper yields one weight per forward (no per-row masks) and runs on a fresh copy of the weight
every call; it receives fp8 or unscaled weights and must undo each storage trick; and its
functions stay on the modules after a full-load unpatch, so a clone with the same weights but
other wrappers can keep running the old ones. ModelPatcher restores object patches on every
unpatch and (re)applies the new patcher's on every load, also when it skips reloading weights.

Reruns: each MODEL output is a fresh ``clone()``; the stack of adapters lives in a patcher
attachment, so applying T-LoRA twice stacks two adapters on purpose and rerunning the same graph
starts again from the untouched input MODEL. The mask set by a call stays until the next call
(not reset on return): gradient checkpointing recomputes the forward during backward, after
apply_model has returned, and must see the same mask.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils

from ..tlora_core import TLoRA
from ..tlora_core.functional import scaled_lora
from .model_kinds import Target, check_sampling, describe_range, family_name, find_targets, kind_of, sigma_to_timestep

log = logging.getLogger(__name__)

KEY = "tlora_nodes"

# The stack whose merged host weights outlive their sampling run (TLoRAStack.release_run): one per process.
_host_keeper: list[weakref.ref] = []


def check_compatible(adapter: TLoRA, model: comfy.model_patcher.ModelPatcher, node: str) -> dict[str, Target]:
    """The targets the adapter's layers bind to; an error naming both sides if they don't fit."""
    family = kind_of(model, node).family
    check_sampling(model, node)
    trained_for = adapter.config.model_family
    if trained_for and trained_for != family:
        raise ValueError(
            f"{node}: this T-LoRA was trained for {family_name(trained_for)}, but the MODEL is "
            f"{family_name(family)}. Load a T-LoRA trained for {family_name(family)}, or connect a "
            f"{family_name(trained_for)} checkpoint."
        )
    targets = find_targets(model, node)
    missing = [n for n in adapter.names if n not in targets]
    wrong = [
        (n, layer, targets[n])
        for n, layer in adapter.items()
        if n in targets and (layer.in_features, layer.out_features) != (targets[n].in_features, targets[n].out_features)
    ]
    if missing or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} layers not in this model (e.g. {missing[0]})")
        if wrong:
            n, layer, t = wrong[0]
            detail.append(
                f"{len(wrong)} layers of another shape (e.g. {n}: T-LoRA {layer.in_features}->{layer.out_features}, "
                f"model {t.in_features}->{t.out_features})"
            )
        raise ValueError(
            f"{node}: this T-LoRA was made for other layer shapes than this MODEL: {'; '.join(detail)}. "
            f"Use a T-LoRA trained on this checkpoint's architecture."
        )
    return {n: targets[n] for n in adapter.names}


# -- the runtime ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    adapter: TLoRA
    strength: float
    targets: dict[str, Target]
    node: str = ""  # the node that attached it, for errors raised while sampling


# Least share of a sampling run's timesteps that must lie in the range an expert's T-LoRA was
# trained on. ComfyUI's Wan 2.2 A14B templates hand over at sigma 0.833 (shift 5, half the steps),
# Wan's own configs at 0.875 / 0.900: the right expert's run lies 75-100 % inside its T-LoRA's range,
# the other expert's 0-25 %.
RANGE_SHARE = 0.5


def check_run_range(stack: "TLoRAStack", model_sampling: Any, sigmas: torch.Tensor) -> None:
    """Refuse, before the first model call, a sampling run whose sigmas lie mostly outside the
    timesteps an attached T-LoRA was trained on: the T-LoRA of the other expert of a two-expert
    model (both experts are the same ComfyUI class, only their timesteps tell them apart)."""
    if stack.training or sigmas.numel() == 0:
        return
    t = sigma_to_timestep(model_sampling, sigmas.detach().reshape(-1).to("cpu", torch.float64))
    low, high = float(t.min()), float(t.max())
    for item in stack.applied:
        span = item.adapter.config.timestep_range
        if span is None:
            continue
        first, end = span
        overlap = max(0.0, min(high, end) - max(low, first))
        share = overlap / (high - low) if high > low else float(first <= high <= end)
        if share < RANGE_SHARE:
            node = item.node or "Timestep-Aware Apply"
            raise ValueError(
                f"{node}: this T-LoRA was trained on {describe_range(span)}, but this sampler runs from sigma "
                f"{float(sigmas.max()):.3f} to {float(sigmas.min()):.3f} (t {high:.0f} down to {low:.0f}), {1 - share:.0%} "
                f"of it outside that range: the T-LoRA of the other expert, or an expert sampling far beyond its "
                f"own steps. Connect the T-LoRA trained for this expert (T-LoRA Train's 'expert' input), and hand "
                f"over between the experts near sigma {(span[0] or span[1]) / 1000:.3f} (KSamplerAdvanced "
                f"start_at_step / end_at_step)."
            )


def _outer_sample_wrapper(stack: "TLoRAStack") -> Callable[..., Any]:
    def wrapper(executor: Any, noise: torch.Tensor, latent_image: torch.Tensor, sampler: Any, sigmas: torch.Tensor,
                *args: Any, **kwargs: Any) -> Any:
        guider = executor.class_obj
        check_run_range(stack, guider.model_patcher.get_model_object("model_sampling"), sigmas)
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)

    return wrapper


@dataclass
class _Merged:
    """One adapted Linear's merged weight and what it holds."""

    source: tuple[int, int, Any]  # the weight W it was merged from: id, data_ptr, ComfyUI's weight-patch state
    ranks: tuple  # the stack's shared ranks it is merged at
    tensor: torch.Tensor
    roundings: int  # N of the drift bound (TLoRAStack._move_in_place) since the last fresh merge
    budget: int  # the most roundings before the next fresh merge


class TLoRAStack:
    """The adapters one patched MODEL carries and the masks of its current model call.

    Two ways to add the deltas, chosen per layer and per call:
    - merged (sampling): without autograd, when every row of the call shares one rank, the
      layer computes with its own resident float weight and the adapters cover all of its output
      rows (not FLUX's fused linear1, 4/7 MLP rows), the layer runs F.linear with
      W + Σ strength·ΔW(r), merged once per rank (there are at most R − r_min + 1 of them in a
      run) and kept until the rank changes. Per model call this costs what a merged LoRA costs;
      per rank change one addmm per layer: W + up[:, :k] @ down[:k] with the adapter as a plain
      LoRA (``plain_factors``) held in the weight's dtype, accumulated in float32 by the GEMM and
      rounded once — below the weight's own rounding, so nothing is lost to the fp32 maths.
    - activation-side (everything else: training, rows at different ranks, lowvram or fp8
      layers that cast their weight per call, torch.compile, hook LoRAs that rewrite weights in
      place per conditioning): Linear(x) + Σ strength·delta(x, mask).
    Memory: merged weights on a GPU are released when the sampling run ends (ModelPatcher's
    ON_CLEANUP): ComfyUI's loader counts the model's VRAM, not ours. Merged weights in host
    memory (a model run on the CPU) are kept for the next run, as the stock LoRA loader keeps a
    backup copy of every patched weight: the next run moves them to its first rank in place
    instead of faulting in a new copy of every adapted weight (on SD1.5 that allocation costs as
    much CPU time as the merge's GEMM: bench/RESULTS.md, issue 17). One stack per process keeps
    them (the one that sampled last), so switching between T-LoRA'd MODELs never holds more than
    one extra copy. ComfyUI detaches every model at each load, the same model again too
    (ON_DETACH with unpatch_all False): that drops the device copies of the adapter but keeps
    those host weights, whose key (weight, ComfyUI's weight-patch state) tells whether they still
    fit; unloading the model (unpatch_all True) drops everything.
    """

    def __init__(self, applied: tuple[Applied, ...]) -> None:
        self.applied = applied
        self.masks: list[torch.Tensor | None] = [None] * len(applied)
        self.active_ranks: list[torch.Tensor | None] = [None] * len(applied)
        self.shared_ranks: list[int | None] = [None] * len(applied)  # None: rows differ
        self._own_layers = [dict(item.adapter.items()) for item in applied]
        # one parameter per adapter: it requires grad while T-LoRA Train trains the adapter
        self._a_parameter = [next(item.adapter.parameters()) for item in applied]
        self.modules: list[torch.nn.Module] = []  # the adapted Linears, set by attach()
        # those whose adapted rows are the whole weight: merging copies nothing the adapter leaves
        # alone (FLUX single blocks' fused linear1 is 3/7 q,k,v and 4/7 MLP rows: not merged)
        self.mergeable: set[torch.nn.Module] = set()
        # device-side state; see release_run() and release()
        self._plain: dict[tuple[int, str, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._plain_host: dict[tuple[int, str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_masks: dict[tuple[int, torch.device, bool], torch.Tensor] = {}
        self._merged: dict[torch.nn.Module, _Merged] = {}
        self._merge_room: dict[torch.device, bool] = {}
        self.training = False  # set by T-LoRA Train on its training clone's stack
        self.weights_rewritten_per_call = False  # set per model call: weights patched in place (hooks) -> don't merge
        self.call_memory = 0  # set per model call: ComfyUI's estimate of its activation memory (bytes)
        # set per model call: which weight patches ComfyUI has written into the weights (its
        # current_weight_patches_uuid); a merged copy kept from an earlier run is of other weights
        # if another patcher's LoRAs were applied in place since
        self.weights_state: Any = None
        self._warned_unset = False

    def extended(self, item: Applied) -> "TLoRAStack":
        return TLoRAStack(self.applied + (item,))

    def _keep_host_merges_only(self) -> None:
        self._merged = {module: cached for module, cached in self._merged.items() if cached.tensor.device.type == "cpu"}
        self._merge_room.clear()

    def release_run(self, *_: Any) -> None:
        """End of a sampling run (ON_CLEANUP): drop the merged weights outside host memory (the
        big part); host ones stay for the next run, this stack's only (class docstring)."""
        self._keep_host_merges_only()
        if self._merged:
            keeper = _host_keeper[0]() if _host_keeper else None
            if keeper is not None and keeper is not self:
                keeper._merged.clear()
            _host_keeper[:] = [weakref.ref(self)]

    def release(self, _patcher: Any = None, unpatch_all: bool = True) -> None:
        """ON_DETACH: everything device-side goes, also the adapter's factors on the device; the
        merged host weights only when ComfyUI unloads the model (``unpatch_all``), not when it
        detaches it to load it again (class docstring)."""
        if unpatch_all:
            self._merged.clear()
        self._keep_host_merges_only()
        self._plain.clear()
        self._device_masks.clear()

    # called once per model call, from the APPLY_MODEL wrapper (or by the trainer via apply_model)
    def set_timesteps(self, timesteps: torch.Tensor) -> None:
        """timesteps: (B,) one per batch row. Rows that share a rank share one (R,) mask.

        The schedule runs on the CPU: one device sync per model call, and the merged path needs
        the ranks as Python ints anyway; masks reach a device once per call (``_mask``)."""
        t = timesteps.detach().to("cpu", torch.float64)
        for i, item in enumerate(self.applied):
            schedule = item.adapter.schedule
            ranks = schedule.rank_at(t)
            self.active_ranks[i] = ranks
            if bool((ranks == ranks[0]).all()):
                self.masks[i] = schedule.mask_at(t[:1])[0]
                self.shared_ranks[i] = int(ranks[0])
            else:
                self.masks[i] = schedule.mask_at(t)
                self.shared_ranks[i] = None
        self._device_masks.clear()

    def _mask(self, i: int, device: torch.device, components: bool = False) -> torch.Tensor:
        """This call's (R,) or (B, R) rank mask on ``device``; with ``components`` the same over
        the adapter's plain-LoRA components (``plain_factors``: Ortho's two branches interleaved,
        so each rank entry is repeated twice)."""
        if self.masks[i] is None:
            if not self._warned_unset:
                log.debug("T-LoRA: model run outside a sampler call; using the full-rank mask.")
                self._warned_unset = True
            schedule = self.applied[i].adapter.schedule
            self.masks[i], self.shared_ranks[i] = schedule.mask_at(0), schedule.rank
        key = (i, device, components)
        mask = self._device_masks.get(key)
        if mask is None:
            mask = self.masks[i]
            if components and self.applied[i].adapter.config.variant == "tlora":
                mask = mask.repeat_interleave(2, dim=-1)  # type: ignore[union-attr]
            mask = self._device_masks[key] = mask.to(device)  # type: ignore[union-attr]
        return mask

    def _training(self, i: int, device: torch.device) -> bool:
        """Is adapter i being trained (T-LoRA Train's clone, the adapter's parameters trainable
        and on the call's device)? Also under no_grad: a checkpointed block first runs without
        autograd and must compute what its recomputation will."""
        parameter = self._a_parameter[i]
        return self.training and parameter.requires_grad and parameter.device == device

    # -- merged path ------------------------------------------------------------------------------
    def _can_merge(self, module: torch.nn.Module, x: torch.Tensor) -> bool:
        if torch.is_grad_enabled() or self.training or torch.compiler.is_compiling() or None in self.shared_ranks:
            return False  # autograd or training, compiled graphs, rows at different ranks
        if self.weights_rewritten_per_call or module not in self.mergeable:
            return False  # hook LoRAs; fused layers the adapters cover only in part
        if getattr(module, "comfy_cast_weights", False) or getattr(module, "weight_function", None) or getattr(module, "bias_function", None):
            return False  # lowvram / manual cast / other per-call weight functions
        weight = module.weight
        if weight.dtype != x.dtype or weight.device != x.device or getattr(module, "scale_weight", None) is not None:
            return False  # fp8 storage, scaled fp8, or a weight that isn't used as is
        return self._has_merge_room(x.device)

    def _has_merge_room(self, device: torch.device) -> bool:
        """Room for a merged copy of every adapted weight, beyond what ComfyUI reserved for this
        call's activations when it loaded the model? Asked once per run; without room the deltas
        go on the activations instead."""
        if device.type == "cpu":
            return True
        if device not in self._merge_room:
            need = sum(m.weight.numel() * m.weight.element_size() for m in self.mergeable)
            free = comfy.model_management.get_free_memory(device)
            reserve = max(self.call_memory, comfy.model_management.minimum_inference_memory())
            self._merge_room[device] = free >= need + reserve
            if not self._merge_room[device]:
                log.info("T-LoRA: no room on %s for merged weights (%.1f GiB); adding deltas on activations.", device, need / 2**30)
        return self._merge_room[device]

    def _plain_factors(self, i: int, name: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(down, strength·up) of one layer as a plain LoRA in ``dtype`` (the weight's for
        merging, float32 for the activation side), on the device.

        Prepared once per stack in host memory; per device only copied (after ComfyUI unloads
        and reloads the model, the device copy is made again from the host copy)."""
        key = (i, name, device, dtype)
        if key not in self._plain:
            host_key = (i, name, dtype)
            if host_key not in self._plain_host:
                with torch.no_grad():
                    down, up = self._own_layers[i][name].plain_factors()
                    up = up * self.applied[i].strength
                    self._plain_host[host_key] = (down.to("cpu", dtype).contiguous(), up.to("cpu", dtype).contiguous())
            down, up = self._plain_host[host_key]
            self._plain[key] = (down.to(device), up.to(device))
        return self._plain[key]

    def _merged_weight(self, module: torch.nn.Module, slots: tuple, device: torch.device) -> torch.Tensor:
        """W + Σ strength·ΔW(r) at this call's ranks: the copy of the previous call if the ranks
        are the same; else that copy moved to the new ranks in place (``_move_in_place``); else
        merged afresh from W into it (no new allocation per rank change)."""
        weight = module.weight
        source = (id(weight), weight.data_ptr(), self.weights_state)
        ranks = tuple(self.shared_ranks)
        cached = self._merged.get(module)
        # an inference-mode tensor can't be written outside inference mode: allocate anew then
        if cached is not None and not torch.is_inference_mode_enabled() and cached.tensor.is_inference():
            cached = None
        if cached is not None and cached.source == source:
            if cached.ranks == ranks:
                return cached.tensor
            if self._incremental_ok(weight.dtype) and self._move_in_place(cached, slots, ranks, device):
                return cached.tensor
        same_layout = cached is not None and (cached.tensor.shape, cached.tensor.dtype, cached.tensor.device) == (weight.shape, weight.dtype, weight.device)
        buffer = cached.tensor if same_layout else None  # type: ignore[union-attr]
        merged: torch.Tensor | None = None
        for i, name, rows in slots:
            down, up = self._plain_factors(i, name, device, weight.dtype)
            k = self._own_layers[i][name].components(ranks[i])  # type: ignore[arg-type]
            if rows is None and merged is None:
                merged = torch.addmm(weight, up[:, :k], down[:k], out=buffer)
                continue
            if merged is None:
                merged = buffer.copy_(weight) if buffer is not None else weight.detach().clone()
            target = merged if rows is None else merged[rows[0] : rows[0] + rows[1]]
            target.addmm_(up[:, :k], down[:k])
        assert merged is not None
        layers = [(self._own_layers[i][name], ranks[i]) for i, name, _ in slots]
        self._merged[module] = _Merged(
            source, ranks, merged,
            roundings=sum(layer.components(rank) + 1 for layer, rank in layers),
            budget=self.DRIFT_BUDGET * sum(layer.components(layer.rank) + 1 for layer, _ in layers),
        )
        return merged

    # Merged float32 weights follow the rank in place, and are merged afresh from W once the
    # roundings since the last fresh merge would exceed this many full fresh merges' worth.
    DRIFT_BUDGET = 4

    @staticmethod
    def _incremental_ok(dtype: torch.dtype) -> bool:
        """Move merged weights of this dtype between ranks in place? float32 only: each move
        rounds the weight once more, by 2^-24 of it. In bfloat16 (2^-8) and float16 (2^-11) the
        moves of one run add up to several times a fresh merge's rounding error (≈ 5× after 25
        steps, as large as a LoRA's delta: bench/RESULTS.md, GPU section), so those are merged
        afresh at every rank."""
        return dtype == torch.float32

    def _move_in_place(self, cached: "_Merged", slots: tuple, ranks: tuple, device: torch.device) -> bool:
        """Add (rank up) or subtract (rank down) only the components between the cached ranks
        and ``ranks``: per changed slot one GEMM of |k_new − k_old| components over its rows,
        where a fresh merge copies W and multiplies all k_new. False, with nothing changed, where
        a fresh merge costs no more (it then also resets the drift) or the drift budget is spent.

        Drift bound (elementwise; u = 2^-24, γ_n = n·u/(1 − n·u); Higham, Accuracy and Stability
        of Numerical Algorithms, §3.1 and Lemma 3.3): let T be the exact W + Σ s·U[:, :k]·D[:k]
        and A = |W| + 2·Σ |s·U|·|D| over all components. A fresh merge sums 1 + k terms per entry,
        so |F − T| ≤ γ_{k+1}·A. A move sums the merged entry and m products; the entry and the
        products are bounded by A (a rank-down move subtracts components the entry holds, hence
        the 2), so it adds at most γ_{m+1}·A·(1 + the error so far), and since
        (1 + γ_a)(1 + γ_b) ≤ 1 + γ_{a+b}, after a fresh merge of k_0 components and moves of
        m_1..m_n:  |M − T| ≤ γ_N·A,  N = (k_0 + 1) + Σ (m_j + 1).
        N is ``roundings`` (summed over the module's slots, so it also holds for rows several
        adapters cover), and N ≤ DRIFT_BUDGET·Σ (K + 1), K the slots' full component counts:
        any sequence of ranks stays within DRIFT_BUDGET times the worst case of a fresh merge at
        full rank (tests/nodes/test_merge_drift.py checks |M − T| ≤ γ_N·A against float64)."""
        moves = []
        for i, name, rows in slots:
            layer = self._own_layers[i][name]
            old, new = layer.components(cached.ranks[i]), layer.components(ranks[i])
            if new != old:
                moves.append((i, name, rows, old, new))
        fresh_cost = sum(self._own_layers[i][name].components(ranks[i]) for i, name, _ in slots)
        roundings = sum(abs(new - old) + 1 for *_, old, new in moves)
        if sum(abs(new - old) for *_, old, new in moves) >= fresh_cost or cached.roundings + roundings > cached.budget:
            return False
        for i, name, rows, old, new in moves:
            down, up = self._plain_factors(i, name, device, cached.tensor.dtype)
            lo, hi = min(old, new), max(old, new)
            target = cached.tensor if rows is None else cached.tensor[rows[0] : rows[0] + rows[1]]
            target.addmm_(up[:, lo:hi], down[lo:hi], alpha=1.0 if new > old else -1.0)
        cached.ranks = ranks
        cached.roundings += roundings
        return True

    # -- the patched forward ------------------------------------------------------------------------
    def forward(self, module: torch.nn.Module, slots: tuple[tuple[int, str, tuple[int, int] | None], ...],
                x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._can_merge(module, x):
            return torch.nn.functional.linear(x, self._merged_weight(module, slots, x.device), module.bias)
        y = type(module).forward(module, x, *args, **kwargs)
        for i, name, rows in slots:
            if self._training(i, x.device):  # the exact two-branch delta, with autograd
                delta = self._own_layers[i][name].delta(x, self._mask(i, x.device))
                if self.applied[i].strength != 1.0:
                    delta = delta * self.applied[i].strength
            else:  # frozen: the prepared plain LoRA in float32, masked (fixed shapes: no recompiles)
                down, up = self._plain_factors(i, name, x.device, torch.float32)
                mask = self._mask(i, x.device, components=True)[..., : down.shape[0]]
                delta = scaled_lora(x.to(torch.float32), down, up, mask).to(x.dtype)
            if rows is None:
                y = y + delta
            else:
                y[..., rows[0] : rows[0] + rows[1]] += delta
        return y


class _PatchedForward:
    """Object patch for one Linear's ``forward``: its own output plus the T-LoRA deltas."""

    def __init__(self, stack: TLoRAStack, module: torch.nn.Module, slots: tuple) -> None:
        self.stack = stack
        self.module = module
        self.slots = slots

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.stack.forward(self.module, self.slots, x, *args, **kwargs)


def _apply_model_wrapper(stack: TLoRAStack) -> Callable[..., Any]:
    def wrapper(executor: Any, x: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        base_model = executor.class_obj
        stack.set_timesteps(sigma_to_timestep(base_model.model_sampling, t.reshape(-1)))
        # Hook LoRAs (per-conditioning weight hooks) rewrite weights in place between the calls of
        # one step: a merged copy would carry one cond's hook into the other's call.
        patcher = getattr(base_model, "current_patcher", None)
        stack.weights_rewritten_per_call = bool(patcher is not None and patcher.hook_patches)
        stack.weights_state = getattr(base_model, "current_weight_patches_uuid", None)
        if not stack._merge_room:  # only until this run's room is decided (once per run)
            stack.call_memory = int(base_model.memory_required(x.shape))
        return executor(x, t, *args, **kwargs)

    return wrapper


def _covers_all_rows(slot_rows: list[tuple[int, int] | None], out_features: int) -> bool:
    """Do these slots (None = the whole weight, else (offset, size) row ranges) adapt every row?"""
    covered = 0
    for offset, size in sorted(r if r is not None else (0, out_features) for r in slot_rows):
        if offset > covered:
            return False
        covered = max(covered, offset + size)
    return covered >= out_features


def get_stack(model: comfy.model_patcher.ModelPatcher) -> TLoRAStack | None:
    return model.get_attachment(KEY)


def attach(model: comfy.model_patcher.ModelPatcher, adapter: TLoRA, strength: float, node: str) -> TLoRAStack:
    """Patch a ``clone()``d MODEL in place so ``adapter`` follows every model call's sigma.

    Adds to the adapters already attached to this MODEL (if any) and re-registers everything
    under one key, so nothing is left over from the previous registration.
    """
    targets = check_compatible(adapter, model, node)
    previous = get_stack(model)
    item = Applied(adapter, float(strength), targets, node)
    stack = previous.extended(item) if previous is not None else TLoRAStack((item,))

    slots: dict[str, list[tuple[int, str, tuple[int, int] | None]]] = {}
    for i, applied in enumerate(stack.applied):
        for name, target in applied.targets.items():
            slots.setdefault(target.module, []).append((i, name, target.rows))
    for module_path, module_slots in slots.items():
        module = comfy.utils.get_attr(model.model, module_path)
        model.add_object_patch(f"{module_path}.forward", _PatchedForward(stack, module, tuple(module_slots)))
        stack.modules.append(module)
        if _covers_all_rows([rows for _, _, rows in module_slots], module.weight.shape[0]):
            stack.mergeable.add(module)

    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, _apply_model_wrapper(stack))
    if any(item.adapter.config.timestep_range is not None for item in stack.applied):
        model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY)
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, _outer_sample_wrapper(stack))
    for event, callback in ((comfy.patcher_extension.CallbacksMP.ON_CLEANUP, stack.release_run),
                            (comfy.patcher_extension.CallbacksMP.ON_DETACH, stack.release)):
        model.remove_callbacks_with_key(event, KEY)
        model.add_callback_with_key(event, KEY, callback)
    model.set_attachments(KEY, stack)
    return stack
