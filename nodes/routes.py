"""HTTP routes for the optional frontend extension (web/js/): what a T-LoRA file's schedule is.

    GET /tlora/info?name=<file in models/loras>   (also /api/tlora/info)
    -> {"name", "source", "variant", "rank", "min_rank", "schedule_power", "model_family",
        "training_steps", "needs_schedule"}

Reads only the safetensors header (metadata and tensor shapes, never tensor data): the
Timestep-Aware Apply plot needs rank, min_rank and schedule_power of the file behind a
T-LoRA Load. Reference files store no schedule: ``needs_schedule`` is true and min_rank is
what T-LoRA Load uses then (half the rank), schedule_power 1.0.
"""

from __future__ import annotations

import logging
import os
import sys

from safetensors import SafetensorError, safe_open

from ..tlora_core import FORMAT_NAME

log = logging.getLogger(__name__)
ROUTE = "/tlora/info"
_registered = False
# Reference processor keys whose first dimension is the rank (SPEC §6).
_REFERENCE_RANK_KEYS = {"_lora.down.weight": "vanilla", "_lora.q_layer.weight": "tlora"}


class InfoError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def file_info(path: str, name: str) -> dict:
    """Schedule facts of a T-LoRA file, from its header only."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            if metadata.get("format") == FORMAT_NAME:
                return {
                    "name": name,
                    "source": FORMAT_NAME,
                    "variant": metadata.get("variant"),
                    "rank": int(metadata["rank"]),
                    "min_rank": int(metadata["min_rank"]),
                    "schedule_power": float(metadata.get("schedule_power", "1.0")),
                    "model_family": metadata.get("model_family"),
                    "training_steps": int(metadata.get("training_steps", "0")),
                    "needs_schedule": False,
                }
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                for suffix, variant in _REFERENCE_RANK_KEYS.items():
                    if key.endswith(suffix):
                        rank = int(f.get_slice(key).get_shape()[0])
                        return {
                            "name": name,
                            "source": "reference",
                            "variant": variant,
                            "rank": rank,
                            "min_rank": max(1, rank // 2),
                            "schedule_power": 1.0,
                            "model_family": None,
                            "training_steps": None,
                            "needs_schedule": True,
                        }
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise InfoError(422, f"T-LoRA: {name} is not a readable T-LoRA file ({err}).") from err
    raise InfoError(422, f"T-LoRA: {name} is neither a tlora-nodes file nor a reference T-LoRA file.")


def lookup(name: str) -> dict:
    import folder_paths

    if not name:
        raise InfoError(400, "T-LoRA: give the file as ?name=<file in models/loras>.")
    if not name.lower().endswith(".safetensors"):
        raise InfoError(400, f"T-LoRA: {name} is not a .safetensors file.")
    path = folder_paths.get_full_path("loras", name)  # resolves inside the loras folders only
    if path is None or not os.path.isfile(path):
        raise InfoError(404, f"T-LoRA: {name} is not in the loras folder.")
    return file_info(path, name)


def register() -> None:
    """Add the routes to the running PromptServer; idempotent, and a no-op without a server
    (tests that import the nodes in-process)."""
    global _registered
    if _registered:
        return
    # Only a running ComfyUI has imported its server module; never import it here.
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if server is None:
        return
    from aiohttp import web

    @server.routes.get(ROUTE)
    async def tlora_info(request):
        try:
            return web.json_response(lookup(request.rel_url.query.get("name", "")))
        except InfoError as err:
            return web.json_response({"error": str(err)}, status=err.status)

    _registered = True
    log.debug("T-LoRA: registered %s", ROUTE)
