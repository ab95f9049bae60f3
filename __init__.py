"""tlora-nodes: T-LoRA (timestep-dependent LoRA) for ComfyUI.

Only the entrypoint and the web directory live here; importing the pack has no side effects
and loads no ComfyUI module until ComfyUI asks for the extension.
"""

WEB_DIRECTORY = "./web"
REQUIRES_COMFYUI = (0, 3, 64)  # keep in step with [tool.comfy] requires-comfyui in pyproject.toml


async def comfy_entrypoint():
    _check_comfyui_version()
    from .nodes import TLoRAExtension

    return TLoRAExtension()


def _check_comfyui_version() -> None:
    try:
        from comfyui_version import __version__
    except ImportError:  # not a release checkout: nothing to compare
        return
    try:
        found = tuple(int(part) for part in __version__.split(".")[:3])
    except ValueError:
        return
    if found < REQUIRES_COMFYUI:
        need = ".".join(map(str, REQUIRES_COMFYUI))
        raise RuntimeError(
            f"tlora-nodes needs ComfyUI {need} or newer (the V3 node API); this is ComfyUI {__version__}. "
            f"Update ComfyUI (git pull, or the Manager's 'Update ComfyUI'), then restart it."
        )


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
