"""T-LoRA maths as pure functions (SPEC §3).

Vanilla T-LoRA:  delta(x) = up · (m ⊙ down·x)                    delta_W = up · diag(m) · down
T-LoRA (Ortho):  delta(x) = P((λ⊙m)⊙Qx) − P0((λ0⊙m)⊙Q0x)         delta_W = P·diag(λ⊙m)·Q − P0·diag(λ0⊙m)·Q0

The Ortho form is evaluated as two identical computations subtracted, as the reference does, so
that at init (P, Q, λ = P0, Q0, λ0) the delta is exactly zero for every mask, not just close.

Masks: (R,) shared by every row, or (B, R) one per batch row of x (x: (B, ..., in)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _row_scale(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(K,) stays; (B, K) becomes (B, 1, ..., 1, K) to broadcast over x's middle dims."""
    if scale.dim() == 1:
        return scale
    if scale.dim() != 2 or scale.shape[0] != x.shape[0]:
        raise ValueError(
            f"T-LoRA: got {scale.shape[0] if scale.dim() == 2 else tuple(scale.shape)} per-row masks "
            f"for a batch of {x.shape[0]} rows."
        )
    return scale.view(scale.shape[0], *([1] * (x.dim() - 2)), scale.shape[1])


def scaled_lora(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """up · (scale ⊙ down·x). down: (K, in), up: (out, K), scale: (K,) or (B, K)."""
    return F.linear(F.linear(x, down) * _row_scale(scale, x), up)


def vanilla_delta(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return scaled_lora(x, down, up, mask)


def ortho_delta(
    x: torch.Tensor,
    q: torch.Tensor,
    p: torch.Tensor,
    lam: torch.Tensor,
    q0: torch.Tensor,
    p0: torch.Tensor,
    lam0: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    return scaled_lora(x, q, p, lam * mask) - scaled_lora(x, q0, p0, lam0 * mask)


def vanilla_delta_weight(down: torch.Tensor, up: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(out, in) for one (R,) mask."""
    _one_mask(mask)
    return (up * mask) @ down


def ortho_delta_weight(
    q: torch.Tensor,
    p: torch.Tensor,
    lam: torch.Tensor,
    q0: torch.Tensor,
    p0: torch.Tensor,
    lam0: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """(out, in) for one (R,) mask."""
    _one_mask(mask)
    return (p * (lam * mask)) @ q - (p0 * (lam0 * mask)) @ q0


def _one_mask(mask: torch.Tensor) -> None:
    if mask.dim() != 1:
        raise ValueError(f"T-LoRA: a merged weight needs one mask of shape (R,), got {tuple(mask.shape)}.")


def balanced_factors(down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact, balanced factors of delta_W = up @ down, found without forming delta_W.

    down: (k, in), up: (out, k), float64 (exact products of float32 parameters; see
    ``TLoRALayer.plain_factors``). Returns (down' (m, in), up' (out, m)) in float64 with
    up' @ down' = delta_W to float64 rounding, m <= min(k, in, out):
        up = Qa·Ra, downᵀ = Qb·Rb (QR),  Ra·Rbᵀ = U·diag(s)·Vᵀ (SVD of a small core),
        up' = Qa·U·diag(√s),  down' = diag(√s)·Vᵀ·Qbᵀ.
    The Ortho branches [λP, −λ0P0] and [Q; Q0] nearly cancel early in training: cast apart to
    fp16 they lose up to all of delta_W. Here cancellation happens once, in float64 inside the
    core, and what is stored is delta_W's own singular factors, so a later cast to fp16/bf16
    costs only that dtype's rounding of delta_W. √s on both sides keeps the two factors' ranges
    equal (as far from fp16's underflow as the product allows).
    Components whose singular value is at float64's noise level relative to the branches are
    dropped; if none is left (delta_W = 0, e.g. at init) one zero component is returned.
    """
    if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
        raise ValueError(
            f"T-LoRA: LoRA factors must be down (k, in) and up (out, k); got {tuple(down.shape)} and {tuple(up.shape)}."
        )
    qa, ra = torch.linalg.qr(up)
    qb, rb = torch.linalg.qr(down.transpose(0, 1))
    u, s, vh = torch.linalg.svd(ra @ rb.transpose(0, 1), full_matrices=False)
    noise = torch.finfo(s.dtype).eps * max(down.shape[0], 1) * torch.linalg.norm(up) * torch.linalg.norm(down)
    keep = s > noise
    if not bool(keep.any()):
        return down.new_zeros(1, down.shape[1]), up.new_zeros(up.shape[0], 1)
    root = s[keep].sqrt()
    return root[:, None] * (vh[keep] @ qb.transpose(0, 1)), (qa @ u[:, keep]) * root
