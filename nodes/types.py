"""Wire types and naming shared by every node of the pack."""

from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "T-LoRA"

# The adapter on a wire: a tlora_core.TLoRA (T-LoRA Train and T-LoRA Load output it).
TLora = io.Custom("TLORA")


def node_message(node: str, err: Exception) -> str:
    """A core error ("T-LoRA: ...") re-addressed to the node the user is looking at; an error
    that already names the node keeps its text."""
    text = str(err)
    return text if text.startswith(f"{node}: ") else f"{node}: {text.removeprefix('T-LoRA: ')}"
