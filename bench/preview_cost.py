"""What previews cost a T-LoRA Train run: one preview (every prompt sampled and decoded) against
one training step, and a run with previews against the same run without.

    preview / step = median preview time / median training-step time      (wall and process CPU)
    overhead       = (run with previews - run without) / run without      (same steps, same seed)

One process, one full-size model with random weights; runs of the real node alternate without
and with previews (off, on, off, on, ...: ``--repeats`` pairs). A run trains ``--steps`` steps;
with previews it samples every ``--every`` steps and at the end (one prompt, ``--preview-steps``
sampling steps, the family's CFG, the training latent's size) and decodes with a full-size SD VAE
of random weights. Training-step times come from an optimizer step hook (the first step of each
run dropped), preview times from around ``Previewer.take``.

    python bench/preview_cost.py --fast-init                    # CPU: full SD1.5, 256², fp32
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402
from train_step import execute_v3  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    c.common_arguments(p, resolution=256, steps=4, repeats=2)
    p.add_argument("--every", type=int, default=2, help="preview_every of the runs with previews")
    p.add_argument("--preview-steps", type=int, default=20)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--min-rank", type=int, default=32)
    return p.parse_args(argv)


def sd_vae(device: torch.device, seed: int):
    """A full-size SD1.x/SDXL VAE (ComfyUI's own class) with fan-in scaled random weights."""
    import comfy.sd

    # the two keys ComfyUI reads to pick the SD VAE with its four resolution levels
    keys = {"decoder.conv_in.weight": torch.zeros(512, 4, 3, 3), "decoder.up.3.upsample.conv.weight": torch.zeros(512, 512, 3, 3)}
    logging.disable(logging.WARNING)  # ComfyUI lists every weight not in ``keys``: all of them are filled below
    try:
        vae = comfy.sd.VAE(sd=keys, device=device)
    finally:
        logging.disable(logging.NOTSET)
    c._fill(vae.first_stage_model, seed)
    return vae


class Clock:
    """Wall and CPU time of every optimizer step and every preview."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float]] = []
        self.previews: list[tuple[float, float]] = []
        self.handle = register_optimizer_step_post_hook(lambda *a: self.steps.append((time.perf_counter(), time.process_time())))

    def gaps(self) -> tuple[list[float], list[float]]:
        wall = [b[0] - a[0] for a, b in zip(self.steps, self.steps[1:])]
        cpu = [b[1] - a[1] for a, b in zip(self.steps, self.steps[1:])]
        return wall, cpu


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    comfyui = c.start(args)
    dtype = c.resolve_dtype(args)
    device = c.torch_device(args)

    import folder_paths

    from tlora_nodes.nodes import previews
    from tlora_nodes.nodes.train import TLoRATrain

    scratch = tempfile.mkdtemp(prefix="tlora-bench-")
    os.makedirs(os.path.join(scratch, "loras"))
    folder_paths.folder_names_and_paths["loras"] = ([os.path.join(scratch, "loras")], {".safetensors"})
    folder_paths.filename_list_cache = {}

    with torch.inference_mode():
        model = c.build_model(args.arch, dtype, device, args.seed)
        vae = sd_vae(device, args.seed + 3)
        g = torch.Generator().manual_seed(args.seed)
        latents = {"samples": torch.randn(1, *c.latent_shape(args.resolution), generator=g)}
        positive = c.conditioning(args.arch, args.resolution, args.seed + 1)
        prompt = c.conditioning(args.arch, args.resolution, args.seed + 2)

    clock = Clock()
    take = previews.Previewer.take

    def timed_take(self, *a, **k):
        w, t = time.perf_counter(), time.process_time()
        out = take(self, *a, **k)
        clock.previews.append((time.perf_counter() - w, time.process_time() - t))
        return out

    previews.Previewer.take = timed_take

    runs = {"off": [], "on": []}
    step_wall: list[float] = []
    step_cpu: list[float] = []
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            inputs = dict(
                model=model, latents=latents, positive=positive, steps=args.steps, learning_rate=1e-4, rank=args.rank,
                min_rank=args.min_rank, schedule_power=1.0, variant="T-LoRA", init="last", batch_size=1, seed=args.seed,
                save_every=0, filename_prefix="bench/preview", resume_from="none", training_dtype=args.dtype,
                gradient_checkpointing=False, recipe="custom",
            )
            if mode == "on":
                inputs.update(preview_prompts=prompt, preview_vae=vae, preview_every=args.every,
                              preview_steps=args.preview_steps)
            clock.steps.clear()
            init = c.fast_init() if args.fast_init else contextlib.nullcontext()
            w, t = time.perf_counter(), time.process_time()
            with init, torch.inference_mode():
                execute_v3(TLoRATrain, {k: [v] for k, v in inputs.items()})
            runs[mode].append((time.perf_counter() - w, time.process_time() - t))
            if mode == "off":  # steps of a run with previews have a preview inside some gaps
                wall, cpu = clock.gaps()
                step_wall += wall
                step_cpu += cpu
    clock.handle.remove()

    preview_wall = c.median([p[0] for p in clock.previews])
    preview_cpu = c.median([p[1] for p in clock.previews])
    off_wall, on_wall = c.median([r[0] for r in runs["off"]]), c.median([r[0] for r in runs["on"]])
    off_cpu, on_cpu = c.median([r[1] for r in runs["off"]]), c.median([r[1] for r in runs["on"]])
    n_previews = len(clock.previews) // args.repeats
    result = {
        "machine": c.machine_info(device, comfyui), "arch": args.arch, "resolution": args.resolution, "dtype": args.dtype,
        "steps": args.steps, "every": args.every, "preview_steps": args.preview_steps, "previews_per_run": n_previews,
        "step_s": c.median(step_wall), "step_cpu_s": c.median(step_cpu),
        "preview_s": preview_wall, "preview_cpu_s": preview_cpu,
        "preview_per_step": preview_wall / c.median(step_wall), "preview_per_step_cpu": preview_cpu / c.median(step_cpu),
        "run_off_s": off_wall, "run_on_s": on_wall, "run_off_cpu_s": off_cpu, "run_on_cpu_s": on_cpu,
        "rest_per_preview_s": (on_wall - off_wall - n_previews * preview_wall) / max(n_previews, 1),
    }
    print(
        f"{args.arch} {args.resolution}² {args.dtype}: training step {result['step_s']:.2f} s "
        f"(CPU {result['step_cpu_s']:.2f} s); one preview ({args.preview_steps} sampling steps + decode) "
        f"{preview_wall:.2f} s (CPU {preview_cpu:.2f} s) = {result['preview_per_step']:.2f} training steps "
        f"(CPU-time ratio {result['preview_per_step_cpu']:.2f}); run of {args.steps} steps {off_wall:.1f} s without, "
        f"{on_wall:.1f} s with {n_previews} previews (CPU {off_cpu:.1f} / {on_cpu:.1f} s); beyond the previews "
        f"themselves {result['rest_per_preview_s']:+.2f} s per preview"
    )
    c.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
