"""Timestep-Aware Apply: attach a T-LoRA whose active rank follows the sampler's noise level."""

from __future__ import annotations

from comfy_api.latest import io

from .patching import attach
from .types import CATEGORY, TLora

DISPLAY_NAME = "Timestep-Aware Apply"


class TimestepAwareApply(io.ComfyNode):
    """Attach a T-LoRA whose active rank follows the sampler's current noise level."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLoRA_Apply",
            display_name=DISPLAY_NAME,
            category=CATEGORY,
            description=(
                "Patches the MODEL so that every model call uses r(t) rank components, t being the "
                "timestep of that call's sigma: few components at high noise (composition stays free), "
                "all of them near the end (details of the concept). Works with every sampler and scheduler."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to patch. It is cloned, never changed."),
                TLora.Input("tlora", tooltip="From T-LoRA Train or T-LoRA Load."),
                io.Float.Input(
                    "strength_model",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Scale of the adapter's effect. 1.0 is what it was trained with; 0 returns the model unchanged.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with the T-LoRA attached, timestep-aware.")],
        )

    @classmethod
    def execute(cls, model, tlora, strength_model: float) -> io.NodeOutput:
        if strength_model == 0:
            return io.NodeOutput(model)
        patched = model.clone()
        attach(patched, tlora, strength_model, DISPLAY_NAME)
        return io.NodeOutput(patched)
