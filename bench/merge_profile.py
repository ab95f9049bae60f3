"""Where Timestep-Aware Apply's extra sampling time goes: the merge per rank change, its memory
passes and page faults, and the rest.

Part 1, the merge alone (independent of the resolution): the stack of a patched model driven
through the model calls of a ``--schedule-steps`` run (euler / normal: one call per step, the
rank changes at nearly every step), every merged weight built at each call, as sampling builds
them. Two ways, each on its own stack: ``fresh`` merges W + Σ s·ΔW(r) anew at every rank change
(the product before the incremental merge, and still for bf16/fp16 weights), ``incremental``
is the product (float32: only the components between the old and the new rank are added or
subtracted). Per call: wall and process-CPU seconds, minor page faults, components multiplied.
Beside it the primitives: one memory pass over the 128 weights (a copy), a merge's GEMMs alone.

Part 2, whole sampling runs at ``--resolution`` (interleaved, as apply_overhead.py): the product,
the product held on fresh merges, and the stock LoraLoader; per run the wall and CPU time, the
time spent merging (``TLoRAStack._merged_weight`` timed from outside) and the minor page faults.
What the product costs beyond the LoraLoader and is not merging is the rest (the patched
forwards' Python, the per-call schedule).

    python bench/merge_profile.py --resolution 512 --steps 2 --repeats 2 --fast-init --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    c.common_arguments(p, resolution=256, steps=2, repeats=2)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--min-rank", type=int, default=32)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--schedule-steps", type=int, default=25, help="part 1: the run whose model calls drive the merge")
    p.add_argument("--no-sampling", action="store_true", help="part 1 only")
    return p.parse_args(argv)


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@contextlib.contextmanager
def measured(into: dict):
    c0, w0, f0 = time.process_time(), time.perf_counter(), faults()
    yield
    into["wall_s"] = into.get("wall_s", 0.0) + time.perf_counter() - w0
    into["cpu_s"] = into.get("cpu_s", 0.0) + time.process_time() - c0
    into["minflt"] = into.get("minflt", 0) + faults() - f0


def attach(base, adapter, fresh: bool):
    from tlora_nodes.nodes import patching

    model = base.clone()
    stack = patching.attach(model, adapter, 1.0, "bench")
    if fresh:  # the product as it was before the incremental merge: W + ΔW(r) afresh at every rank
        stack._incremental_ok = lambda dtype: False
    return model, stack


def merge_only(args, base, adapter) -> dict:
    """Part 1: every merged weight built at each model call of one run, fresh vs incremental."""
    import comfy.samplers

    from tlora_nodes.nodes.model_kinds import sigma_to_timestep
    from tlora_nodes.nodes.patching import _PatchedForward

    sampling = base.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", args.schedule_steps)
    timesteps = [sigma_to_timestep(sampling, s.reshape(1)) for s in sigmas[:-1]]
    result: dict = {"calls": len(timesteps)}
    for name in ("fresh", "incremental"):
        model, stack = attach(base, adapter, fresh=name == "fresh")
        modules = [(p.module, p.slots) for p in model.object_patches.values()
                   if isinstance(p, _PatchedForward) and p.module in stack.mergeable]
        layer = stack._own_layers[0]
        rows = []
        previous = None
        for t in timesteps:
            stack.set_timesteps(t.repeat(2))
            rank = stack.shared_ranks[0]
            row: dict = {"rank": rank}
            with measured(row):
                for module, slots in modules:
                    stack._merged_weight(module, slots, module.weight.device)
            k = next(iter(layer.values())).components(rank)
            kp = None if previous is None else next(iter(layer.values())).components(previous)
            row["components"] = k if (name == "fresh" or kp is None) else abs(k - kp)
            previous = rank
            rows.append(row)
        stack.release_run()
        result[name] = rows
        print(f"part 1, {name}: per call (rank, wall ms, CPU ms, minor faults, components per layer)")
        print("  " + "; ".join(f"r{r['rank']} {1e3 * r['wall_s']:.0f}/{1e3 * r['cpu_s']:.0f}/{r['minflt']}/{r['components']}" for r in rows))
        changed = [r for r in rows[1:] if r["components"]]
        result[f"{name}_total"] = {"wall_s": sum(r["wall_s"] for r in rows), "cpu_s": sum(r["cpu_s"] for r in rows),
                                   "first_call": rows[0], "rank_changes": len(changed),
                                   "per_change_wall_s": c.median([r["wall_s"] for r in changed]) if changed else 0.0}
        print(f"  total {result[f'{name}_total']['wall_s']:.2f}s wall, {result[f'{name}_total']['cpu_s']:.2f}s CPU; first call "
              f"{rows[0]['wall_s']:.2f}s ({rows[0]['minflt']} faults); median per later rank change "
              f"{result[f'{name}_total']['per_change_wall_s'] * 1e3:.0f} ms over {len(changed)} changes")

    # the primitives, over the same 128 weights: a memory pass, and a fresh merge's GEMMs alone
    weights = [m.weight for m, _ in modules]
    buffers = [torch.empty_like(w) for w in weights]
    factors = [stack._plain_factors(i, n, w.device, w.dtype) for (m, slots), w in zip(modules, weights) for i, n, _ in slots[:1]]
    k_mid = next(iter(layer.values())).components((args.rank + args.min_rank) // 2)
    prims: dict = {}
    for label, fn in (
        ("copy W -> buffer (1 read + 1 write pass)", lambda: [b.copy_(w) for b, w in zip(buffers, weights)]),
        (f"addmm W + U[:, :{k_mid}] D[:{k_mid}] into the buffer", lambda: [torch.addmm(w, u[:, :k_mid], d[:k_mid], out=b) for b, w, (d, u) in zip(buffers, weights, factors)]),
        (f"addmm_ of 16 components in place", lambda: [b.addmm_(u[:, :16], d[:16]) for b, (d, u) in zip(buffers, factors)]),
        (f"addmm W + ΔW into a new tensor (allocation)", lambda: [torch.addmm(w, u[:, :k_mid], d[:k_mid]) for w, (d, u) in zip(weights, factors)]),
    ):
        row = {}
        fn()  # warm
        for _ in range(3):
            with measured(row):
                fn()
        prims[label] = {key: value / 3 for key, value in row.items()}
        print(f"  primitive: {label}: {1e3 * prims[label]['wall_s']:.0f} ms wall, {1e3 * prims[label]['cpu_s']:.0f} ms CPU, "
              f"{prims[label]['minflt']:.0f} faults")
    result["primitives"] = prims
    result["weights"] = {"count": len(weights), "params": sum(w.numel() for w in weights),
                         "bytes": sum(w.numel() * w.element_size() for w in weights)}
    return result


def sampling(args, base, adapter) -> dict:
    """Part 2: whole runs, merging timed from outside."""
    import comfy.sample
    import comfy.sd

    from tlora_nodes.nodes import patching
    from tlora_nodes.tlora_core import export_lora

    merge_clock: dict = {}
    original = patching.TLoRAStack._merged_weight

    def timed_merge(self, module, slots, device):
        entry = merge_clock.setdefault(id(self), {})
        with measured(entry):
            return original(self, module, slots, device)

    patching.TLoRAStack._merged_weight = timed_merge
    contenders = {}
    stacks = {}
    for name in ("incremental", "fresh"):
        contenders[name], stacks[name] = attach(base, adapter, fresh=name == "fresh")
    contenders["lora"], _ = comfy.sd.load_lora_for_models(c.copy_model(base), None, export_lora(adapter), 1.0, 0)

    shape = (1, *c.latent_shape(args.resolution, args.arch))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    latent = torch.zeros(shape)
    positive = c.conditioning(args.arch, args.resolution, args.seed + 1)
    negative = c.conditioning(args.arch, args.resolution, args.seed + 2, scale=0.5)

    def run(model):
        return comfy.sample.sample(model, noise, args.steps, args.cfg, "euler", "normal", positive, negative, latent,
                                   disable_pbar=True, seed=args.seed)

    outputs = {name: run(model) for name, model in contenders.items()}  # warm-up
    drift = float((outputs["incremental"] - outputs["fresh"]).abs().max() / outputs["fresh"].abs().max())
    runs: dict = {name: [] for name in contenders}
    for i in range(args.repeats):
        for name, model in contenders.items():
            merge_clock.clear()
            row: dict = {}
            with measured(row):
                run(model)
            if name in stacks:
                spent = merge_clock.get(id(stacks[name]), {})
                row.update({f"merge_{k}": v for k, v in spent.items()})
            runs[name].append(row)
            print(f"part 2, repeat {i + 1} {name}: {row['wall_s']:.2f}s wall, {row['cpu_s']:.2f}s CPU, {row['minflt']} faults"
                  + (f"; merging {row.get('merge_wall_s', 0):.2f}s wall, {row.get('merge_cpu_s', 0):.2f}s CPU, "
                     f"{row.get('merge_minflt', 0)} faults" if name in stacks else ""))
    patching.TLoRAStack._merged_weight = original
    summary = {name: {key: c.median([r.get(key, 0) for r in rows]) for key in rows[0]} for name, rows in runs.items()}
    for name, s in summary.items():
        print(f"median {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()))
    return {"runs": runs, "median": summary, "latents_max_rel_diff_incremental_vs_fresh": drift}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    comfyui = c.start(args)
    dtype = c.resolve_dtype(args)
    device = c.torch_device(args)
    with torch.inference_mode():
        base = c.build_model(args.arch, dtype, device, args.seed, args.blocks)
        with c.fast_init() if args.fast_init else contextlib.nullcontext():
            adapter = c.make_adapter(base, args.rank, args.min_rank, args.seed, svd_device=device)
        result = {"benchmark": "merge_profile", "arch": args.arch, "dtype": args.dtype, "rank": args.rank,
                  "min_rank": args.min_rank, "resolution": args.resolution, "steps": args.steps,
                  "threads": torch.get_num_threads(), "machine": c.machine_info(device, comfyui)}
        result["merge_only"] = merge_only(args, base, adapter)
        c.write_json(args.json, result)
        if not args.no_sampling:
            result["sampling"] = sampling(args, base, adapter)
        c.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
