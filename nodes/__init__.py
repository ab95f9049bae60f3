"""The extension: the single list of nodes this pack ships."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .apply import TimestepAwareApply
from .load import TLoRALoad
from .train import TLoRATrain

NODES: list[type[io.ComfyNode]] = [TLoRATrain, TLoRALoad, TimestepAwareApply]


class TLoRAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
