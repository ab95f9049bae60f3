"""The shipped workflows' API-format twins (workflows/api/*.json) against a real ComfyUI server.

Two checks per workflow:
1. The twin validates against the server's /object_info: every node type exists, every
   required input is given, every link joins an output to an input of the same type, every
   widget value has the right type, lies in its range, and (for lists) is one of the options
   the server offers. Model file names are in the lists because the session server's models
   folder has files under those exact names (conftest.py). That the twin equals what the real
   frontend makes of the UI workflow is test_browser.py's converter test.
2. The twin RUNS, with tiny models. What is substituted, and nothing else:
   - files under the exact names the workflow references, where ComfyUI detects a tiny model:
     ``flux1-dev.safetensors`` is a tiny random SD2-style UNet (UNETLoader), ``ae.safetensors``
     a tiny random TAESD (VAELoader), ``wan2.1_t2v_1.3B_fp16.safetensors`` and
     ``wan_2.1_vae.safetensors`` a tiny random Wan 2.1 T2V model (text width 1024) and Wan 2.1
     VAE (ComfyUI 0.33 only), ``sks_dog.png`` a 64x64 picture (LoadImage);
   - nodes whose models exist only at full size: CheckpointLoaderSimple (SDXL) becomes
     UNETLoader(tiny UNet) + VAELoader(tiny TAESD) wired to its MODEL and VAE outputs;
     CLIPTextEncode (CLIP/T5/umT5) becomes the core LotusConditioning (a fixed [1, 77, 1024]
     conditioning), so DualCLIPLoader and CLIPLoader have no consumer left and are dropped;
   - sizes and lengths: empty latents 64x64 (video: 5 frames), ImageScaleToTotalPixels 0.01
     megapixels, KSampler 2 steps, T-LoRA Train 3 steps;
   - load_and_compare's T-LoRA Load reads the file the train_from_one_image run just wrote.
   Everything else (T-LoRA Train's rank, min_rank, variant, recipe, dtype ..., Apply,
   FluxGuidance, ModelSamplingSD3, ConditioningZeroOut, samplers, VAE Encode/Decode, Save Image,
   Save Animated WEBP, Plot Loss Graph, the links) runs as shipped.
"""

from __future__ import annotations

import copy
import json

import pytest

from .build_workflows import SPECS, WORKFLOWS
from .conftest import TINY_UNET, loras_dir

pytestmark = pytest.mark.e2e
WIDGET_TYPES = {"INT": int, "FLOAT": (int, float), "BOOLEAN": bool, "STRING": str}
VIDEO_FRAMES = 5  # a Wan length (4k + 1): 2 latent frames
SAVE_NODES = ("SaveImage", "SaveAnimatedWEBP", "LossGraphNode")


def api_twin(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def validation_problems(graph: dict, info: dict) -> list[str]:
    problems = []
    for node_id, node in graph.items():
        kind = node["class_type"]
        if kind not in info:
            problems.append(f"#{node_id}: unknown node type {kind}")
            continue
        spec = info[kind]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for name in spec.get("required", {}):
            if name not in node["inputs"]:
                problems.append(f"#{node_id} {kind}: required input {name!r} missing")
        for name, value in node["inputs"].items():
            if name not in declared:
                # ComfyUI ignores inputs a node doesn't declare: a twin made by the newest tested
                # ComfyUI may carry a core node's newer input; the pack's own nodes must match exactly
                if kind.startswith("TLoRA_"):
                    problems.append(f"#{node_id} {kind}: unknown input {name!r}")
                continue
            wanted, options = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
            if isinstance(value, list):  # a link [node id, output index]
                source = graph.get(value[0])
                if source is None:
                    problems.append(f"#{node_id} {kind}.{name}: links to missing node {value[0]}")
                    continue
                outputs = info.get(source["class_type"], {}).get("output", [])
                if value[1] >= len(outputs):
                    problems.append(f"#{node_id} {kind}.{name}: {source['class_type']} has no output {value[1]}")
                elif wanted != "*" and outputs[value[1]] != wanted:
                    problems.append(f"#{node_id} {kind}.{name}: wants {wanted}, linked to {outputs[value[1]]}")
                continue
            choices = wanted if isinstance(wanted, list) else options.get("options") if wanted == "COMBO" else None
            if choices is not None:
                if value not in choices:
                    problems.append(f"#{node_id} {kind}.{name}: {value!r} is not one of the server's options")
            elif wanted in WIDGET_TYPES:
                if not isinstance(value, WIDGET_TYPES[wanted]) or (wanted != "BOOLEAN" and isinstance(value, bool)):
                    problems.append(f"#{node_id} {kind}.{name}: {value!r} is not {wanted}")
                elif wanted in ("INT", "FLOAT") and not options.get("min", value) <= value <= options.get("max", value):
                    problems.append(f"#{node_id} {kind}.{name}: {value} outside [{options.get('min')}, {options.get('max')}]")
            else:
                problems.append(f"#{node_id} {kind}.{name}: a value {value!r} for a {wanted} input (needs a link)")
    return problems


@pytest.mark.parametrize("name", list(SPECS))
def test_api_twin_validates_against_the_servers_object_info(comfy, sdxl_adapter, name):
    problems = validation_problems(api_twin(name), comfy.object_info())
    assert not problems, f"workflows/api/{name}.json:\n" + "\n".join(problems)


def test_validation_catches_what_the_server_would_refuse(comfy):
    """The checker itself: a wrong type, a value out of range, a bad option, a dangling link."""
    graph = api_twin("train_from_one_image")
    train = next(k for k, v in graph.items() if v["class_type"] == "TLoRA_Train")
    bad = copy.deepcopy(graph)
    bad[train]["inputs"].update(rank=0, variant="LoRA", steps="800")
    bad[train]["inputs"]["latents"] = ["999", 0]
    problems = "\n".join(validation_problems(bad, comfy.object_info()))
    for expected in ("rank: 0 outside", "variant: 'LoRA' is not one", "steps: '800' is not INT", "missing node 999"):
        assert expected in problems, problems


def tiny_substitute(graph: dict, lora_name: str | None = None) -> dict:
    """The module docstring's substitutions, applied to an API graph."""
    graph = copy.deepcopy(graph)
    rewire: dict[tuple[str, int], list] = {}
    for node_id, node in list(graph.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            graph[f"{node_id}_unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_UNET, "weight_dtype": "default"}}
            graph[f"{node_id}_vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}
            rewire[(node_id, 0)] = [f"{node_id}_unet", 0]
            rewire[(node_id, 2)] = [f"{node_id}_vae", 0]
            del graph[node_id]
        elif kind in ("DualCLIPLoader", "CLIPLoader"):
            del graph[node_id]
        elif kind == "CLIPTextEncode":
            graph[node_id] = {"class_type": "LotusConditioning", "inputs": {}}
        elif kind in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs.update(width=64, height=64)
        elif kind == "EmptyHunyuanLatentVideo":
            inputs.update(width=64, height=64, length=VIDEO_FRAMES)
        elif kind == "ImageScaleToTotalPixels":
            inputs["megapixels"] = 0.01
        elif kind == "KSampler":
            inputs["steps"] = 2
        elif kind == "TLoRA_Train":
            inputs["steps"] = 3
        elif kind == "TLoRA_Load" and lora_name is not None:
            inputs["lora_name"] = lora_name
    for node in graph.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and (value[0], value[1]) in rewire:
                node["inputs"][name] = rewire[(value[0], value[1])]
    dangling = [(k, n, v) for k, node in graph.items() for n, v in node["inputs"].items() if isinstance(v, list) and v[0] not in graph]
    assert not dangling, f"substitution left links to removed nodes: {dangling}"
    return graph


def of_type(graph: dict, kind: str) -> list[str]:
    return [k for k, v in graph.items() if v["class_type"] == kind]


def assert_ran(comfy, graph: dict, run, trained_prefix: str | None) -> None:
    assert run.succeeded, run.describe()
    for node_id in [k for kind in SAVE_NODES for k in of_type(graph, kind)]:
        images = run.outputs(node_id).get("images", [])
        assert images, f"#{node_id} {graph[node_id]['class_type']} saved nothing"
        for image in images:
            assert (comfy.base_dir / image["type"] / image["subfolder"] / image["filename"]).is_file()
    if trained_prefix:
        (train,) = of_type(graph, "TLoRA_Train")
        saved = run.outputs(train)["tlora_saved"][0]
        assert saved.startswith(trained_prefix + "_") and (loras_dir(comfy) / saved).is_file()
        assert [e["step"] for e in run.of_type("tlora.train.progress")] == [1, 2, 3]


@pytest.fixture(scope="module")
def ran_train_from_one_image(comfy_session):
    graph = tiny_substitute(api_twin("train_from_one_image"))
    return graph, comfy_session.run(graph, timeout=600)


def test_train_from_one_image_runs_with_tiny_models(comfy, ran_train_from_one_image):
    """SDXL checkpoint and CLIP substituted (module docstring); T-LoRA Train as shipped
    (T-LoRA variant, rank 64, min_rank 32), 3 steps; then three KSampler + VAE Decode + Save Image."""
    graph, run = ran_train_from_one_image
    assert_ran(comfy, graph, run, "tlora/sks_dog")


def test_load_and_compare_runs_with_tiny_models_on_the_file_the_training_workflow_wrote(comfy, ran_train_from_one_image):
    """Both columns (schedule from the file; min_rank = rank) load the adapter that
    train_from_one_image's run wrote (rank 64), apply it and sample."""
    graph_a, run_a = ran_train_from_one_image
    assert run_a.succeeded, run_a.describe()
    (train,) = of_type(graph_a, "TLoRA_Train")
    written = run_a.outputs(train)["tlora_saved"][0]
    graph = tiny_substitute(api_twin("load_and_compare"), lora_name=written)
    assert {graph[k]["inputs"]["min_rank"] for k in of_type(graph, "TLoRA_Load")} == {0, 64}
    run = comfy.run(graph, timeout=600)
    assert_ran(comfy, graph, run, None)


def test_flux_train_and_sample_runs_with_tiny_models(comfy):
    """flux1-dev.safetensors / ae.safetensors are tiny SD2 UNet / TAESD files under those names;
    CLIP/T5 substituted. T-LoRA Train as shipped (Vanilla, rank 32, min_rank 1, bf16), 3 steps,
    on a FluxGuidance 1.0 conditioning; then two samples with FluxGuidance 3.5."""
    graph = tiny_substitute(api_twin("flux_train_and_sample"))
    assert of_type(graph, "FluxGuidance") and not of_type(graph, "DualCLIPLoader")
    run = comfy.run(graph, timeout=600)
    assert_ran(comfy, graph, run, "tlora/sks_dog_flux")


def test_wan_train_and_sample_runs_with_tiny_models(comfy):
    """wan2.1_t2v_1.3B_fp16.safetensors / wan_2.1_vae.safetensors are a tiny Wan 2.1 T2V model and
    VAE under those names; umT5 substituted. The photo becomes a one-frame video latent; T-LoRA
    Train as shipped (family reference recipe: Vanilla, rank 32, min_rank 1, Prodigy), 3 steps;
    Timestep-Aware Apply on the ModelSamplingSD3-shifted model; a clip sampled, decoded and saved
    as an animated WEBP with every frame."""
    if comfy.version() < (0, 33):
        pytest.skip(f"ComfyUI {'.'.join(map(str, comfy.version()))} builds Wan 2.1 at fixed sizes (text width 4096, "
                    "VAE width 96): no tiny Wan file runs there; the workflow's twin is validated against its "
                    "/object_info above")
    from PIL import Image
    from safetensors import safe_open

    graph = tiny_substitute(api_twin("wan_train_and_sample"))
    assert of_type(graph, "ModelSamplingSD3") and of_type(graph, "TLoRA_Apply") and not of_type(graph, "CLIPLoader")
    run = comfy.run(graph, timeout=600)
    assert_ran(comfy, graph, run, "tlora/sks_dog_wan")
    (train,) = of_type(graph, "TLoRA_Train")
    with safe_open(str(loras_dir(comfy) / run.outputs(train)["tlora_saved"][0]), "pt") as f:
        metadata = f.metadata()
    assert (metadata["model_family"], metadata["variant"], metadata["rank"], metadata["min_rank"]) == ("wan21", "vanilla", "32", "1")
    (save,) = of_type(graph, "SaveAnimatedWEBP")
    (clip,) = run.outputs(save)["images"]
    with Image.open(comfy.base_dir / clip["type"] / clip["subfolder"] / clip["filename"]) as webp:
        assert (webp.n_frames, webp.size) == (VIDEO_FRAMES, (64, 64))
