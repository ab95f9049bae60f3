"""The extension: the single list of nodes this pack ships."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .apply import TimestepAwareApply
from .export import TLoRAExport
from .load import TLoRALoad
from .train import TLoRATrain

NODES: list[type[io.ComfyNode]] = [TLoRATrain, TLoRALoad, TimestepAwareApply, TLoRAExport]


class TLoRAExtension(ComfyExtension):
    async def on_load(self) -> None:
        from .routes import register

        register()  # GET /tlora/info and /tlora/recipes for the frontend extension; idempotent

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.64 never calls on_load (later versions may): call it here too.
        await self.on_load()
        return NODES
