"""Why the methods differ: how hard each trained adapter pulls the denoiser toward the training
image, per noise level. Run after run.py (it reads results.json and the LoRA files in .cache/).

    python bench/experiments/memorisation/why.py [--comfyui PATH] [--threads N]

For every held-out prompt, the target scene (the concept on the prompt's background at the
prompt's position) is noised to timestep t and denoised in one call through ComfyUI's sampling
path (one Euler step from sigma to 0 returns the denoised image), by the base model and by the
base model with the adapter attached by Timestep-Aware Apply (so at the rank r(t) of that call).
Reported per t, averaged over prompts, seeds and the shared noise:

    pull = <d_adapted - d_base, x_train - d_base> / |x_train - d_base|^2

how far the adapter moves the prediction toward the *training image* (0: not at all; 1: all the
way), and effect = RMS(d_adapted - d_base) in model space ([-1, 1] pixels).

Second, *when* the layout is decided in this world: the held-out prompts are sampled exactly as
run.py samples them (KSampler's noise and seeds), the denoised prediction of every step is judged,
and the fraction of samples whose background (class and stripes) and position already equal those
of the final image is reported per step's timestep, for the base model and some adapters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import torch  # noqa: E402

TIMESTEPS = [999, 900, 750, 500, 250, 100]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache", default=str(HERE / ".cache"))
    p.add_argument("--results", default=str(HERE / "results.json"))
    p.add_argument("--out", default=str(HERE / "why.json"))
    p.add_argument("--steps", type=int, nargs="+", default=[500, 800])
    p.add_argument("--loras", default=None, help="the loras folder of the run (default: CACHE/loras)")
    p.add_argument("--decided", nargs="+", default=["LoRA@500", "T-LoRA@800", "T-LoRA, r_min = R/4@800"],
                   metavar="METHOD@STEPS", help="adapters for the layout-decided analysis (besides the base model)")
    args = p.parse_args(argv)
    args.device = "cpu"
    _common.start(args)
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    from comfy_api.internal import make_locked_method_func

    comfy.utils.PROGRESS_BAR_ENABLED = False
    from experiments.memorisation import model, run, world
    from tlora_nodes.nodes.apply import TimestepAwareApply
    from tlora_nodes.tlora_core import read_tlora

    results = json.loads(Path(args.results).read_text())
    settings = model.PretrainSettings(**{k: (tuple(v) if k == "caption_drop" else v)
                                         for k, v in results["pretraining"]["settings"].items()})
    cache = Path(args.cache)
    loras = Path(args.loras) if args.loras else cache / "loras"
    if not (cache / f"pretrained-{settings.key()}.safetensors").is_file():
        raise SystemExit(f"why.py: no cached base model {settings.key()} in {cache}; run run.py first.")
    base, _ = model.load_or_pretrain(settings, cache)
    fmt = base.model.latent_format
    sampling = base.model.model_sampling

    prompts = run.held_out_prompts(world)
    n = len(prompts)
    colour, shape = torch.full((n,), len(world.COLOURS)), torch.full((n,), len(world.SHAPES))
    targets = world.to_model_space(world.render(world.scenes_at(
        torch.tensor([b for _, b, _ in prompts]), colour, shape, torch.tensor([q for _, _, q in prompts]), size=3.0, jitter=False)))
    train_scene = world.scenes_at(torch.tensor([world.BG_NAMES.index(run.TRAIN_SCENE["background"])]), colour[:1], shape[:1],
                                  torch.tensor([world.POS_NAMES.index(run.TRAIN_SCENE["position"])]), size=3.0, jitter=False)
    x_train = world.to_model_space(world.render(train_scene))
    positive = [[world.embed([t for t, _, _ in prompts]), {}]]
    negative = [[world.embed([""]), {}]]
    noise = torch.randn(targets.shape, generator=torch.Generator().manual_seed(7))
    euler = comfy.samplers.sampler_object("euler")

    def denoise(m, t: int) -> torch.Tensor:
        sigmas = torch.tensor([float(sampling.sigmas[t]), 0.0])
        out = comfy.sample.sample_custom(m, noise, 1.0, euler, sigmas, positive, negative, fmt.process_out(targets),
                                         disable_pbar=True, seed=0)
        return fmt.process_in(out)

    def apply(adapter):
        TimestepAwareApply.VALIDATE_CLASS()
        clone = TimestepAwareApply.PREPARE_CLASS_CLONE({})
        return make_locked_method_func(TimestepAwareApply, "EXECUTE_NORMALIZED", clone)(
            model=base, tlora=adapter, strength_model=1.0)[0]

    with torch.inference_mode():
        reference = {t: denoise(base, t) for t in TIMESTEPS}
        rows: dict[tuple[str, int], dict[int, list[tuple[float, float]]]] = {}
        for r in results["runs"]:
            if r["steps"] not in args.steps:
                continue
            adapter = read_tlora(str(loras / r["file"])).adapter
            patched = apply(adapter)
            per_t = rows.setdefault((r["method"], r["steps"]), {t: [] for t in TIMESTEPS})
            for t in TIMESTEPS:
                d = denoise(patched, t)
                change = d - reference[t]
                toward = x_train - reference[t]
                pull = (change * toward).flatten(1).sum(1) / toward.flatten(1).pow(2).sum(1).clamp(min=1e-8)
                per_t[t].append((float(pull.mean()), float(change.pow(2).mean().sqrt())))
    decided = layout_decided(args, results, base, loras, apply, read_tlora)
    summary = []
    for (method, steps), per_t in rows.items():
        summary.append({"method": method, "steps": steps,
                        "pull": {t: statistics.fmean(v[0] for v in per_t[t]) for t in TIMESTEPS},
                        "effect_rms": {t: statistics.fmean(v[1] for v in per_t[t]) for t in TIMESTEPS},
                        "seeds": len(per_t[TIMESTEPS[0]])})
    Path(args.out).write_text(json.dumps({"timesteps": TIMESTEPS, "rows": summary, "layout_decided": decided}, indent=1) + "\n")
    head = "| method | steps | " + " | ".join(f"pull t={t}" for t in TIMESTEPS) + " |"
    print(head + "\n|" + "---|" * (len(TIMESTEPS) + 2))
    for row in summary:
        print(f"| {row['method']} | {row['steps']} | " + " | ".join(f"{row['pull'][t]:.2f}" for t in TIMESTEPS) + " |")
    print("\neffect RMS:")
    for row in summary:
        print(f"| {row['method']} | {row['steps']} | " + " | ".join(f"{row['effect_rms'][t]:.3f}" for t in TIMESTEPS) + " |")
    print("\nfraction of samples whose background / position is already the final one, at the step with timestep t:")
    ts = decided["timesteps"]
    print("| model | " + " | ".join(f"t={t}" for t in ts) + " |\n|" + "---|" * (len(ts) + 1))
    for name, row in decided["models"].items():
        print(f"| {name} | " + " | ".join(f"{b:.2f} / {q:.2f}" for b, q in zip(row["background"], row["position"])) + " |")


def layout_decided(args, results: dict, base, loras: Path, apply, read_tlora) -> dict:
    """Per sampling step: which fraction of samples already shows its final background and
    position in the step's denoised prediction (the run's own prompts, seeds and sampler)."""
    import comfy.sample
    import comfy.samplers

    from experiments.memorisation import judges, run, world

    a = results["args"]
    prompts = run.held_out_prompts(world)
    negative = [[world.embed([""]), {}]]
    sampling = base.model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", a["sampling_steps"])
    timesteps = [int(sampling.timestep(s)) for s in sigmas[:-1]]

    def trajectories(m, seed_base: int) -> list[torch.Tensor]:
        """Per step, the judged-ready RGB of every sample's denoised prediction, plus the final."""
        steps: list[list[torch.Tensor]] = [[] for _ in range(a["sampling_steps"] + 1)]
        for i, (text, _, _) in enumerate(prompts):
            latent = torch.zeros(a["samples"], 4, world.SIDE, world.SIDE)
            noise = comfy.sample.prepare_noise(latent, seed_base + i, None)

            def callback(step, x0, x, total):
                steps[step].append(world.from_model_space(x0.float()))

            out = comfy.sample.sample(m, noise, a["sampling_steps"], a["cfg"], "euler", "normal",
                                      [[world.embed([text]), {}]], negative, latent, denoise=1.0,
                                      callback=callback, disable_pbar=True, seed=seed_base + i)
            steps[-1].append(world.from_model_space(base.model.latent_format.process_in(out).float()))
        return [torch.cat(s) for s in steps]

    def agreement(traj: list[torch.Tensor]) -> tuple[list[float], list[float]]:
        final = judges.judge(traj[-1])
        bg, pos = [], []
        for rgb in traj[:-1]:
            v = judges.judge(rgb)
            bg.append(float(((v.bg == final.bg) & (v.stripes_visible() == final.stripes_visible())).float().mean()))
            pos.append(float((v.position == final.position).float().mean()))
        return bg, pos

    models: dict[str, dict] = {}
    with torch.inference_mode():
        bg, pos = agreement(trajectories(base, 1000))
        models["base model"] = {"background": bg, "position": pos}
        for spec in args.decided:
            method, steps = spec.rsplit("@", 1)
            chosen = [r for r in results["runs"] if r["method"] == method and r["steps"] == int(steps)]
            bgs, poss = [], []
            for r in chosen:
                patched = apply(read_tlora(str(loras / r["file"])).adapter)
                bg, pos = agreement(trajectories(patched, 1000 + 100 * r["seed"]))
                bgs.append(bg)
                poss.append(pos)
            if chosen:
                models[spec] = {"background": [statistics.fmean(c) for c in zip(*bgs)],
                                "position": [statistics.fmean(c) for c in zip(*poss)], "seeds": len(chosen)}
    return {"timesteps": timesteps, "models": models}


if __name__ == "__main__":
    main()
