"""HTTP routes for the optional frontend extension (web/js/): what a T-LoRA file's schedule is,
and what T-LoRA Train's recipe "family reference" trains each family with.

    GET /tlora/info?name=<file in models/loras>   (also /api/tlora/info)
    -> {"name", "source", "variant", "rank", "min_rank", "schedule_power", "model_family",
        "training_steps", "needs_schedule", "schedule_source", "schedule_reason", "timestep_range"}

Reads only the file's header (safetensors metadata and tensor shapes; a FLUX lora.pt
memory-mapped, never its tensor data): the Timestep-Aware Apply plot needs rank, min_rank and
schedule_power of the file behind a T-LoRA Load. Reference files store no schedule:
``needs_schedule`` is true, and min_rank / schedule_power are what T-LoRA Load uses then, by
the same rule (``tlora_core.file_schedule``: the run's hparams.yml, else the reference code's
defaults); ``schedule_source`` and ``schedule_reason`` say which and why.

    GET /tlora/recipes   (also /api/tlora/recipes)
    -> {"reference", "custom", "recipes": [{"name", "variant", "variant_label", "rank", "min_rank",
        "optimizer", "learning_rate", "max_grad_norm", "families", "others"}]}

Built from model_kinds' family table (``recipe.family_recipes``): before T-LoRA Train has run,
its plot can't know the MODEL's family, so under the family reference it names what each
family trains with instead of drawing the node's (unused) rank widgets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from ..tlora_core import TLoRAFileError, summarize_tlora, summary_schedule
from ..tlora_core.reference import is_flux_checkpoint_name
from . import recipe

log = logging.getLogger(__name__)
ROUTE = "/tlora/info"
RECIPES_ROUTE = "/tlora/recipes"
_registered = False


class InfoError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def file_info(path: str, name: str) -> dict:
    """Schedule facts of a T-LoRA file, from its header only."""
    try:
        summary = summarize_tlora(path)
        schedule = summary_schedule(path, summary)
    except TLoRAFileError as err:
        raise InfoError(422, str(err)) from err
    needs_schedule = summary.min_rank is None
    return {
        "name": name,
        "source": summary.source,
        "variant": summary.variant,
        "rank": summary.rank,
        "min_rank": schedule.min_rank,
        "schedule_power": schedule.schedule_power,
        "model_family": summary.model_family or None,
        "training_steps": None if needs_schedule else summary.training_steps,
        "needs_schedule": needs_schedule,
        "schedule_source": schedule.source,
        "schedule_reason": schedule.reason,
        # [first, end) for one expert of a two-expert model (Wan 2.2 A14B); null: every timestep
        "timestep_range": list(summary.timestep_range) if summary.timestep_range else None,
    }


def lookup(name: str) -> dict:
    import folder_paths

    if not name:
        raise InfoError(400, "T-LoRA: give the file as ?name=<file in models/loras>.")
    if not (name.lower().endswith(".safetensors") or is_flux_checkpoint_name(name)):
        raise InfoError(400, f"T-LoRA: {name} is neither a .safetensors file nor a reference FLUX lora.pt.")
    path = folder_paths.get_full_path("loras", name)  # resolves inside the loras folders only
    if path is None or not os.path.isfile(path):
        raise InfoError(404, f"T-LoRA: {name} is not in the loras folder.")
    return file_info(path, name)


def prompt_server():
    """The running PromptServer, or None (tests and benchmarks that import the nodes in-process).
    Only a running ComfyUI has imported its server module; never import it here: a failed import
    is retried on every call and costs milliseconds (training asks once per step and per layer)."""
    return getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)


def register() -> None:
    """Add the routes to the running PromptServer; idempotent, and a no-op without a server
    (tests that import the nodes in-process)."""
    global _registered
    if _registered:
        return
    server = prompt_server()
    if server is None:
        return
    from aiohttp import web

    @server.routes.get(ROUTE)
    async def tlora_info(request):
        try:
            # file I/O off the event loop: a slow (network) disk must not stall the server
            info = await asyncio.to_thread(lookup, request.rel_url.query.get("name", ""))
            return web.json_response(info)
        except InfoError as err:
            return web.json_response({"error": str(err)}, status=err.status)

    @server.routes.get(RECIPES_ROUTE)
    async def tlora_recipes(request):
        return web.json_response(recipe.family_recipes())

    _registered = True
    log.debug("T-LoRA: registered %s and %s", ROUTE, RECIPES_ROUTE)
