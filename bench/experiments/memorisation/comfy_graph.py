"""Run API-format graphs through ComfyUI's own executor, in this process.

``execution.validate_prompt`` and ``execution.PromptExecutor`` are what ComfyUI's server runs for
``POST /prompt``; here they run with a stand-in server (no sockets). The pack's nodes are
registered from its ``comfy_entrypoint`` the way ``nodes.load_custom_node`` registers a V3
extension; KSampler and EmptyLatentImage are ComfyUI's core nodes. Four experiment-only nodes
connect the synthetic world to the graph (they are not part of the pack):

    MemoWorld_Model    the pretrained MODEL (held in this process, by key)
    MemoWorld_Caption  a caption -> CONDITIONING through the fixed token-embedding table
    MemoWorld_Image    a rendered scene -> LATENT (the training image)
    MemoWorld_Collect  an output node that hands a LATENT back to this script
"""

from __future__ import annotations

import asyncio
import inspect
import itertools

import torch

from comfy_api.latest import io

from . import world

MODELS: dict[str, object] = {}  # key -> ModelPatcher
COLLECTED: dict[str, torch.Tensor] = {}
CATEGORY = "memorisation experiment"


class WorldModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemoWorld_Model", display_name="World Model", category=CATEGORY,
            inputs=[io.String.Input("key", tooltip="Key of a pretrained model registered by the experiment script.")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, key: str) -> io.NodeOutput:
        return io.NodeOutput(MODELS[key])


class WorldCaption(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemoWorld_Caption", display_name="World Caption", category=CATEGORY,
            inputs=[io.String.Input("text", default="", tooltip="Words of the world's vocabulary; empty = unconditional.")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, text: str) -> io.NodeOutput:
        return io.NodeOutput([[world.embed([text]), {}]])


class WorldImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemoWorld_Image", display_name="World Image", category=CATEGORY,
            inputs=[
                io.Model.Input("model", tooltip="For its latent format."),
                io.Combo.Input("background", options=world.BG_NAMES),
                io.Combo.Input("position", options=world.POS_NAMES),
                io.Combo.Input("colour", options=world.ALL_COLOURS),
                io.Combo.Input("shape", options=world.ALL_SHAPES),
                io.Float.Input("size", default=3.0, min=1.0, max=6.0),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, background, position, colour, shape, size) -> io.NodeOutput:
        scenes = world.scenes_at(
            torch.tensor([world.BG_NAMES.index(background)]), torch.tensor([world.ALL_COLOURS.index(colour)]),
            torch.tensor([world.ALL_SHAPES.index(shape)]), torch.tensor([world.POS_NAMES.index(position)]),
            size=size, jitter=False,
        )
        x = world.to_model_space(world.render(scenes))
        return io.NodeOutput({"samples": model.model.latent_format.process_out(x)})


class WorldCollect(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemoWorld_Collect", display_name="World Collect", category=CATEGORY, is_output_node=True,
            inputs=[io.Latent.Input("samples"), io.String.Input("key")],
            outputs=[],
        )

    @classmethod
    def execute(cls, samples, key: str) -> io.NodeOutput:
        COLLECTED[key] = samples["samples"].detach().clone()
        return io.NodeOutput()


EXPERIMENT_NODES = [WorldModel, WorldCaption, WorldImage, WorldCollect]


def register(pack) -> None:
    """The pack's nodes (from its entrypoint, as ComfyUI loads a V3 extension), ComfyUI's core
    nodes (nodes.py), and the experiment's own."""
    import nodes

    extension = asyncio.run(pack.comfy_entrypoint())
    node_list = asyncio.run(extension.get_node_list())
    for node_cls in list(node_list) + EXPERIMENT_NODES:
        schema = node_cls.GET_SCHEMA()
        nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node_cls
        nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name


class _Server:
    """What the executor needs of PromptServer when nobody is listening."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def send_sync(self, event, data, sid=None) -> None:
        pass

    def send_progress_text(self, text, node_id, sid=None) -> None:
        pass

    def queue_updated(self) -> None:
        pass


_ids = itertools.count()


def execute(prompt: dict) -> dict:
    """Validate and run one API-format prompt like ComfyUI's server does; raise on any error.
    Returns the UI outputs per node id (what GET /history reports)."""
    import execution

    prompt_id = f"memo-{next(_ids)}"
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise RuntimeError(f"memorisation: invalid graph: {error} {node_errors}")
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:  # ComfyUI 0.33+
        executor = execution.PromptExecutor(_Server(), cache_type=False, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    else:
        executor = execution.PromptExecutor(_Server(), cache_type=False)
    executor.execute(prompt, prompt_id, {}, outputs)
    if not executor.success:
        failure = [data for event, data in executor.status_messages if event == "execution_error"]
        detail = failure[0] if failure else executor.status_messages
        if isinstance(detail, dict):
            detail = f"{detail.get('node_type')}: {detail.get('exception_type')}: {detail.get('exception_message')}\n" + "".join(detail.get("traceback", []))
        raise RuntimeError(f"memorisation: graph failed: {detail}")
    return executor.history_result["outputs"]


# -- graph builders --------------------------------------------------------------------------------------
def train_graph(model_key: str, image: dict, caption: str, train_inputs: dict) -> dict:
    """World Model + World Image + World Caption -> T-LoRA Train."""
    return {
        "model": {"class_type": "MemoWorld_Model", "inputs": {"key": model_key}},
        "image": {"class_type": "MemoWorld_Image", "inputs": dict(image, model=["model", 0])},
        "caption": {"class_type": "MemoWorld_Caption", "inputs": {"text": caption}},
        "train": {"class_type": "TLoRA_Train", "inputs": dict(
            train_inputs, model=["model", 0], latents=["image", 0], positive=["caption", 0])},
    }


def sample_graph(model_key: str, lora_name: str | None, prompts: list[str], key_prefix: str, batch: int,
                 sampler: dict, seed: int, load_min_rank: int = 0, load_schedule_power: float = 0.0) -> dict:
    """[T-LoRA Load -> Timestep-Aware Apply ->] one KSampler per prompt (batch samples each,
    seed + prompt index) -> World Collect under key_prefix/<index>."""
    side = world.SIDE * 8  # EmptyLatentImage takes pixels; SD1.5 latents are 1/8
    graph: dict = {
        "model": {"class_type": "MemoWorld_Model", "inputs": {"key": model_key}},
        "negative": {"class_type": "MemoWorld_Caption", "inputs": {"text": ""}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": side, "height": side, "batch_size": batch}},
    }
    model_ref = ["model", 0]
    if lora_name is not None:
        graph["load"] = {"class_type": "TLoRA_Load", "inputs": {
            "lora_name": lora_name, "min_rank": load_min_rank, "schedule_power": load_schedule_power}}
        graph["apply"] = {"class_type": "TLoRA_Apply", "inputs": {"model": model_ref, "tlora": ["load", 0], "strength_model": 1.0}}
        model_ref = ["apply", 0]
    for i, text in enumerate(prompts):
        graph[f"caption{i}"] = {"class_type": "MemoWorld_Caption", "inputs": {"text": text}}
        graph[f"sampler{i}"] = {"class_type": "KSampler", "inputs": dict(
            sampler, model=model_ref, seed=seed + i, positive=[f"caption{i}", 0], negative=["negative", 0],
            latent_image=["empty", 0], denoise=1.0)}
        graph[f"collect{i}"] = {"class_type": "MemoWorld_Collect", "inputs": {"samples": [f"sampler{i}", 0], "key": f"{key_prefix}/{i}"}}
    return graph
