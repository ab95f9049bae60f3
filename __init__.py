"""tlora-nodes: T-LoRA (timestep-dependent LoRA) for ComfyUI.

Only the entrypoint and the web directory live here; importing the pack has no side effects
and loads no ComfyUI module until ComfyUI asks for the extension. On a ComfyUI the pack can't
use (older than REQUIRES_COMFYUI, or without the parts of the V3 node API it needs) it logs one
line saying what was found and what to do, and registers no nodes: ComfyUI and other packs
start as usual.
"""

import logging

WEB_DIRECTORY = "./web"
REQUIRES_COMFYUI = (0, 3, 64)  # keep in step with [tool.comfy] requires-comfyui in pyproject.toml
# What the nodes use of comfy_api.latest.io, checked before any node module is imported.
V3_NAMES = ("ComfyNode", "Schema", "Custom", "Model", "Latent", "Conditioning", "Mask", "Int", "Float",
            "Combo", "String", "Boolean", "LossMap", "Hidden", "NodeOutput")


async def comfy_entrypoint():
    problem = _unusable_comfyui()
    if problem is not None:
        logging.getLogger(__name__).warning("tlora-nodes: %s T-LoRA nodes are not loaded.", problem)
        return _without_nodes()
    from .nodes import TLoRAExtension

    return TLoRAExtension()


def _found_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:  # not a release checkout
        return "unknown"
    return str(__version__)


def _unusable_comfyui():
    """None, or one sentence: which ComfyUI was found and what to do."""
    found = _found_version()
    need = ".".join(map(str, REQUIRES_COMFYUI))
    update = "update ComfyUI (git pull, or the Manager's 'Update ComfyUI') and restart it."
    try:
        version = tuple(int(part) for part in found.split(".")[:3])
    except ValueError:
        version = None  # a development checkout: judged by its API below
    if version is not None and version < REQUIRES_COMFYUI:
        return f"ComfyUI {found} is older than {need}, the oldest this pack supports (the V3 node API): {update}"
    try:
        from comfy_api.latest import ComfyExtension, io  # noqa: F401
    except ImportError as err:
        return f"ComfyUI {found} has no usable V3 node API (comfy_api.latest: {err}): {update}"
    missing = [name for name in V3_NAMES if not hasattr(io, name)]
    if missing:
        return f"ComfyUI {found} lacks comfy_api.latest.io.{missing[0]}, which this pack needs: {update}"
    return None


def _without_nodes():
    """An extension that registers nothing (None where even ComfyExtension is missing)."""
    try:
        from comfy_api.latest import ComfyExtension
    except ImportError:
        return None

    class NoNodes(ComfyExtension):
        async def get_node_list(self):
            return []

    return NoNodes()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
