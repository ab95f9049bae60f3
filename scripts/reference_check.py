"""Local check against the reference implementation (ControlGenAI/T-LoRA); not run in CI.

    python scripts/reference_check.py --reference PATH/TO/T-LoRA [--write-fixtures]

Needs a checkout (or export) of the reference repository and the Python packages its classes
import: torch, diffusers==0.32.2 (the version in its flux/requirments.txt), pyyaml, safetensors.
The reference code is imported from PATH at run time and never copied into this repository.

What it does:
1. FLUX: builds a tiny diffusers FLUX transformer (the shape of tests/nodes/tiny.py's FLUX: hidden
   64, one double and one single block), gives it the reference's own attention processors
   (flux/model/lora.py: FluxLoraAttnProcessor, set_flux_transformer_attn_processor), moves the
   LoRAs away from init as training would, and saves them the way flux/train.py saves a
   checkpoint (``torch.save(AttnProcsLayers(...).state_dict(), "checkpoint-N/lora.pt")``, the
   run's ``logs/hparams.yml`` from flux/run.py's own argument parser). The reference layers'
   own forward on the identity gives ΔW(r)ᵀ for every rank r: the expected deltas.
2. SD-XL: builds the reference's SD-XL processors (tlora/model/lora.py) for every attention
   module of diffusers' SD-XL UNet and records their state-dict keys and shapes (Vanilla and
   Ortho): the layout T-LoRA Export must reproduce.
3. Checks, with the files just built: tlora_core reads the FLUX checkpoint with the reference's
   deltas; an adapter exported with ``tlora_core.reference.save_sdxl`` loads into the
   reference's SD-XL processors (strict) and their forward gives tlora_core's ΔW(r).
4. The diffusers/PEFT key style of ``tlora_core.export_lora``: diffusers' own loader
   (``load_lora_adapter``) takes the file into a tiny SD-XL-style UNet and a tiny FLUX
   transformer and the fused weights change by exactly ΔW(R).

--write-fixtures writes 1. and 2. to tests/fixtures/ (committed data the CI tests use);
without it, everything is built in a temporary folder and only checked.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FLUX_RANK = 4
FLUX_STEP = 20
SDXL_RANK = 4


def load_pack():
    spec = importlib.util.spec_from_file_location("tlora_nodes", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tlora_nodes"] = module
    spec.loader.exec_module(module)
    import tlora_nodes.tlora_core as core

    return core


def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_flux_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )


def rank_mask(r: int, rank: int) -> torch.Tensor:
    mask = torch.zeros((1, rank))  # the reference's (1, R) mask, first r on
    mask[:, :r] = 1.0
    return mask


# reference processor attribute -> our layer suffix; single blocks use only q/k/v
FLUX_ATTRS = {
    "to_q_lora": "to_q",
    "to_k_lora": "to_k",
    "to_v_lora": "to_v",
    "to_out_lora": "to_out.0",
    "to_q_proj_lora": "add_q_proj",
    "to_k_proj_lora": "add_k_proj",
    "to_v_proj_lora": "add_v_proj",
}


def flux_hparams(reference: Path, run_dir: Path) -> dict:
    """vars(args) of flux/run.py's own parser with the README's T-LoRA settings at rank 4."""
    sys.modules.setdefault("utils", types.ModuleType("utils"))
    sys.modules["utils.exp"] = types.SimpleNamespace(setup_exp_name=None)  # type: ignore[assignment]
    sys.modules["train"] = types.SimpleNamespace(run_train=None)  # type: ignore[assignment]
    run = import_file("reference_flux_run", reference / "flux" / "run.py")
    argv = [
        "--pretrained_model_name_or_path=black-forest-labs/FLUX.1-dev",
        "--instance_data_dir=dog_example",
        f"--output_dir={run_dir}",
        "--placeholder_token=sks",
        "--class_name=dog",
        "--tlora",
        f"--rank={FLUX_RANK}",
        "--min_rank=1",
    ]
    old = sys.argv
    sys.argv = ["run.py", *argv]
    try:
        args = run.parse_args()
    finally:
        sys.argv = old
    return vars(args)


def build_flux(reference: Path, out: Path) -> dict[str, torch.Tensor]:
    """Write out/run/checkpoint-N/lora.pt and out/run/logs/hparams.yml; return the expected deltas."""
    import yaml
    from diffusers.loaders import AttnProcsLayers

    sys.path.insert(0, str(reference / "flux"))
    lora = import_file("reference_flux_lora", reference / "flux" / "model" / "lora.py")
    torch.manual_seed(0)
    transformer = tiny_flux_transformer()
    lora.set_flux_transformer_attn_processor(
        transformer,
        set_attn_proc_func=lambda name, dh, nh, ap: lora.FluxLoraAttnProcessor(
            hidden_size=transformer.inner_dim, rank=FLUX_RANK, lora_linear_layer=lora.LoRALinearLayer, do_training=True
        ),
    )
    layers = AttnProcsLayers(transformer.attn_processors)
    g = torch.Generator().manual_seed(1)
    expected: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, processor in transformer.attn_processors.items():
            single = name.startswith("single_transformer_blocks")
            for attr, ours in FLUX_ATTRS.items():
                if single and ours not in ("to_q", "to_k", "to_v"):
                    continue  # never called by the reference: no gradient, left at init
                layer = getattr(processor, attr)
                layer.up.weight.copy_(torch.randn(layer.up.weight.shape, generator=g) * 0.05)
                layer.down.weight.add_(torch.randn(layer.down.weight.shape, generator=g) * 0.01)
                eye = torch.eye(layer.down.weight.shape[1])
                for r in range(1, FLUX_RANK + 1):
                    # the reference layer's own forward, on the identity: ΔW(r)ᵀ
                    delta = layer(eye, rank_mask(r, FLUX_RANK)).T.contiguous()
                    expected[f"{name[: -len('.processor')]}.{ours}@{r}"] = delta
    run_dir = out / "run"
    checkpoint = run_dir / f"checkpoint-{FLUX_STEP}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    torch.save(layers.state_dict(), checkpoint / "lora.pt")
    with open(run_dir / "logs" / "hparams.yml", "w") as f:
        yaml.dump(flux_hparams(reference, Path("trained-flux-tlora_dog/00001-abcd-dog_example_tlora4")), f)
    return expected


def sdxl_processors(reference: Path, trainer_type: str, rank: int):
    """The reference SD-XL processors for every attention module of diffusers' SD-XL UNet, built
    as its inference code builds them (no SVD init; the values come from the file)."""
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(reference))
    from tlora.model.lora import lora_linear_layers, lora_prosessors  # type: ignore[import-not-found]

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=128,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            cross_attention_dim=2048,
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    processors = {}
    for name in unet.attn_processors:
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        layer_rank = min(cross or hidden, hidden, rank)
        processors[name] = lora_prosessors[trainer_type](
            hidden_size=hidden,
            cross_attention_dim=cross,
            rank=layer_rank,
            lora_linear_layer=lora_linear_layers[trainer_type],
            do_training=False,
            sig_type="last",
        )
    return processors


def build_sdxl_layout(reference: Path) -> dict[str, dict[str, list[int]]]:
    from diffusers.loaders import AttnProcsLayers

    layout = {}
    for variant, trainer_type in (("vanilla", "lora"), ("tlora", "ortho_lora")):
        state = AttnProcsLayers(sdxl_processors(reference, trainer_type, SDXL_RANK)).state_dict()
        layout[variant] = {k: list(v.shape) for k, v in state.items()}
    return layout


def check_flux(core, folder: Path, expected: dict[str, torch.Tensor]) -> None:
    loaded = core.load_tlora(str(folder / "run" / f"checkpoint-{FLUX_STEP}" / "lora.pt"))
    adapter = loaded.adapter
    assert loaded.schedule.source == "hparams" and adapter.config.min_rank == 1, loaded.schedule
    worst = 0.0
    for key, want in expected.items():
        name, r = key.split("@")
        got = adapter.layer(name).delta_weight(rank_mask(int(r), FLUX_RANK)[0]).detach()
        worst = max(worst, float((got - want).abs().max()))
    assert worst <= 1e-6, worst
    print(f"FLUX: {len(adapter.names)} layers, ΔW(r) for r = 1..{FLUX_RANK} match the reference (max |diff| {worst:.1e})")


def check_sdxl_export(core, reference: Path, folder: Path) -> None:
    from diffusers.loaders import AttnProcsLayers
    from safetensors.torch import load_file

    from tlora_nodes.tlora_core import reference as ref_files

    for variant, trainer_type in (("vanilla", "lora"), ("tlora", "ortho_lora")):
        processors = sdxl_processors(reference, trainer_type, SDXL_RANK)
        shapes = {}
        for name, proc in processors.items():
            for attr, ours in (("to_q_lora", "to_q"), ("to_k_lora", "to_k"), ("to_v_lora", "to_v"), ("to_out_lora", "to_out.0")):
                sub = getattr(proc, attr)
                first = sub.down if variant == "vanilla" else sub.q_layer
                last = sub.up if variant == "vanilla" else sub.p_layer
                shapes[f"{name[: -len('.processor')]}.{ours}"] = (first.in_features, last.out_features)
        config = core.TLoRAConfig(variant=variant, rank=SDXL_RANK, min_rank=2, schedule_power=1.5, model_family="sdxl")
        layers = {}
        g = torch.Generator().manual_seed(3)
        for name, (fan_in, fan_out) in shapes.items():
            layer = core.TLoRALayer(fan_in, fan_out, min(SDXL_RANK, fan_in, fan_out), variant)
            with torch.no_grad():
                for p in list(layer.parameters()) + list(layer.buffers()):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            layers[name] = layer
        adapter = core.TLoRA(config, layers, training_steps=7)
        weights, hparams = ref_files.save_sdxl(str(folder / f"sdxl_{variant}"), adapter)
        target = AttnProcsLayers(processors)
        target.load_state_dict(load_file(weights), strict=True)
        worst = 0.0
        for name, proc in processors.items():
            for attr, ours in (("to_q_lora", "to_q"), ("to_k_lora", "to_k"), ("to_v_lora", "to_v"), ("to_out_lora", "to_out.0")):
                sub = getattr(proc, attr)
                layer = adapter.layer(f"{name[: -len('.processor')]}.{ours}")
                for r in (1, 2, SDXL_RANK):
                    mask = rank_mask(r, SDXL_RANK)[:, : layer.rank]
                    with torch.no_grad():
                        theirs = sub(torch.eye(layer.in_features), mask).T
                    ours_delta = layer.delta_weight(rank_mask(r, SDXL_RANK)[0]).detach()
                    worst = max(worst, float((theirs - ours_delta).abs().max()))
        assert worst <= 1e-6, worst
        import yaml

        with open(hparams) as f:
            settings = yaml.safe_load(f)
        assert (settings["lora_rank"], settings["min_rank"], settings["alpha_rank_scale"]) == (SDXL_RANK, 2, 1.5)
        print(f"SD-XL export ({variant}): {len(shapes)} layers load strictly into the reference's processors; "
              f"ΔW(r) equal (max |diff| {worst:.1e}); hparams.yml {os.path.relpath(hparams, folder)}")


def check_diffusers_keys(core) -> None:
    """diffusers' own PEFT loader reads our "diffusers" key style: weights change by ΔW(R)."""
    from diffusers import UNet2DConditionModel

    def delta_of(model, prefix: str, adapter) -> float:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        state = core.export_lora(adapter, key_style="diffusers")
        model.load_lora_adapter(state, prefix=prefix, adapter_name="t")
        model.fuse_lora(lora_scale=1.0)
        after = model.state_dict()
        worst = 0.0
        for name, layer in adapter.items():
            key = f"{name}.base_layer.weight" if f"{name}.base_layer.weight" in after else f"{name}.weight"
            got = after[key] - before[f"{name}.weight"]
            want = layer.delta_weight(torch.ones(adapter.config.rank)).detach()
            worst = max(worst, float((got - want).abs().max() / want.abs().max()))
        return worst

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    )
    names = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0")]
    shapes = {n: (unet.get_submodule(n).in_features, unet.get_submodule(n).out_features) for n in names}
    config = core.TLoRAConfig(variant="tlora", rank=4, min_rank=1, model_family="sdxl")
    adapter = core.TLoRA.create(config, shapes, seed=0)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    print(f"diffusers keys, UNet: worst relative |ΔW| difference {delta_of(unet, 'unet', adapter):.1e}")

    transformer = tiny_flux_transformer()
    names = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and ".attn." in n and n.split(".")[-1] in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj") or n.endswith("attn.to_out.0")]
    shapes = {n: (transformer.get_submodule(n).in_features, transformer.get_submodule(n).out_features) for n in names}
    config = core.TLoRAConfig(variant="vanilla", rank=4, min_rank=1, model_family="flux")
    adapter = core.TLoRA.create(config, shapes, seed=0)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    print(f"diffusers keys, FLUX: worst relative |ΔW| difference {delta_of(transformer, 'transformer', adapter):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of ControlGenAI/T-LoRA")
    parser.add_argument("--write-fixtures", action="store_true", help="write tests/fixtures/ (else check only)")
    args = parser.parse_args()
    core = load_pack()
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        out = FIXTURES / "reference_flux" if args.write_fixtures else Path(tmp) / "reference_flux"
        expected = build_flux(args.reference, out)
        save_file(expected, str(out / "expected_delta.safetensors"))
        layout = build_sdxl_layout(args.reference)
        layout_path = FIXTURES / "reference_sdxl_layout.json.gz" if args.write_fixtures else Path(tmp) / "layout.json.gz"
        with gzip.open(layout_path, "wt") as f:
            json.dump(layout, f, sort_keys=True)
        print(f"SD-XL layout: {len(layout['vanilla'])} Vanilla keys, {len(layout['tlora'])} Ortho keys")
        check_flux(core, out, expected)
        check_sdxl_export(core, args.reference, Path(tmp))
        check_diffusers_keys(core)
        if args.write_fixtures:
            print(f"fixtures written to {os.path.relpath(FIXTURES, ROOT)}/")


if __name__ == "__main__":
    main()
