"""Training step time and peak memory: T-LoRA Train against ComfyUI's own TrainLoraNode.

    ratio = T-LoRA Train s/step / TrainLoraNode s/step      (same model, latents, conditioning,
                                                             rank, batch size, dtype, checkpointing)

Both real nodes run as ComfyUI runs them (under ``torch.inference_mode()``, on a model whose
weights were created in inference mode like a loader's): ``nodes.train.TLoRATrain`` executed
like ComfyUI's executor does, ``comfy_extras.nodes_train.TrainLoraNode().train(...)``.
What they adapt differs, and the ratio says nothing about that difference being fair:
T-LoRA adapts the attention projections only (to_q/k/v/out of every attn1/attn2, SPEC §4);
TrainLoraNode puts a LoRA on every weight of rank >= 2 (convs, FF, proj, attention, time/label
embeddings) and a full trainable diff on every bias and norm weight.

Step time, without set-up: a global optimizer step hook (``torch.optim.optimizer.
register_optimizer_step_post_hook``) stamps the end of every optimizer step (both nodes use
torch.optim.AdamW, one step per training step); a step's time is the gap between two stamps, so
model loading, adapter creation and saving never count. The first ``--warmup`` steps are
dropped; the figure is the median of the remaining gaps. On CUDA the hook synchronises first.

Peak memory: every contender trains in its own subprocess. CPU: peak RSS during training minus
the RSS right after the model was built (the kernel's high-water mark VmHWM is reset after the
build through /proc/self/clear_refs; where that is not allowed, ru_maxrss is used). CUDA:
``torch.cuda.max_memory_allocated`` (peak reset after the build), reported in total and above
the weights. Subprocesses run interleaved: A, B, A, B, ... (``--repeats`` rounds).

Examples:
    python bench/train_step.py                                    # CPU: full SD1.5, 256², fp32
    python bench/train_step.py --arch sdxl --device cuda --resolution 1024 --dtype bf16 \\
        --gradient-checkpointing --contenders tlora --repeats 1 --measure 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

CONTENDERS = ("tlora", "comfy", "tlora-nonreentrant")
LABELS = {"tlora": "T-LoRA Train", "comfy": "ComfyUI TrainLoraNode",
          "tlora-nonreentrant": "T-LoRA Train, non-reentrant checkpointing (what-if)"}
NODE_DTYPES = {"fp32": "fp32", "bf16": "bf16"}  # what both nodes accept as training_dtype


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    c.common_arguments(p, resolution=256, steps=0, repeats=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--min-rank", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1, help="optimizer steps dropped before timing (>= 1)")
    p.add_argument("--measure", type=int, default=2, help="timed optimizer steps per subprocess")
    p.add_argument("--contenders", default="tlora,comfy",
                   help="comma list of: tlora, comfy, tlora-nonreentrant (T-LoRA Train with PyTorch's non-reentrant "
                        "checkpointing, as ComfyUI's own trainer does and as T-LoRA Train did before; needs "
                        "--gradient-checkpointing)")
    p.add_argument("--reference-lora-dtype", choices=sorted(NODE_DTYPES), default=None,
                   help="TrainLoraNode's lora_dtype (default: the training dtype; T-LoRA keeps fp32 adapters)")
    p.add_argument("--worker", choices=CONTENDERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-timeout", type=int, default=1800, help="seconds before a subprocess is killed")
    p.add_argument("--profile", action="store_true",
                   help="profile the timed steps (torch.profiler) and print the top ops by self device and CPU time")
    args = p.parse_args(argv)
    if args.steps:  # --steps means the timed steps here
        args.measure = args.steps
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step's start is not stamped)")
    return args


# -- one contender, in its own process ----------------------------------------------------------------
class StepClock:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []
        self.handle = register_optimizer_step_post_hook(self)

    def __call__(self, optimizer, args, kwargs) -> None:
        c.sync(self.device)
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())


def _step_profiler(device: torch.device, args: argparse.Namespace):
    """A torch.profiler that records the timed steps only (stepped by the optimizer hook)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(
        activities=activities, schedule=torch.profiler.schedule(wait=args.warmup - 1, warmup=1, active=args.measure),
        acc_events=True,
    )
    prof.start()
    handle = register_optimizer_step_post_hook(lambda *a: prof.step())
    return prof, handle


def _print_profile(prof, handle, device: torch.device, steps: int) -> None:
    handle.remove()
    prof.stop()
    averages = prof.key_averages()
    launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    print(f"profile of {steps} timed steps: {launches / max(steps, 1):.0f} kernel launches per step")
    keys = (["self_device_time_total"] if device.type == "cuda" else []) + ["self_cpu_time_total"]
    for key in keys:
        try:
            print(averages.table(sort_by=key, row_limit=30, max_name_column_width=70))
        except Exception as err:  # older/newer torch spell the device column differently
            print(f"(no table by {key}: {err})")


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> dict:
    c.start(args)
    dtype = c.resolve_dtype(args)
    if args.dtype not in NODE_DTYPES:
        raise SystemExit(f"bench: the training nodes take fp32 or bf16, not {args.dtype}.")
    device = c.torch_device(args)

    import folder_paths

    scratch = tempfile.mkdtemp(prefix="tlora-bench-")  # nothing lands in a real models folder
    folder_paths.folder_names_and_paths["loras"] = ([os.path.join(scratch, "loras")], {".safetensors"})
    os.makedirs(os.path.join(scratch, "loras"))
    folder_paths.filename_list_cache = {}
    folder_paths.set_output_directory(os.path.join(scratch, "output"))

    total_steps = args.warmup + args.measure
    with torch.inference_mode():
        t_build, model = c.timed(device, lambda: c.build_model(args.arch, dtype, device, args.seed, args.blocks))
        params = c.count_params(model)
        g = torch.Generator().manual_seed(args.seed)
        latents = {"samples": torch.randn(args.batch_size, *c.latent_shape(args.resolution, args.arch), generator=g)}
        positive = c.conditioning(args.arch, args.resolution, args.seed + 1)

    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_bytes = torch.cuda.memory_allocated(device)
        hwm_reset = True
    else:
        hwm_reset = _reset_peak_rss()
    base_rss_kib = _status_kib("VmRSS")

    clock = StepClock(device)
    profiler = _step_profiler(device, args) if args.profile else None
    t0 = time.perf_counter()
    init = c.fast_init() if args.fast_init else contextlib.nullcontext()
    with init, torch.inference_mode():  # as ComfyUI's executor runs every node
        if args.worker == "tlora-nonreentrant":
            nonreentrant_checkpointing()
        if args.worker.startswith("tlora"):
            run_tlora(args, model, latents, positive, total_steps)
        else:
            run_comfy(args, model, latents, positive, total_steps)
    c.sync(device)
    wall = time.perf_counter() - t0
    clock.handle.remove()
    if profiler is not None:
        _print_profile(*profiler, device, args.measure)

    if len(clock.stamps) != total_steps:
        raise SystemExit(f"bench: expected {total_steps} optimizer steps from {args.worker}, saw {len(clock.stamps)}.")
    gaps = [b - a for a, b in zip(clock.stamps[args.warmup - 1 :], clock.stamps[args.warmup :])]
    cpu_gaps = [b - a for a, b in zip(clock.cpu_stamps[args.warmup - 1 :], clock.cpu_stamps[args.warmup :])]
    out = {
        "contender": args.worker,
        "params": params,
        "build_s": t_build,
        "node_wall_s": wall,
        "steps_run": total_steps,
        "step_s": gaps,
        "median_step_s": c.median(gaps),
        "step_cpu_s": cpu_gaps,
        "median_step_cpu_s": c.median(cpu_gaps),
        "setup_and_warmup_s": clock.stamps[args.warmup - 1] - t0,
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out.update(peak_bytes=peak, peak_above_weights_bytes=peak - base_bytes, weights_bytes=base_bytes,
                   peak_reserved_bytes=torch.cuda.max_memory_reserved(device))
    else:
        peak_kib = _status_kib("VmHWM") if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.update(peak_rss_bytes=peak_kib * 1024, rss_after_build_bytes=base_rss_kib * 1024,
                   peak_above_build_bytes=(peak_kib - base_rss_kib) * 1024,
                   peak_source="VmHWM reset after build" if hwm_reset else "ru_maxrss (whole process)")
    return out


def run_tlora(args, model, latents, positive, steps: int) -> None:
    from tlora_nodes.nodes.train import TLoRATrain

    inputs = dict(
        model=model, latents=latents, positive=positive, steps=steps, learning_rate=1e-4, rank=args.rank,
        min_rank=args.min_rank, schedule_power=1.0, variant="T-LoRA", init="last", batch_size=args.batch_size,
        seed=args.seed, save_every=0, filename_prefix="bench/tlora", resume_from="none",
        training_dtype=NODE_DTYPES[args.dtype], gradient_checkpointing=args.gradient_checkpointing,
    )
    execute_v3(TLoRATrain, {k: [v] for k, v in inputs.items()})  # it takes every input as a list


def execute_v3(node_cls, inputs: dict) -> None:
    """What ComfyUI's executor does with a V3 node (tests/nodes/helpers.py:run_node)."""
    from comfy_api.internal import make_locked_method_func

    node_cls.VALIDATE_CLASS()
    clone = node_cls.PREPARE_CLASS_CLONE({})
    make_locked_method_func(node_cls, "EXECUTE_NORMALIZED", clone)(**inputs)


def nonreentrant_checkpointing() -> None:
    """What-if: T-LoRA Train's checkpointed blocks through PyTorch's non-reentrant checkpoint
    (the graph recorded twice, every saved tensor through Python pack/unpack hooks) instead of the
    product's reentrant one; the rest of the node unchanged."""
    from tlora_nodes.nodes import training_patches

    def checkpointed(fn, args, kwargs, adapted):
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)

    training_patches._checkpointed = checkpointed


def run_comfy(args, model, latents, positive, steps: int) -> None:
    from comfy_extras.nodes_train import TrainLoraNode

    inputs = dict(
        model=model, latents=latents, positive=positive, batch_size=args.batch_size, steps=steps,
        grad_accumulation_steps=1, learning_rate=1e-4, rank=args.rank, optimizer="AdamW", loss_function="MSE",
        seed=args.seed, training_dtype=NODE_DTYPES[args.dtype],
        lora_dtype=args.reference_lora_dtype or NODE_DTYPES[args.dtype], algorithm="LoRA",
        gradient_checkpointing=args.gradient_checkpointing, existing_lora="[None]",
    )
    if hasattr(TrainLoraNode, "train"):  # ComfyUI 0.3.64: a method taking plain values
        TrainLoraNode().train(**inputs)
        return
    # ComfyUI 0.33: a V3 node taking every input as a list, with inputs 0.3.64 didn't have (their defaults)
    inputs.update(quantized_backward=False, checkpoint_depth=1, offloading=False, bucket_mode=False, bypass_mode=False)
    execute_v3(TrainLoraNode, {k: [v] for k, v in inputs.items()})


# -- the driver --------------------------------------------------------------------------------------
def spawn(args: argparse.Namespace, argv: list[str], contender: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", contender, "--worker-out", out_path]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, timeout=args.worker_timeout)
    if proc.returncode != 0:
        raise SystemExit(f"bench: the {contender} subprocess failed (exit {proc.returncode}).")
    result = json.loads(Path(out_path).read_text())
    os.unlink(out_path)
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        result = worker(args)
        Path(args.worker_out).write_text(json.dumps(result))
        return None

    contenders = [x.strip() for x in args.contenders.split(",") if x.strip()]
    for x in contenders:
        if x not in CONTENDERS:
            raise SystemExit(f"bench: unknown contender {x!r}; use {', '.join(CONTENDERS)}.")
    c.resolve_dtype(args)
    device = c.torch_device(args)
    runs: dict[str, list[dict]] = {x: [] for x in contenders}
    for i in range(args.repeats):
        for x in contenders:  # A, B, A, B, ...
            r = spawn(args, argv, x)
            runs[x].append(r)
            mem = (f"peak {r['peak_bytes'] / 1e9:.2f} GB" if "peak_bytes" in r
                   else f"peak RSS +{r['peak_above_build_bytes'] / 2**30:.2f} GiB")
            print(f"round {i + 1}/{args.repeats} {x}: median {r['median_step_s']:.3f} s/step "
                  f"(steps {', '.join(f'{s:.3f}' for s in r['step_s'])}), {mem}, "
                  f"set-up + warm-up {r['setup_and_warmup_s']:.1f}s, process {r['process_wall_s']:.0f}s", flush=True)

    comfyui = c.find_comfyui(args.comfyui)
    summary = {}
    for x, rs in runs.items():
        steps = [s for r in rs for s in r["step_s"]]
        entry = {"median_step_s": c.median(steps), "per_round_median_s": [r["median_step_s"] for r in rs],
                 "median_step_cpu_s": c.median([s for r in rs for s in r["step_cpu_s"]]),
                 "setup_and_warmup_s": [r["setup_and_warmup_s"] for r in rs], "params": rs[0]["params"]}
        if device.type == "cuda":
            entry.update(peak_gb=max(r["peak_bytes"] for r in rs) / 1e9,
                         peak_above_weights_gb=max(r["peak_above_weights_bytes"] for r in rs) / 1e9,
                         weights_gb=rs[0]["weights_bytes"] / 1e9,
                         peak_reserved_gb=max(r["peak_reserved_bytes"] for r in rs) / 1e9)
        else:
            entry.update(peak_above_build_gib=max(r["peak_above_build_bytes"] for r in rs) / 2**30,
                         rss_after_build_gib=rs[0]["rss_after_build_bytes"] / 2**30,
                         peak_rss_gib=max(r["peak_rss_bytes"] for r in rs) / 2**30,
                         peak_source=rs[0]["peak_source"])
        summary[x] = entry

    result = {
        "benchmark": "train_step",
        "compared": " vs ".join(LABELS[x] for x in contenders),
        "adapted": {"tlora": "attention to_q/k/v/out only (SPEC §4)",
                    "comfy": "every weight (LoRA on dim>=2, full diff on biases and norms)"},
        "arch": args.arch,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "reference_lora_dtype": args.reference_lora_dtype or args.dtype,
        "gradient_checkpointing": args.gradient_checkpointing,
        "tlora_init": "fast (no SVD; timing-neutral)" if args.fast_init else "TLoRA.create (SVD)",
        "rank": args.rank,
        "min_rank": args.min_rank,
        "warmup_steps": args.warmup,
        "measured_steps_per_process": args.measure,
        "repeats": args.repeats,
        "summary": summary,
        "runs": runs,
        "machine": c.machine_info(device, comfyui),
    }
    if "tlora" in summary and "comfy" in summary:
        pairs = [a["median_step_s"] / b["median_step_s"] for a, b in zip(runs["tlora"], runs["comfy"])]
        result.update(pair_ratios=pairs, ratio=c.median(pairs),
                      ratio_of_medians=summary["tlora"]["median_step_s"] / summary["comfy"]["median_step_s"])
        if device.type == "cpu":
            cpu_pairs = [a["median_step_cpu_s"] / b["median_step_cpu_s"] for a, b in zip(runs["tlora"], runs["comfy"])]
            result.update(cpu_pair_ratios=cpu_pairs, cpu_time_ratio=c.median(cpu_pairs))
        if device.type == "cpu":
            result.update(target=1.0, **{"pass": result["ratio"] <= 1.0})
    if "tlora" in summary and "tlora-nonreentrant" in summary:
        pairs = [a["median_step_s"] / b["median_step_s"] for a, b in zip(runs["tlora"], runs["tlora-nonreentrant"])]
        result.update(reentrant_pair_ratios=pairs, reentrant_ratio=c.median(pairs))
    if device.type == "cuda" and "tlora" in summary:
        t = summary["tlora"]
        result["gpu_targets"] = {"s_per_step": 0.4, "peak_gb": 12.0,  # GB = 1e9 bytes, max_memory_allocated
                                 "pass_s_per_step": t["median_step_s"] <= 0.4, "pass_peak": t["peak_gb"] <= 12.0}

    print(f"\n{args.arch} {next(iter(summary.values()))['params'] / 1e6:.0f}M params, {args.resolution}px, "
          f"batch {args.batch_size}, {args.dtype}, checkpointing {'on' if args.gradient_checkpointing else 'off'}, {device}")
    for x, s in summary.items():
        mem = (f"peak {s['peak_gb']:.2f} GB ({s['peak_above_weights_gb']:.2f} above the weights)" if device.type == "cuda"
               else f"peak RSS +{s['peak_above_build_gib']:.2f} GiB over the built model")
        print(f"  {LABELS[x]:24s} {s['median_step_s']:.3f} s/step (CPU {s['median_step_cpu_s']:.3f})  {mem}")
    if "ratio" in result:
        verdict = f" target <= 1.0: {'PASS' if result['pass'] else 'FAIL'}" if "pass" in result else ""
        print(f"  ratio {result['ratio']:.3f} (pairs {', '.join(f'{r:.3f}' for r in result['pair_ratios'])}){verdict}")
        if "cpu_time_ratio" in result:
            print(f"  process CPU time ratio {result['cpu_time_ratio']:.3f}")
    if "reentrant_ratio" in result:
        print(f"  T-LoRA Train / its non-reentrant what-if {result['reentrant_ratio']:.3f} "
              f"(pairs {', '.join(f'{r:.3f}' for r in result['reentrant_pair_ratios'])})")
    if "gpu_targets" in result:
        t = result["gpu_targets"]
        print(f"  GPU targets: <= 0.4 s/step {'PASS' if t['pass_s_per_step'] else 'FAIL'}, "
              f"<= 12 GB peak {'PASS' if t['pass_peak'] else 'FAIL'}")
    c.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
