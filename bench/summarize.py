"""Print the results in a folder of benchmark JSON files as Markdown, ready for bench/RESULTS.md.

    python bench/summarize.py DIR_OR_FILES...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def apply_overhead(r: dict) -> list[str]:
    m = r["machine"]
    med = r["median_s"]
    where = m.get("gpu") or f"{m['cpu']}, {m['torch_threads']} threads"
    return [
        f"### Apply overhead: {r['arch']} ({r['params'] / 1e6:.0f}M params), {r['resolution']}px, {r['steps']} steps "
        f"{r['sampler']}/{r['scheduler']}, cfg {r['cfg']}, {r['dtype']}, {m['device']} ({where})",
        "",
        "| contender | median s/run | median s/step |",
        "|---|---|---|",
        f"| Timestep-Aware Apply | {med['tlora']:.3f} | {med['tlora'] / r['steps']:.4f} |",
        f"| stock LoraLoader (merged) | {med['lora']:.3f} | {med['lora'] / r['steps']:.4f} |",
        "",
        f"Ratio (median of {r['repeats']} interleaved pairs): **{r['ratio']:.4f}** "
        f"(pairs {', '.join(f'{x:.3f}' for x in r['pair_ratios'])}; ratio of medians {r['ratio_of_medians']:.4f}); "
        f"target <= {r['target']}: **{'PASS' if r['pass'] else 'FAIL'}**. pack {m.get('pack', '?')}, torch {m['torch']}, ComfyUI {m['comfyui']}, {m['date']}.",
        "",
    ] + ([f"Process CPU time ratio: {r['cpu_time_ratio']:.4f} (pairs {', '.join(f'{x:.3f}' for x in r['cpu_pair_ratios'])}).", ""]
         if "cpu_time_ratio" in r else []) + [
        f"What-if `{name.removeprefix('whatif:')}` (bench/proposals.py): {med[name]:.3f} s/run, ratio to LoraLoader "
        f"**{w['ratio']:.4f}**, to Timestep-Aware Apply {w['vs_tlora']:.4f}, latents max rel. diff to Apply {w['max_rel_diff_to_tlora']:.1e}."
        for name, w in r.get("whatif", {}).items()
    ] + ([""] if r.get("whatif") else [])


def train_step(r: dict) -> list[str]:
    m = r["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['torch_threads']} threads"
    lines = [
        f"### Train step: {r['arch']}, {r['resolution']}px, batch {r['batch_size']}, {r['dtype']}, rank {r['rank']}, "
        f"checkpointing {'on' if r['gradient_checkpointing'] else 'off'}, {m['device']} ({where})",
        "",
    ]
    gpu = m["device"].startswith("cuda")
    if gpu:
        lines += ["| contender | median s/step | peak allocated (GB) | above weights (GB) | reserved (GB) |", "|---|---|---|---|---|"]
    else:
        lines += ["| contender | median s/step | peak RSS above built model (GiB) |", "|---|---|---|"]
    labels = {"tlora": "T-LoRA Train", "comfy": "ComfyUI TrainLoraNode",
              "tlora-nonreentrant": "T-LoRA Train, non-reentrant checkpointing (what-if)"}
    for name, s in r["summary"].items():
        if gpu:
            lines.append(f"| {labels[name]} | {s['median_step_s']:.3f} | {s['peak_gb']:.2f} | {s['peak_above_weights_gb']:.2f} | {s['peak_reserved_gb']:.2f} |")
        else:
            lines.append(f"| {labels[name]} | {s['median_step_s']:.3f} | {s['peak_above_build_gib']:.2f} |")
    lines.append("")
    if "ratio" in r:
        verdict = f"; target <= 1.0: **{'PASS' if r['pass'] else 'FAIL'}**" if "pass" in r else ""
        lines.append(f"Ratio T-LoRA / TrainLoraNode: **{r['ratio']:.3f}** (pairs {', '.join(f'{x:.3f}' for x in r['pair_ratios'])}){verdict}.")
    if "reentrant_ratio" in r:
        lines.append(f"T-LoRA Train / its non-reentrant what-if: **{r['reentrant_ratio']:.3f}**.")
    if "gpu_targets" in r:
        t = r["gpu_targets"]
        lines.append(f"GPU targets: <= 0.4 s/step **{'PASS' if t['pass_s_per_step'] else 'FAIL'}**, "
                     f"<= 12 GB peak **{'PASS' if t['pass_peak'] else 'FAIL'}**.")
    lines.append(f"Adapted: T-LoRA {r['adapted']['tlora']}; TrainLoraNode {r['adapted']['comfy']}. "
                 f"pack {m.get('pack', '?')}, torch {m['torch']}, ComfyUI {m['comfyui']}, {m['date']}.")
    lines.append("")
    return lines


def main() -> None:
    files: list[Path] = []
    for arg in sys.argv[1:] or ["."]:
        p = Path(arg)
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    for f in files:
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError) as err:
            print(f"<!-- {f}: unreadable ({err}) -->")
            continue
        kind = r.get("benchmark") if isinstance(r, dict) else None
        if kind == "apply_overhead":
            print("\n".join(apply_overhead(r)))
        elif kind == "train_step":
            print("\n".join(train_step(r)))
        elif kind == "init_cost":
            m = r["machine"]
            print(f"### Adapter init: TLoRA.create for {r['arch']} ({r['layers']} layers, rank {r['rank']}), SVD on "
                  f"{m['device']} ({m.get('gpu') or m['cpu']}): **{r['seconds']:.1f} s**\n")
    if not files:
        print("no results found")


if __name__ == "__main__":
    main()
