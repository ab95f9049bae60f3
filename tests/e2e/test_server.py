"""End to end through a real ComfyUI server: the pack loaded from custom_nodes, API-format
graphs over HTTP, progress over the websocket, files in the server's base directory.

The model is a tiny random SD2-style UNet *file* loaded by the core UNETLoader (tiny_files.py);
the core LotusConditioning node stands in for a text encoder. Everything else is real: the
server process, its executor and caches, KSampler, SaveLatent, /interrupt.
"""

from __future__ import annotations

import math
import re

import pytest

from . import graphs
from .conftest import TINY_UNET, loras_dir, read_latent

pytestmark = pytest.mark.e2e

NODES = {"TLoRA_Train": "T-LoRA Train", "TLoRA_Load": "T-LoRA Load", "TLoRA_Apply": "Timestep-Aware Apply",
         "TLoRA_Export": "T-LoRA Export"}


def load_tlora(path):
    from tlora_nodes.tlora_core import load_tlora as load  # the pack, as the root conftest imports it

    return load(str(path))


def snapshot(folder) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(comfy_session):
    """Graph 1, run once for the module: UNETLoader -> T-LoRA Train -> Timestep-Aware Apply ->
    KSampler -> SaveLatent."""
    graph = graphs.train_apply_sample(TINY_UNET)
    run = comfy_session.run(graph, timeout=600)
    before = snapshot(loras_dir(comfy_session))
    # queued again right away, as a user pressing Queue twice: ComfyUI's cache (by default it
    # keeps the outputs of the last prompt only) must serve T-LoRA Train without retraining
    again = comfy_session.run(graphs.clone(graph), timeout=600)
    return graph, run, again, before


def test_object_info_lists_the_four_nodes_in_the_tlora_category(comfy):
    info = comfy.object_info()
    for node_id, display_name in NODES.items():
        assert node_id in info, f"{node_id} missing from /object_info; server log:\n{comfy.log_tail()}"
        assert info[node_id]["display_name"] == display_name
        assert info[node_id]["category"] == "T-LoRA"
    assert info["TLoRA_Train"]["output"] == ["MODEL", "TLORA", "LOSS_MAP", "IMAGE"]
    assert info["TLoRA_Load"]["output"] == ["TLORA"]
    assert info["TLoRA_Apply"]["output"] == ["MODEL"]
    assert info["TLoRA_Export"]["output"] == ["LORA_MODEL"]


def test_train_apply_sample_graph_saves_adapter_and_latent_and_reports_progress(comfy, trained):
    graph, run, _, _ = trained
    assert run.succeeded, run.describe()
    steps = graph["train"]["inputs"]["steps"]

    # progress bar of the Train node (ComfyUI's own "progress" message): the first and the last
    # step, and in between every step (0.3.64) or as often as ComfyUI's throttle lets through (0.33)
    bar = [m["value"] for m in run.of_type("progress") if m["node"] == "train"]
    assert bar[0] == 1 and bar[-1] == steps and bar == sorted(set(bar)), bar
    assert {m["max"] for m in run.of_type("progress") if m["node"] == "train"} == {steps}
    # our own event, which the frontend's loss curve listens to
    events = run.of_type("tlora.train.progress")
    assert [e["step"] for e in events] == list(range(1, steps + 1))
    assert all(e["node"] == "train" and e["steps"] == steps and math.isfinite(e["loss"]) for e in events)
    # and the schedule the run trains, which the plot draws "as trained" (an API graph without `recipe`: the node's values)
    schedule = {"recipe": "custom", "choice": "custom", "family": "SD2", "variant": "tlora", "variant_label": "T-LoRA",
                "rank": 4, "min_rank": 2, "schedule_power": 1.0}
    assert all(e["schedule"] == schedule for e in events)
    assert run.outputs("train")["tlora_schedule"] == [schedule]
    # the sampler's progress follows
    sampler_bar = [m["value"] for m in run.of_type("progress") if m["node"] == "sampler"]
    assert sampler_bar[0] == 1 and sampler_bar[-1] == 4 and sampler_bar == sorted(set(sampler_bar)), sampler_bar
    assert {"train", "apply", "sampler", "save"} <= run.executed_nodes()

    saved = run.outputs("train")["tlora_saved"]
    assert saved == ["e2e/run_00001_.safetensors"]
    final = load_tlora(loras_dir(comfy) / saved[0])
    c = final.adapter.config
    assert (c.variant, c.rank, c.min_rank, c.model_family) == ("tlora", 4, 2, "sd2")
    assert final.adapter.training_steps == steps and not final.training_state
    # save_every=2: resumable checkpoints at steps 2 and 4, and at the last step (the run can be continued)
    checkpoints = sorted(p.name for p in (loras_dir(comfy) / "e2e").glob("run_00001_step*.safetensors"))
    assert checkpoints == ["run_00001_step00002.safetensors", "run_00001_step00004.safetensors",
                           f"run_00001_step{steps:05}.safetensors"]
    assert load_tlora(loras_dir(comfy) / "e2e" / checkpoints[-1]).training_state

    latent = read_latent(comfy, run.outputs("save")["latents"][0])
    assert latent.shape == (1, 4, 8, 8) and bool(latent.isfinite().all())


def test_load_apply_sample_reproduces_the_trained_graphs_latent(comfy, trained):
    _, run, _, _ = trained
    assert run.succeeded, run.describe()
    trained_latent = read_latent(comfy, run.outputs("save")["latents"][0])

    loaded = comfy.run(graphs.load_apply_sample(TINY_UNET, "e2e/run_00001_.safetensors"))
    assert loaded.succeeded, loaded.describe()
    loaded_latent = read_latent(comfy, loaded.outputs("save")["latents"][0])
    assert (loaded_latent - trained_latent).abs().max().item() <= 1e-6

    # and the adapter matters: the same graph at strength 0 samples something else
    plain = comfy.run(graphs.load_apply_sample(TINY_UNET, "e2e/run_00001_.safetensors", "e2e/plain", strength=0.0))
    assert plain.succeeded, plain.describe()
    assert (read_latent(comfy, plain.outputs("save")["latents"][0]) - trained_latent).abs().max().item() > 1e-5


def test_same_graph_queued_twice_is_cached_not_retrained_and_files_stay(comfy, trained):
    _, first, again, before = trained
    assert first.succeeded, first.describe()
    assert again.succeeded, again.describe()
    assert "train" in again.cached_nodes()
    assert not again.of_type("tlora.train.progress"), "T-LoRA Train ran again"
    assert again.outputs("train")["tlora_saved"] == ["e2e/run_00001_.safetensors"]
    # the cached result tells the frontend again what was trained (the plot's "as trained"): its
    # "executed" message carries the node's UI output, as the run's did
    executed = [m["output"] for m in again.of_type("executed") if m["node"] == "train"]
    assert [out["tlora_schedule"] for out in executed] == [first.outputs("train")["tlora_schedule"]]
    assert snapshot(loras_dir(comfy)) == before
    assert read_latent(comfy, again.outputs("save")["latents"][0]).equal(read_latent(comfy, first.outputs("save")["latents"][0]))


def test_requeued_after_another_prompt_trains_again_into_a_new_file(comfy, trained):
    """What README (Troubleshooting) and the workflow notes say ComfyUI does by default: 0.3.64's
    classic cache keeps only the last prompt's results, and 0.33's RAM-pressure cache drops the
    results of nodes outside the running prompt after each node it runs (its inactive headroom
    defaults to all of RAM). So after another prompt T-LoRA Train trains again, into a new file."""
    graph, first, _, _ = trained
    other = comfy.run(graphs.load_apply_sample(TINY_UNET, "e2e/run_00001_.safetensors", "e2e/other"))
    assert other.succeeded, other.describe()
    again = comfy.run(graphs.clone(graph), timeout=600)
    assert again.succeeded, again.describe()
    assert again.of_type("tlora.train.progress"), f"ComfyUI {comfy.version()} reused the result"
    assert again.outputs("train")["tlora_saved"] != first.outputs("train")["tlora_saved"]


def test_interrupt_during_training_leaves_a_checkpoint_that_loads_and_resumes(comfy):
    graph = graphs.train_only(
        TINY_UNET, steps=500, save_every=0, variant="Vanilla T-LoRA", filename_prefix="e2e/interrupted"
    )
    with comfy.listen() as ws:
        prompt_id = comfy.queue(graph, ws.client_id)
        ws.wait_for(lambda m: m["type"] == "tlora.train.progress" and m["data"]["step"] >= 3, 300, "training step 3")
        comfy.interrupt()
        run = ws.wait_done(prompt_id, 120)
    assert run.status == "execution_interrupted", run.describe()

    folder = loras_dir(comfy) / "e2e"
    cancelled = sorted(folder.glob("interrupted_00001_step*_cancelled.safetensors"))
    assert len(cancelled) == 1, sorted(p.name for p in folder.iterdir())
    step = int(re.search(r"step(\d+)_cancelled", cancelled[0].name).group(1))
    assert 3 <= step < 500
    assert not (folder / "interrupted_00001_.safetensors").exists()
    loaded = load_tlora(cancelled[0])
    assert loaded.adapter.training_steps == step and loaded.training_state

    # queue it again, resuming from that checkpoint, for two more steps
    resume = graphs.clone(graph)
    resume["train"]["inputs"].update(resume_from=f"e2e/{cancelled[0].name}", steps=step + 2)
    resumed = comfy.run(resume)
    assert resumed.succeeded, resumed.describe()
    assert [e["step"] for e in resumed.of_type("tlora.train.progress")] == [step + 1, step + 2]
    final = resumed.outputs("train")["tlora_saved"][0]
    assert load_tlora(loras_dir(comfy) / final).adapter.training_steps == step + 2
    assert load_tlora(cancelled[0]).adapter.training_steps == step  # the checkpoint itself is untouched


def test_killing_the_server_mid_training_leaves_every_saved_file_loadable(fresh_comfy):
    """SIGKILL (no clean-up runs) while T-LoRA Train writes a checkpoint every step; then a
    restarted server resumes from the newest one."""
    server = fresh_comfy()
    graph = graphs.train_only(
        TINY_UNET, steps=1000, save_every=1, variant="Vanilla T-LoRA", filename_prefix="e2e/killed"
    )
    with server.listen() as ws:
        server.queue(graph, ws.client_id)
        ws.wait_for(lambda m: m["type"] == "tlora.train.progress" and m["data"]["step"] >= 4, 300, "training step 4")
        server.kill()

    folder = loras_dir(server) / "e2e"
    saved = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith(".tmp-"))
    assert len(saved) >= 3, sorted(p.name for p in folder.iterdir())
    steps = []
    for path in saved:
        loaded = load_tlora(path)  # raises on a truncated or corrupt file
        step = int(re.search(r"step(\d+)", path.name).group(1))
        assert loaded.adapter.training_steps == step and loaded.training_state
        steps.append(step)

    restarted = fresh_comfy(server.base_dir)
    resume = graphs.clone(graph)
    last = max(steps)
    resume["train"]["inputs"].update(resume_from=f"e2e/killed_00001_step{last:05}.safetensors", steps=last + 1, save_every=0)
    run = restarted.run(resume)
    assert run.succeeded, run.describe()
    final = run.outputs("train")["tlora_saved"][0]
    assert load_tlora(loras_dir(restarted) / final).adapter.training_steps == last + 1
