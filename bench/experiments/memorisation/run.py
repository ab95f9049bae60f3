"""Does T-LoRA memorise less than LoRA? One command, on a CPU, through the pack's own nodes.

    python bench/experiments/memorisation/run.py [--comfyui PATH] [--threads N]

1. Judges: accuracy of the analytic judges on held-out renders (judges.py).
2. Base model: ComfyUI's SD1.5 class at a tiny width, pretrained on the synthetic world
   (model.py; cached under .cache/ by a hash of its settings), and how well it follows captions.
3. Personalisation: one training image (the novel "sks" object, a pink bar, on the striped
   background, top left; caption "a sks object"), trained with T-LoRA Train as (a) LoRA = Vanilla
   T-LoRA with min_rank = rank, (b) Vanilla T-LoRA, (c) T-LoRA (Ortho), over several seeds; then
   T-LoRA Load -> Timestep-Aware Apply -> KSampler on held-out prompts that put the concept on the
   other five backgrounds and three positions. Every graph runs through ComfyUI's validate_prompt
   and PromptExecutor in this process (comfy_graph.py).
4. Scores per method (mean ± std over seeds): concept fidelity, prompt fidelity, memorisation;
   results.json, results.md and grid.png beside this file.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger("memorisation")

TRAIN_SCENE = dict(background="striped", position="top left", colour="pink", shape="bar", size=3.0)
TRAIN_CAPTION = "a sks object"
RANK = 8
METHODS = {  # label -> T-LoRA Train settings
    "LoRA": dict(variant="Vanilla T-LoRA", min_rank=RANK, schedule_power=1.0),
    "Vanilla T-LoRA": dict(variant="Vanilla T-LoRA", min_rank=RANK // 2, schedule_power=1.0),
    "T-LoRA": dict(variant="T-LoRA", min_rank=RANK // 2, schedule_power=1.0),
}
ABLATIONS = {  # label -> (settings, evaluate at every checkpoint or only at the paper's two step counts)
    "Ortho-LoRA (no schedule)": (dict(variant="T-LoRA", min_rank=RANK, schedule_power=1.0), True),
    "T-LoRA, r_min = R/4": (dict(variant="T-LoRA", min_rank=RANK // 4, schedule_power=1.0), False),
    "T-LoRA, p = 2": (dict(variant="T-LoRA", min_rank=RANK // 2, schedule_power=2.0), False),
}
GRID_PROMPTS = 6  # held-out prompts shown in grid.png


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH, else ~/ComfyUI)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds per method")
    p.add_argument("--ratio", type=int, nargs=2, default=[500, 800], metavar=("LORA", "TLORA"),
                   help="steps standing for the paper's LoRA 500 : T-LoRA 800 (every method is evaluated at both)")
    p.add_argument("--steps", type=int, nargs="*", default=[200], metavar="N", help="further checkpoints to evaluate")
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--samples", type=int, default=4, help="samples per held-out prompt")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--sampling-steps", type=int, default=20)
    p.add_argument("--pretrain-steps", type=int, default=None, help="override (changes the cache key)")
    p.add_argument("--no-ablation", action="store_true")
    p.add_argument("--methods", nargs="+", default=None, metavar="LABEL",
                   help="only these methods (labels as in the table), each evaluated at every checkpoint: for follow-ups")
    p.add_argument("--loras", default=None, help="the loras folder of this run (default: CACHE/loras); emptied first")
    p.add_argument("--no-grid", action="store_true", help="write no grid.png (follow-ups)")
    p.add_argument("--quick", action="store_true", help="a smoke test: tiny pretraining, one seed, few steps")
    p.add_argument("--cache", default=str(HERE / ".cache"))
    p.add_argument("--out", default=str(HERE), help="where results.json, results.md and grid.png go")
    args = p.parse_args(argv)
    args.device = "cpu"
    if args.quick:
        args.seeds = args.seeds[:1]
        args.ratio = [20, 32]
        args.steps = [12]
        args.samples = 2
        args.pretrain_steps = args.pretrain_steps or 30
        args.no_ablation = True
        if args.out == str(HERE):
            args.out = str(Path(args.cache) / "quick")
    args.checkpoints = sorted(set(args.steps) | set(args.ratio))
    return args


# -- prompts and scores ----------------------------------------------------------------------------------
def held_out_prompts(world) -> list[tuple[str, int, int]]:
    """(caption, background index, position index): the concept on every other background at
    every other position (5 x 3 = 15)."""
    out = []
    for bg in world.BG_NAMES:
        for pos in world.POS_NAMES:
            if bg != TRAIN_SCENE["background"] and pos != TRAIN_SCENE["position"]:
                out.append((world.caption(world.CONCEPT_WORD, None, bg, pos), world.BG_NAMES.index(bg), world.POS_NAMES.index(pos)))
    return out


def score(world, verdicts, bgs: torch.Tensor, positions: torch.Tensor) -> dict[str, float]:
    """Rates over samples whose prompts asked for background ``bgs`` and position ``positions``."""
    train_bg = world.BG_NAMES.index(TRAIN_SCENE["background"])
    train_pos = world.POS_NAMES.index(TRAIN_SCENE["position"])
    concept = verdicts.concept()
    stripes = verdicts.stripes_visible()
    # a background follows the prompt when its colours are the prompt's and the training
    # texture is absent (LoRA often paints the stripes in the prompt's colours)
    bg_ok, pos_ok = (verdicts.bg == bgs) & ~stripes, verdicts.position == positions

    def rate(mask) -> float:
        return float(mask.float().mean())

    return {
        "concept": rate(concept),
        "concept_colour": rate(verdicts.colour == len(world.COLOURS)),
        "concept_shape": rate(verdicts.shape == len(world.SHAPES)),
        "background_follows": rate(bg_ok),
        "position_follows": rate(pos_ok),
        "prompt_follows": rate(bg_ok & pos_ok),
        "concept_and_prompt": rate(concept & bg_ok & pos_ok),
        "stripes_return": rate(stripes),
        "background_class_memorised": rate(verdicts.bg == train_bg),
        "position_memorised": rate(verdicts.position == train_pos),
        "no_object": rate(verdicts.colour < 0),
    }


def score_training_prompt(world, verdicts) -> dict[str, float]:
    """With the training prompt: the concept, and the training image itself (concept, stripes, top left)."""
    train_pos = world.POS_NAMES.index(TRAIN_SCENE["position"])
    concept = verdicts.concept()
    return {
        "concept": float(concept.float().mean()),
        "training_image": float((concept & verdicts.stripes_visible() & (verdicts.position == train_pos)).float().mean()),
    }


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


# -- phases -------------------------------------------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cache = Path(args.cache)
        self.out = Path(args.out)
        self.timings: dict[str, float] = {}

    def phase(self, name: str, fn):
        t0 = time.perf_counter()
        log.warning("%s ...", name)
        result = fn()
        self.timings[name] = round(time.perf_counter() - t0, 1)
        log.warning("%s done in %.0f s", name, self.timings[name])
        return result

    # 1
    def judge_accuracy(self) -> dict:
        from experiments.memorisation import judges

        n = 200 if self.args.quick else 1000
        return {"clean": judges.judge_accuracy(n, noise=0.0), "pixel_noise_0.05": judges.judge_accuracy(n, noise=0.05)}

    # 2
    def pretrained(self):
        from experiments.memorisation import model

        settings = model.PretrainSettings()
        if self.args.pretrain_steps:
            settings = model.PretrainSettings(steps=self.args.pretrain_steps)
        self.pretrain_settings = settings
        return model.load_or_pretrain(settings, self.cache)

    def sample(self, lora: str | None, prompts: list[str], batch: int, seed: int, key: str) -> torch.Tensor:
        """(len(prompts) * batch, 3, H, W) RGB in [0, 1], prompt-major."""
        from experiments.memorisation import comfy_graph, world

        sampler = dict(steps=self.args.sampling_steps, cfg=self.args.cfg, sampler_name="euler", scheduler="normal")
        comfy_graph.execute(comfy_graph.sample_graph("base", lora, prompts, key, batch, sampler, seed))
        latents = torch.cat([comfy_graph.COLLECTED.pop(f"{key}/{i}") for i in range(len(prompts))])
        return world.from_model_space(self.base.model.latent_format.process_in(latents))

    def base_quality(self) -> dict:
        """How well the pretrained model draws what full captions ask for (judged)."""
        from experiments.memorisation import judges, world

        n_captions, per = (8, 2) if self.args.quick else (64, 2)
        scenes = world.random_scenes(n_captions, torch.Generator().manual_seed(4242))
        captions = world.scene_captions(scenes)
        rgb = self.sample(None, captions, per, seed=500, key="base")
        v = judges.judge(rgb)

        def rep(t):
            return t.repeat_interleave(per)

        bg, colour, shape, pos = v.bg == rep(scenes.bg), v.colour == rep(scenes.colour), v.shape == rep(scenes.shape), v.position == rep(scenes.position())
        result = {
            "samples": int(rgb.shape[0]),
            "background": float(bg.float().mean()), "colour": float(colour.float().mean()),
            "shape": float(shape.float().mean()), "position": float(pos.float().mean()),
            "all_four": float((bg & colour & shape & pos).float().mean()),
            "chance": {"background": 1 / len(world.BG_NAMES), "colour": 1 / len(world.COLOURS),
                       "shape": 1 / len(world.SHAPES), "position": 1 / len(world.POS_NAMES)},
        }
        # the base model on the held-out concept prompts (it has never seen "sks"): a reference row
        prompts = held_out_prompts(world)
        rgb_h = self.sample(None, [p for p, _, _ in prompts] + [TRAIN_CAPTION], self.args.samples, seed=1000, key="base-held-out")
        vh = judges.judge(rgb_h[: len(prompts) * self.args.samples])
        bgs = torch.tensor([b for _, b, _ in prompts]).repeat_interleave(self.args.samples)
        poss = torch.tensor([q for _, _, q in prompts]).repeat_interleave(self.args.samples)
        result["held_out_prompts"] = score(world, vh, bgs, poss)
        self.base_images = {"held_out": rgb_h}
        return result

    # 3
    def train(self, label: str, settings: dict, seed: int) -> dict[int, str]:
        """One T-LoRA Train run to the longest step count; returns step -> file (relative to loras)."""
        from experiments.memorisation import comfy_graph

        steps = max(self.args.checkpoints)
        every = 0
        for s in self.args.checkpoints:
            every = _gcd(every, s)
        prefix = "memo/" + "".join(ch if ch.isalnum() else "_" for ch in label) + f"_seed{seed}"
        inputs = dict(
            steps=steps, learning_rate=self.args.learning_rate, rank=RANK, min_rank=settings["min_rank"],
            schedule_power=settings["schedule_power"], variant=settings["variant"], init="last", batch_size=1,
            seed=seed, save_every=every, filename_prefix=prefix, resume_from="none", training_dtype="fp32",
            gradient_checkpointing=False,
        )
        outputs = comfy_graph.execute(comfy_graph.train_graph("base", TRAIN_SCENE, TRAIN_CAPTION, inputs))
        final = outputs["train"]["tlora_saved"][0]
        stem = final[: -len("_.safetensors")]
        return {s: (final if s == steps else f"{stem}_step{s:05}.safetensors") for s in self.args.checkpoints}

    def evaluate(self, lora: str, seed: int, key: str) -> tuple[dict, dict, torch.Tensor]:
        from experiments.memorisation import judges, world

        prompts = held_out_prompts(world)
        texts = [p for p, _, _ in prompts] + [TRAIN_CAPTION]
        rgb = self.sample(lora, texts, self.args.samples, seed=1000 + 100 * seed, key=key)
        n_held = len(prompts) * self.args.samples
        v = judges.judge(rgb)
        bgs = torch.tensor([b for _, b, _ in prompts]).repeat_interleave(self.args.samples)
        poss = torch.tensor([q for _, _, q in prompts]).repeat_interleave(self.args.samples)
        held = judges.Verdicts(*(getattr(v, f)[:n_held] for f in ("bg", "colour", "shape", "position", "object_pixels", "shape_iou", "stripes")))
        train = judges.Verdicts(*(getattr(v, f)[n_held:] for f in ("bg", "colour", "shape", "position", "object_pixels", "shape_iou", "stripes")))
        return score(world, held, bgs, poss), score_training_prompt(world, train), rgb

    def personalise(self) -> dict:
        methods = {label: (settings, True) for label, settings in METHODS.items()}
        if not self.args.no_ablation:
            methods.update(ABLATIONS)
        if self.args.methods:
            unknown = [m for m in self.args.methods if m not in methods]
            if unknown:
                raise SystemExit(f"memorisation: unknown methods {unknown}; known: {list(methods)}")
            methods = {m: (methods[m][0], True) for m in self.args.methods}
        runs = []
        self.images: dict[tuple[str, int, int], torch.Tensor] = {}
        for label, (settings, every_checkpoint) in methods.items():
            for seed in self.args.seeds:
                t0 = time.perf_counter()
                files = self.train(label, settings, seed)
                t_train = time.perf_counter() - t0
                eval_steps = self.args.checkpoints if every_checkpoint else sorted(self.args.ratio)
                for steps in eval_steps:
                    held, train, rgb = self.evaluate(files[steps], seed, key=f"{label}/{seed}/{steps}")
                    self.images[(label, steps, seed)] = rgb
                    runs.append({"method": label, "seed": seed, "steps": steps, "file": files[steps],
                                 "held_out": held, "training_prompt": train})
                    log.warning("%s seed %d @%d: concept %.2f, prompt %.2f, stripes return %.2f, position returns %.2f",
                                label, seed, steps, held["concept"], held["prompt_follows"], held["stripes_return"],
                                held["position_memorised"])
                log.warning("%s seed %d trained in %.0f s, total %.0f s", label, seed, t_train, time.perf_counter() - t0)
        return {"runs": runs, "methods": {k: v[0] for k, v in methods.items()}}


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


# -- aggregation, table, grid ------------------------------------------------------------------------------------
COLUMNS = [  # (key in held_out, header)
    ("concept", "concept ↑"),
    ("background_follows", "bg follows ↑"),
    ("position_follows", "pos follows ↑"),
    ("prompt_follows", "bg & pos follow ↑"),
    ("concept_and_prompt", "concept & bg & pos ↑"),
    ("stripes_return", "training bg returns ↓"),
    ("position_memorised", "training pos returns ↓"),
]


def aggregate(runs: list[dict]) -> list[dict]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["steps"]), []).append(r)
    rows = []
    for (method, steps), rs in groups.items():
        row = {"method": method, "steps": steps, "seeds": [r["seed"] for r in rs]}
        for key in rs[0]["held_out"]:
            row[key] = mean_std([r["held_out"][key] for r in rs])
        for key in rs[0]["training_prompt"]:
            row["training_prompt_" + key] = mean_std([r["training_prompt"][key] for r in rs])
        rows.append(row)
    return rows


def table(rows: list[dict], base_row: dict | None, ratio: tuple[int, int] = (500, 800)) -> str:
    """Markdown; rows at the paper's step ratio (LoRA and Vanilla at the short, T-LoRA at the long
    count) are marked with *."""
    head = "| method | steps | " + " | ".join(h for _, h in COLUMNS) + " | train prompt → training image |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    if base_row is not None:
        cells = " | ".join(f"{base_row[k]:.2f}" for k, _ in COLUMNS)
        lines.append(f"| base model (no adapter) | – | {cells} | – |")
    for row in rows:
        cells = " | ".join(f"{row[k]['mean']:.2f} ± {row[k]['std']:.2f}" for k, _ in COLUMNS)
        t = row["training_prompt_training_image"]
        paper = (row["method"] in ("LoRA", "Vanilla T-LoRA") and row["steps"] == ratio[0]) or (
            row["method"] == "T-LoRA" and row["steps"] == ratio[1])
        steps = f"{row['steps']}{' *' if paper else ''}"
        lines.append(f"| {row['method']} | {steps} | {cells} | {t['mean']:.2f} ± {t['std']:.2f} |")
    return "\n".join(lines)


def grid_png(path: Path, run: "Run", world, steps: tuple[int, int]) -> None:
    """Rows: the prompt's target (rendered), the base model, then each method at the paper's step
    ratio (and LoRA at the long count); columns: the training prompt, then held-out prompts. The
    held-out columns take the seeds in turn (first sample of each), so one row shows seed-to-seed
    variation; the training-prompt column is the first seed."""
    from PIL import Image, ImageDraw

    prompts = held_out_prompts(world)
    n = run.args.samples
    seeds = run.args.seeds
    # held-out prompts spread over all five backgrounds and three positions
    picks = [i for i in range(len(prompts)) if i % 3 == (i // 3) % 3][:GRID_PROMPTS]
    scale, pad, label_w, label_h = 4, 4, 170, 42
    tile = world.SIDE * scale
    short, long = steps
    concept = (torch.tensor([len(world.COLOURS)]), torch.tensor([len(world.SHAPES)]))

    def target(bg: int, pos: int) -> torch.Tensor:
        return world.render(world.scenes_at(torch.tensor([bg]), *concept, torch.tensor([pos]), size=3.0, jitter=False))[0]

    rows: list[tuple[str, list[torch.Tensor]]] = [(
        "target (rendered)",
        [target(world.BG_NAMES.index(TRAIN_SCENE["background"]), world.POS_NAMES.index(TRAIN_SCENE["position"]))]
        + [target(prompts[i][1], prompts[i][2]) for i in picks])]
    base = run.base_images["held_out"]
    rows.append(("base model", [base[len(prompts) * n]] + [base[i * n] for i in picks]))
    for label, s in (("LoRA", short), ("Vanilla T-LoRA", short), ("T-LoRA", long), ("T-LoRA, r_min = R/4", long), ("LoRA", long)):
        if (label, s, seeds[0]) not in run.images:
            continue
        tiles = [run.images[(label, s, seeds[0])][len(prompts) * n]]
        for c, i in enumerate(picks):
            tiles.append(run.images[(label, s, seeds[c % len(seeds)])][i * n])
        rows.append((f"{label} @{s}", tiles))
    headers = [f"a sks object\n(training)\nseed {seeds[0]}"] + [
        prompts[i][0].split(" on ")[1].replace(" background", "").replace(", ", "\n") + f"\nseed {seeds[c % len(seeds)]}"
        for c, i in enumerate(picks)]
    width = label_w + len(headers) * (tile + pad)
    height = label_h + len(rows) * (tile + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, h in enumerate(headers):
        draw.multiline_text((label_w + c * (tile + pad), 2), h, fill=(0, 0, 0), spacing=1)
    for r, (name, tiles) in enumerate(rows):
        y = label_h + r * (tile + pad)
        draw.text((4, y + tile // 2 - 6), name, fill=(0, 0, 0))
        for c, t in enumerate(tiles):
            img = Image.fromarray((t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()).resize((tile, tile), Image.NEAREST)
            canvas.paste(img, (label_w + c * (tile + pad), y))
    canvas.save(path, optimize=True)


def report_md(result: dict, main_table: str) -> str:
    """results.md: everything the table needs to be read (generated; the hand-written summary is
    the section "Memorisation" of bench/RESULTS.md)."""
    a, m, p, b = result["args"], result["machine"], result["pretraining"], result["base_model"]
    judges = result["judges"]
    lines = [
        "# Memorisation experiment: results (generated by run.py)",
        "",
        f"`{result['command']}`: {m['date']}, pack {m['pack']}, ComfyUI {m['comfyui']}, torch {m['torch']}, "
        f"{m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads).",
        f"Total {result['total_s'] / 60:.1f} min wall, {result['total_cpu_s'] / 60:.1f} min CPU of this process ("
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result["timings_s"].items())
        + f"); load average (1, 5, 15 min) before {tuple(round(x, 2) for x in result['load_average_before'])}, "
        f"after {tuple(round(x, 2) for x in result['load_average_after'])}.",
        "",
        "## Judges on held-out renders",
        "",
        "| renders | background | colour | shape | position | concept found (present / absent) | stripes found (striped / other) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, j in judges.items():
        lines.append(
            f"| {j['images']}, pixel noise {j['pixel_noise_std']} | {j['background']:.3f} | {j['colour']:.3f} | {j['shape']:.3f} | "
            f"{j['position']:.3f} | {j['concept_detected_when_present']:.3f} / {j['concept_detected_when_absent']:.3f} | "
            f"{j['stripes_detected_when_striped']:.3f} / {j['stripes_detected_when_not']:.3f} |")
    cached = " (loaded from the cache; the time is of the run that trained it)" if p.get("cached") else ""
    lines += [
        "",
        "## Base model",
        "",
        f"SD1.5 class, {p['parameters'] / 1e6:.1f} M parameters, {p['steps']} steps x batch {p['batch_size']} "
        f"in {p['seconds'] / 60:.1f} min wall ({p.get('cpu_seconds', float('nan')) / 60:.1f} min CPU) on {p['torch_threads']} threads{cached}; loss {p['loss_first']:.4f} (first 5 %) -> "
        f"{p['loss_last']:.4f} (last 5 %). File key {p['key']}.",
        "",
        f"Judged on {b['samples']} samples of full captions (euler, {a['sampling_steps']} steps, cfg {a['cfg']}):",
        "",
        "| background | colour | shape | position | all four |",
        "|---|---|---|---|---|",
        f"| {b['background']:.3f} | {b['colour']:.3f} | {b['shape']:.3f} | {b['position']:.3f} | {b['all_four']:.3f} |",
        f"| chance {b['chance']['background']:.2f} | {b['chance']['colour']:.2f} | {b['chance']['shape']:.2f} | "
        f"{b['chance']['position']:.2f} | |",
        "",
        "## Personalisation",
        "",
        f"Rank {RANK}, learning rate {a['learning_rate']}, seeds {a['seeds']}, {a['samples']} samples for each of 15 held-out "
        f"prompts and for the training prompt; mean ± std over seeds. * = the paper's step ratio "
        f"(LoRA and Vanilla {a['ratio'][0]}, T-LoRA {a['ratio'][1]}).",
        "",
        main_table,
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    t_start, cpu_start = time.perf_counter(), time.process_time()
    comfyui = _common.start(args)
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    import folder_paths

    from experiments.memorisation import comfy_graph, model, world

    run = Run(args)
    result: dict = {"command": " ".join([Path(sys.executable).name] + sys.argv), "args": vars(args)}
    result["judges"] = run.phase("judge accuracy", run.judge_accuracy)
    base, pretrain_report = run.phase("pretrained model", run.pretrained)
    run.base = base
    result["pretraining"] = {"settings": model.asdict(run.pretrain_settings), "key": run.pretrain_settings.key(), **pretrain_report}

    comfy_graph.register(sys.modules[_common.PACKAGE])
    comfy_graph.MODELS["base"] = base
    loras = Path(args.loras) if args.loras else Path(args.cache) / "loras"
    shutil.rmtree(loras, ignore_errors=True)
    loras.mkdir(parents=True)
    folder_paths.folder_names_and_paths["loras"] = ([str(loras)], {".safetensors"})
    folder_paths.filename_list_cache.pop("loras", None)

    result["base_model"] = run.phase("base model quality", run.base_quality)
    personal = run.phase("personalisation", run.personalise)
    result["runs"] = personal["runs"]
    result["methods"] = personal["methods"]
    rows = aggregate(personal["runs"])
    result["summary"] = rows
    result["timings_s"] = run.timings
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    result["total_cpu_s"] = round(time.process_time() - cpu_start, 1)  # this process, all threads
    result["load_average_before"] = load_before
    result["load_average_after"] = os.getloadavg()
    result["machine"] = _common.machine_info(torch.device("cpu"), comfyui)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_grid:
        grid_png(out / "grid.png", run, world, tuple(args.ratio))
    md = table(rows, result["base_model"]["held_out_prompts"], tuple(args.ratio))
    (out / "results.md").write_text(report_md(result, md))
    _common.write_json(str(out / "results.json"), result)
    print(md)
    print(f"total {result['total_s']:.0f} s; load average before {load_before}, after {result['load_average_after']}")


if __name__ == "__main__":
    main()
