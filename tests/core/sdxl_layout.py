"""The SD-XL UNet's attention layout in diffusers names (140 attention modules), for tests."""

from __future__ import annotations

# (block prefix, number of attentions, transformer depth, hidden width)
_BLOCKS = [
    ("down_blocks.1", 2, 2, 640),
    ("down_blocks.2", 2, 10, 1280),
    ("mid_block", 1, 10, 1280),
    ("up_blocks.0", 3, 10, 1280),
    ("up_blocks.1", 3, 2, 640),
]
CONTEXT_DIM = 2048


def attention_modules() -> list[tuple[str, int, int]]:
    """[(module name, hidden width, context width)] for every attn1/attn2 module."""
    out = []
    for prefix, n_attn, depth, hidden in _BLOCKS:
        for a in range(n_attn):
            for b in range(depth):
                base = f"{prefix}.attentions.{a}.transformer_blocks.{b}"
                out.append((f"{base}.attn1", hidden, hidden))
                out.append((f"{base}.attn2", hidden, CONTEXT_DIM))
    return out


def reference_state_dict(variant: str, rank: int, seed: int = 0, scale: float = 0.01):
    """A synthetic reference ``pytorch_lora_weights.safetensors`` state dict with the exact key set."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for module, hidden, context in attention_modules():
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            fan_in = context if proj in ("to_k", "to_v") else hidden
            r = min(rank, fan_in, hidden)
            key = f"{module}.processor.{proj}_lora"
            if variant == "vanilla":
                sd[f"{key}.down.weight"] = torch.randn(r, fan_in, generator=g) * scale
                sd[f"{key}.up.weight"] = torch.randn(hidden, r, generator=g) * scale
            else:
                for trained, frozen, shape in (
                    ("q_layer.weight", "base_q.weight", (r, fan_in)),
                    ("p_layer.weight", "base_p.weight", (hidden, r)),
                ):
                    sd[f"{key}.{trained}"] = torch.randn(*shape, generator=g) * scale
                    sd[f"{key}.{frozen}"] = torch.randn(*shape, generator=g) * scale
                sd[f"{key}.lambda_layer"] = torch.rand(1, r, generator=g)
                sd[f"{key}.base_lambda"] = torch.rand(1, r, generator=g)
    return sd
