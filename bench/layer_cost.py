"""Cost of one adapted Linear on its own: the base layer, and the base layer plus the T-LoRA
delta three ways: two-branch (``TLoRALayer.delta``: four rank-R GEMMs, mask multiplies and a
subtraction; what training uses), masked plain LoRA (the 2R interleaved components of
``plain_factors`` with the mask repeated per component: two GEMMs and one multiply; what the
product uses for a frozen adapter on the activation side) and sliced plain LoRA (only the 2r
active components: fewer FLOPs, but a shape that changes with the rank), at the token counts and
widths of SD1.5's attention levels. Median of 5 x 20 calls, float32, CPU.

    python bench/layer_cost.py [--threads N] [--active-rank 40]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--active-rank", type=int, default=40)
    p.add_argument("--batch", type=int, default=2, help="rows per model call (2 = cond + uncond)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    c.load_pack()  # tlora_core only: no ComfyUI needed
    import proposals
    from tlora_nodes.tlora_core import TLoRALayer
    from tlora_nodes.tlora_core.functional import scaled_lora

    print(f"torch {torch.__version__}, {c.cpu_model()}, {torch.get_num_threads()} threads, rank {args.rank}, "
          f"active rank {args.active_rank}, batch {args.batch}")
    # SD1.5 at 256 px: 32x32 latent -> 1024 / 256 / 64 tokens at 320 / 640 / 1280 channels
    for tokens, ch in ((1024, 320), (256, 640), (64, 1280)):
        layer = TLoRALayer(ch, ch, args.rank, "tlora")
        with c.fast_init():
            layer.reset_("last", torch.Generator().manual_seed(0))
        lin = torch.nn.Linear(ch, ch)
        x = torch.randn(args.batch, tokens, ch)
        mask = torch.cat([torch.ones(args.active_rank), torch.zeros(args.rank - args.active_rank)])
        down, up_t = proposals._interleaved(layer, 1.0)
        n = 2 * args.active_rank
        plain_down, plain_up = (t.detach().contiguous() for t in layer.plain_factors())
        plain_mask = mask.repeat_interleave(2)
        cases = {
            "base Linear": lambda: lin(x),
            "+ two-branch delta": lambda: lin(x) + layer.delta(x, mask),
            "+ masked plain LoRA": lambda: lin(x) + scaled_lora(x, plain_down, plain_up, plain_mask),
            "+ sliced plain LoRA": lambda: lin(x) + torch.matmul(F.linear(x, down[:n]), up_t[:n]),
        }
        out = {}
        with torch.inference_mode():
            for f in cases.values():
                f()
            for name, f in cases.items():
                runs = []
                for _ in range(5):
                    t = time.perf_counter()
                    for _ in range(20):
                        f()
                    runs.append((time.perf_counter() - t) / 20 * 1e3)
                out[name] = sorted(runs)[2]
        print(f"{tokens:5d} tokens x {ch:4d} ch: " + "  ".join(f"{k} {v:6.2f} ms" for k, v in out.items()))


if __name__ == "__main__":
    main()
