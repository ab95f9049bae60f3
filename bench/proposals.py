"""What-if contenders: proposed sampling paths for Timestep-Aware Apply, timed beside the product
in the same run (``apply_overhead.py --whatif``). Bench-only; nothing here changes the pack.

The product (nodes/patching.py since 18d7179) samples through a merged weight W + s·ΔW(r) per
adapted layer, rebuilt whenever the rank changes (in practice every step), and falls back to the
activation-side delta (four rank-R GEMMs, mask multiplies, a subtraction) where it can't merge.

"fused": activation-side, but cheap. Per adapted layer the Ortho factors are prepared once per
sampling run (per device and dtype) as one plain LoRA of rank 2R, both branches interleaved,
    down = [Q[0]; Q0[0]; Q[1]; Q0[1]; ...]              (2R, in)
    up^T = [λ[0]·P[:,0]; −λ0[0]·P0[:,0]; ...]·strength  (2R, out)
so that the mask "first r components on" is the slice [:2r] of both; a model call costs
    delta = (x @ down[:2r]^T) @ up^T[:2r]
two GEMMs of rank 2r(t) and one add, no weight copy and no re-merge when the rank changes. Same
maths as SPEC §3; floating-point sums are ordered differently (the two branches meet inside one
GEMM), so at init the delta is ~1e-7 relative instead of exactly 0. Rows at different ranks
multiply the (.., 2R) intermediate by the interleaved per-row mask instead of slicing. With
autograd on (training) it falls back to the product path. Factors are dropped at the end of every
sampling run (ON_CLEANUP), like the product's merged weights.

Since 4bc89c7 the product's own activation side for a frozen adapter is this form over all 2R
components with the mask repeated per component (fixed shapes for torch.compile); "fused" slices
to the active 2r instead.

"fused-lowp": the same with factors and GEMMs in the activation dtype (bf16/fp16) instead of
float32 (SPEC §3 asks for float32 adapter maths; this trades that for speed on GPUs).

"merge-reuse": the product's merged path (204c3e1: one addmm per layer per rank change), but the
merged weight of the previous rank is overwritten in place (``addmm(..., out=buffer)``) instead of
freed and allocated again, so no fresh memory is faulted in every step.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

VARIANTS = ("fused", "fused-lowp", "merge-reuse")


def _interleaved(layer, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(down (K, in), upT (K, out)) with K = R (Vanilla) or 2R (Ortho, interleaved)."""
    with torch.no_grad():
        if layer.variant == "vanilla":
            return layer.down.detach().clone(), (layer.up.detach().t() * strength).contiguous()
        r = layer.rank
        down = torch.stack([layer.q, layer.q0], dim=1).reshape(2 * r, layer.in_features)
        up = torch.stack([layer.p * layer.lam, -(layer.p0 * layer.lam0)], dim=2).reshape(layer.out_features, 2 * r)
        return down.contiguous(), (up.t() * strength).contiguous()


def install(model, stack, variant: str) -> None:
    """Replace this stack's forward (only this patched MODEL's) by the proposed path. The prepared
    factors are dropped at the end of every sampling run (ON_CLEANUP), as the product drops its
    merged weights and device copies, so every timed run pays for preparing them again."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown what-if {variant!r}; use one of {VARIANTS}")
    if variant == "merge-reuse":
        _install_merge_reuse(stack)
        return
    lowp = variant == "fused-lowp"
    factors: dict[tuple[int, str, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor, int]] = {}
    layer_maps: dict[int, dict[str, Any]] = {}
    original_set = stack.set_timesteps
    shared_rank: list[int | None] = [None] * len(stack.applied)

    def set_timesteps(self, timesteps: torch.Tensor) -> None:
        original_set(timesteps)
        for i, ranks in enumerate(self.active_ranks):
            # one host sync per model call (the product already syncs here once)
            shared_rank[i] = int(ranks[0]) if self.masks[i] is not None and self.masks[i].dim() == 1 else None

    def forward(self, module, slots, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.applied[0].adapter.parameters()):
            return type(self).forward(self, module, slots, x, *args, **kwargs)  # training: product path
        y = type(module).forward(module, x, *args, **kwargs)
        dtype = x.dtype if lowp else torch.float32
        xc = x if x.dtype == dtype else x.to(dtype)
        for i, name, rows in slots:
            key = (i, name, x.device, dtype)
            entry = factors.get(key)
            if entry is None:
                if i not in layer_maps:
                    layer_maps[i] = dict(self.applied[i].adapter.items())
                layer = layer_maps[i][name]
                down, up_t = _interleaved(layer, self.applied[i].strength)
                entry = (down.to(x.device, dtype), up_t.to(x.device, dtype), 1 if layer.variant == "vanilla" else 2)
                factors[key] = entry
            down, up_t, per = entry
            k = down.shape[0]
            r = shared_rank[i]
            if r is None and self.masks[i] is None:
                r = self.applied[i].adapter.config.rank  # outside a sampler call: full rank, like the product
            if r is not None:
                n = min(per * r, k)
                delta = torch.matmul(F.linear(xc, down[:n]), up_t[:n])
            else:
                m = self.masks[i][..., : k // per].to(x.device, dtype)
                m = m.repeat_interleave(per, dim=-1)
                h = F.linear(xc, down)
                h = h * m.view(m.shape[0], *([1] * (h.dim() - 2)), m.shape[-1])
                delta = torch.matmul(h, up_t)
            if delta.dtype != y.dtype:
                delta = delta.to(y.dtype)
            if rows is None:
                y = y + delta
            else:
                y[..., rows[0] : rows[0] + rows[1]] += delta
        return y

    import comfy.patcher_extension

    stack.set_timesteps = types.MethodType(set_timesteps, stack)
    stack.forward = types.MethodType(forward, stack)
    cleanup = comfy.patcher_extension.CallbacksMP.ON_CLEANUP
    model.remove_callbacks_with_key(cleanup, "tlora_bench_whatif")
    model.add_callback_with_key(cleanup, "tlora_bench_whatif", lambda *_: (factors.clear(), layer_maps.clear()))


def _install_merge_reuse(stack) -> None:
    if not hasattr(stack, "_plain_factors"):
        raise ValueError("what-if merge-reuse needs the product's addmm merge (nodes/patching.py 204c3e1 or later)")

    def _merged_weight(self, module, slots, device):
        weight = module.weight
        key = (tuple(self.shared_ranks), id(weight), weight.data_ptr())
        cached = self._merged.get(module)
        if cached is not None and cached[0] == key:
            return cached[1]
        buffer = cached[1] if cached is not None else None
        merged = None
        for i, name, rows in slots:
            down, up = self._plain_factors(i, name, device, weight.dtype)
            k = self._own_layers[i][name].components(self.shared_ranks[i])
            if rows is None and merged is None:
                merged = torch.addmm(weight, up[:, :k], down[:k], out=buffer) if buffer is not None else torch.addmm(weight, up[:, :k], down[:k])
                continue
            if merged is None:
                merged = buffer.copy_(weight) if buffer is not None else weight.detach().clone()
            target = merged if rows is None else merged[rows[0] : rows[0] + rows[1]]
            target.addmm_(up[:, :k], down[:k])
        self._merged[module] = (key, merged)
        return merged

    stack._merged_weight = types.MethodType(_merged_weight, stack)
