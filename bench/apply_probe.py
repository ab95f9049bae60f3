"""Where Timestep-Aware Apply's sampling overhead goes: a diagnostic beside apply_overhead.py.

Contenders on the same model, interleaved, median of repeats:
    lora        the adapter exported and merged once by the stock LoraLoader (the baseline)
    tlora       Timestep-Aware Apply, rank 64 / min_rank 32 (the rank changes every step,
                so the merged path re-merges every adapted weight every step)
    tlora-flat  the same adapter with min_rank = rank: the rank never changes, one merge per run
                (isolates the per-step merge cost from the per-call overhead)
then one profiled run of ``tlora`` (top ops by self device and self CPU time).

    python bench/apply_probe.py --arch sdxl --device cuda --dtype bf16 --resolution 1024 --steps 25
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.common_arguments(p, resolution=256, steps=4, repeats=3)
    p.add_argument("--profile-steps", type=int, default=4)
    args = p.parse_args(argv)
    c.start(args)
    dtype, device = c.resolve_dtype(args), c.torch_device(args)

    import comfy.sample
    import comfy.sd

    from tlora_nodes.nodes import patching
    from tlora_nodes.tlora_core import export_lora

    with torch.inference_mode(), c.fast_init():
        base = c.build_model(args.arch, dtype, device, args.seed, args.blocks)
        adapter = c.make_adapter(base, 64, 32, args.seed, svd_device=device)
        contenders = {"lora": comfy.sd.load_lora_for_models(c.copy_model(base), None, export_lora(adapter), 1.0, 0)[0]}
        for name, tlora in (("tlora", adapter), ("tlora-flat", adapter.with_config(min_rank=64))):
            model = base.clone()
            patching.attach(model, tlora, 1.0, "bench")
            contenders[name] = model
        positive = c.conditioning(args.arch, args.resolution, args.seed + 1)
        negative = c.conditioning(args.arch, args.resolution, args.seed + 2, scale=0.5)
        shape = (1, *c.latent_shape(args.resolution, args.arch))
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))

        def run(model, steps):
            return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative,
                                       torch.zeros(shape), seed=args.seed, disable_pbar=True)

        times: dict[str, list[float]] = {name: [] for name in contenders}
        for name, model in contenders.items():
            run(model, args.steps)  # warm-up
        for _ in range(args.repeats):
            for name, model in contenders.items():
                wall, cpu, _ = c.timed_cpu(device, lambda m=model: run(m, args.steps))
                times[name].append(wall / args.steps)
                print(f"{name:11s} {wall / args.steps * 1000:7.1f} ms/step  (CPU {cpu / args.steps * 1000:7.1f} ms/step)", flush=True)
        base_ms = c.median(times["lora"]) * 1000
        for name, values in times.items():
            print(f"median {name:11s} {c.median(values) * 1000:7.1f} ms/step  ratio {c.median(values) * 1000 / base_ms:.3f}")

        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as prof:
            run(contenders["tlora"], args.profile_steps)
            c.sync(device)
        averages = prof.key_averages()
        for key in (["self_device_time_total"] if device.type == "cuda" else []) + ["self_cpu_time_total"]:
            try:
                print(averages.table(sort_by=key, row_limit=22, max_name_column_width=60))
            except Exception as err:
                print(f"(no table by {key}: {err})")


if __name__ == "__main__":
    main()
