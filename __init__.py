"""tlora-nodes: T-LoRA (timestep-dependent LoRA) for ComfyUI.

Only the entrypoint and the web directory live here; importing the pack has no side effects
and loads no ComfyUI module until ComfyUI asks for the extension.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import TLoRAExtension

    return TLoRAExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
