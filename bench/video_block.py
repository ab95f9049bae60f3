"""Wan 2.1 at full width on a 33-frame 480p latent, per transformer block: the T-LoRA Train step
and the Timestep-Aware Apply overhead.

A Wan 2.1 model (ComfyUI's ``WAN21_T2V``, PyTorch attention: ``use_pytorch_attention``) at the real width of the 1.3B (1536 = 12 heads x 128,
FFN 8960) or the 14B checkpoint (5120 = 40 x 128, FFN 13824), umT5 context 512 x 4096, with only
``--blocks`` of its transformer blocks (the full 30 / 40 are beyond a small CPU; every block has
the same shapes, so the figures are per block and the whole model is an extrapolation). The
latent is what a 33-frame 832x480 clip encodes to, (1, 16, 9, 60, 104): 9 x 30 x 52 = 14,040
tokens after the (1, 2, 2) patch.

apply: one model call (one Euler step, cfg 1) with A = Timestep-Aware Apply's patch
(``patching.attach``) and B = the same adapter merged once by the stock LoraLoader path
(``export_lora`` -> ``comfy.sd.load_lora_for_models``) on its own copy of the weights; after one
warm-up each, A, B, A, B, ... over ``--repeats``; median of the pair ratios, wall and process CPU
time.

train: T-LoRA Train (the node, as ComfyUI's executor runs it) on that latent, fp32, gradient
checkpointing, batch 1; a global optimizer-step hook stamps every step (train_step.py's clock),
the first ``--warmup`` steps are dropped, the median of the rest is the step time.

    flock /work/notes/bench.lock python bench/video_block.py --width 1.3B --blocks 1 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
from train_step import StepClock, execute_v3  # noqa: E402

# Wan 2.1's two sizes (ComfyUI's detection of the checkpoints gives these unet_configs)
WIDTHS = {
    "1.3B": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "14B": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}
WAN = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16, text_dim=4096,
           freq_dim=256, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)
TEXT_TOKENS = 512  # umT5's padded length in Wan


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", choices=sorted(WIDTHS), default="1.3B")
    p.add_argument("--blocks", type=int, default=1, help="transformer blocks kept (full width)")
    p.add_argument("--latent", default="9x60x104", help="latent frames x height x width (33 frames at 832x480)")
    p.add_argument("--parts", default="apply,train")
    p.add_argument("--repeats", type=int, default=3, help="apply: timed A/B pairs")
    p.add_argument("--warmup", type=int, default=1, help="train: steps not timed")
    p.add_argument("--measure", type=int, default=2, help="train: timed steps")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--min-rank", type=int, default=32)
    p.add_argument("--sigma", type=float, default=0.9, help="apply: the step's sigma (rank r(1000·sigma))")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--comfyui", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast-init", action="store_true", help="T-LoRA init without its SVD (timing-neutral)")
    p.add_argument("--json", default=None, metavar="OUT")
    args = p.parse_args(argv)
    args.device = "cpu"
    return args


def build(args: argparse.Namespace):
    """The Wan model (random weights, fan-in scaled as bench/_common.py's) on the CPU, fp32."""
    import comfy.model_patcher
    import comfy.supported_models

    config = dict(WAN, **WIDTHS[args.width])
    config["num_layers"] = args.blocks
    model_config = comfy.supported_models.WAN21_T2V(dict(config, dtype=torch.float32))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    c._fill(model.diffusion_model, args.seed)
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def conditioning(seed: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, TEXT_TOKENS, 4096, generator=g) * scale, {}]]


def apply_part(args, base, shape) -> dict:
    import comfy.sample
    import comfy.samplers
    import comfy.sd

    from tlora_nodes.nodes import patching
    from tlora_nodes.tlora_core import export_lora

    with c.fast_init() if args.fast_init else contextlib.nullcontext():
        t_adapter, adapter = c.timed(torch.device("cpu"), lambda: c.make_adapter(base, args.rank, args.min_rank, args.seed))
    model_a = base.clone()
    patching.attach(model_a, adapter, 1.0, "bench")
    model_b, _ = comfy.sd.load_lora_for_models(c.copy_model(base), None, export_lora(adapter), 1.0, 0)
    if len(model_b.patches) != len(adapter.names):
        raise SystemExit(f"bench: the stock loader mapped {len(model_b.patches)} of {len(adapter.names)} layers.")
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(shape, generator=g)
    positive, negative = conditioning(args.seed + 1), conditioning(args.seed + 2, 0.5)
    sampler = comfy.samplers.sampler_object("euler")
    sigmas = torch.tensor([args.sigma, 0.0])

    def run(model):  # one model call: cfg 1 skips the unconditional pass
        return comfy.sample.sample_custom(model, noise * args.sigma, 1.0, sampler, sigmas, positive, negative,
                                          torch.zeros(shape), disable_pbar=True, seed=args.seed)

    contenders = {"tlora": model_a, "lora": model_b}
    warmup = {}
    for name, model in contenders.items():
        warmup[name], out = c.timed(torch.device("cpu"), lambda: run(model))
        if not bool(torch.isfinite(out).all()):
            raise SystemExit(f"bench: {name} produced non-finite latents.")
        print(f"apply warm-up {name}: {warmup[name]:.1f}s", flush=True)
    times = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    for i in range(args.repeats):
        for name, model in contenders.items():  # A, B, A, B, ...
            seconds, cpu_seconds, _ = c.timed_cpu(torch.device("cpu"), lambda: run(model))
            times[name].append(seconds)
            cpu[name].append(cpu_seconds)
            print(f"apply repeat {i + 1}/{args.repeats} {name}: {seconds:.1f}s (CPU {cpu_seconds:.1f}s) load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    ratios = [a / b for a, b in zip(times["tlora"], times["lora"])]
    cpu_ratios = [a / b for a, b in zip(cpu["tlora"], cpu["lora"])]
    result = {
        "adapter_layers": len(adapter.names), "rank": args.rank, "min_rank": args.min_rank, "sigma": args.sigma,
        "active_rank": int(adapter.schedule.rank_at(1000.0 * args.sigma)), "adapter_init_s": t_adapter,
        "warmup_s": warmup, "times_s": times, "cpu_times_s": cpu, "pair_ratios": ratios, "cpu_pair_ratios": cpu_ratios,
        "median_s": {name: c.median(v) for name, v in times.items()},
        "median_cpu_s": {name: c.median(v) for name, v in cpu.items()},
        "ratio": c.median(ratios), "cpu_time_ratio": c.median(cpu_ratios),
    }
    print(f"apply: tlora {result['median_s']['tlora']:.1f}s lora {result['median_s']['lora']:.1f}s per call, ratio "
          f"{result['ratio']:.4f}, CPU-time ratio {result['cpu_time_ratio']:.4f}", flush=True)
    return result


def train_part(args, model, shape) -> dict:
    import folder_paths

    from tlora_nodes.nodes.train import TLoRATrain

    scratch = tempfile.mkdtemp(prefix="tlora-bench-")  # nothing lands in a real models folder
    folder_paths.folder_names_and_paths["loras"] = ([os.path.join(scratch, "loras")], {".safetensors"})
    os.makedirs(os.path.join(scratch, "loras"))
    folder_paths.filename_list_cache = {}
    latents = {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 3))}
    steps = args.warmup + args.measure
    inputs = dict(
        model=model, latents=latents, positive=conditioning(args.seed + 1), steps=steps, learning_rate=1e-4,
        rank=args.rank, min_rank=args.min_rank, schedule_power=1.0, variant="T-LoRA", init="last", batch_size=1,
        seed=args.seed, save_every=0, filename_prefix="bench/wan", resume_from="none", training_dtype="fp32",
        gradient_checkpointing=True,
    )
    clock = StepClock(torch.device("cpu"))
    t0 = time.perf_counter()
    with c.fast_init() if args.fast_init else contextlib.nullcontext(), torch.inference_mode():
        execute_v3(TLoRATrain, {k: [v] for k, v in inputs.items()})  # it takes every input as a list
    wall = time.perf_counter() - t0
    clock.handle.remove()
    if len(clock.stamps) != steps:
        raise SystemExit(f"bench: expected {steps} optimizer steps, saw {len(clock.stamps)}.")
    gaps = [b - a for a, b in zip(clock.stamps[args.warmup - 1 :], clock.stamps[args.warmup :])]
    cpu_gaps = [b - a for a, b in zip(clock.cpu_stamps[args.warmup - 1 :], clock.cpu_stamps[args.warmup :])]
    result = {"steps_run": steps, "node_wall_s": wall, "step_s": gaps, "step_cpu_s": cpu_gaps,
              "median_step_s": c.median(gaps), "median_step_cpu_s": c.median(cpu_gaps),
              "setup_and_warmup_s": clock.stamps[args.warmup - 1] - t0, "load_after": os.getloadavg()}
    print(f"train: {result['median_step_s']:.1f}s/step (CPU {result['median_step_cpu_s']:.1f}s), steps {gaps}", flush=True)
    return result


def use_pytorch_attention(args: argparse.Namespace) -> None:
    """ComfyUI's --use-pytorch-cross-attention (what it picks by itself on NVIDIA GPUs): on a CPU
    it otherwise takes its sub-quadratic attention, which in a training step keeps every score
    chunk for the backward pass, (heads x tokens^2) floats: 9.5 GB for one 1.3B block at 14,040
    tokens. PyTorch's CPU flash attention keeps O(tokens)."""
    for position, extra in enumerate([str(c.find_comfyui(args.comfyui)), *c._comfyui_env().extra_pythonpath()]):
        sys.path.insert(position, extra)
    from comfy.cli_args import args as comfy_args

    comfy_args.use_pytorch_cross_attention = True  # read once, when comfy.model_management is imported


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    use_pytorch_attention(args)
    comfyui = c.start(args)
    frames, height, width = (int(v) for v in args.latent.split("x"))
    shape = (1, 16, frames, height, width)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        t_build, model = c.timed(cpu, lambda: build(args))
    params = c.count_params(model)
    tokens = frames * (height // 2) * (width // 2)
    print(f"Wan 2.1 {args.width} width, {args.blocks} block(s): {params / 1e6:.0f}M params, built in {t_build:.0f}s; "
          f"latent {shape} = {tokens} tokens; load {os.getloadavg()[0]:.2f}", flush=True)
    result = {"machine": c.machine_info(cpu, comfyui), "width": args.width, "config": dict(WAN, **WIDTHS[args.width]),
              "blocks": args.blocks, "latent": shape, "tokens": tokens, "text_tokens": TEXT_TOKENS, "params": params,
              "threads": torch.get_num_threads(), "load_before": os.getloadavg(),
              "adapter_init": "fast (no SVD)" if args.fast_init else "TLoRA.create (SVD)",
              "attention": __import__("comfy.ldm.modules.attention", fromlist=["x"]).optimized_attention.__name__}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if "apply" in parts:
        with torch.inference_mode():
            result["apply"] = apply_part(args, model, shape)
        c.write_json(args.json, result)
    if "train" in parts:
        result["train"] = train_part(args, model, shape)
    result["load_after"] = os.getloadavg()
    c.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
