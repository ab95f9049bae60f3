"""The pack's one seam for ComfyUI API differences between the versions it supports
(0.3.64 to 0.33; README lists the tested ones). Each function is named for what it adapts; the
rest of the pack calls these instead of checking versions.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import comfy.model_management


@contextlib.contextmanager
def differentiable_kernels() -> Iterator[None]:
    """Make the model's forward differentiable while training runs.

    Newer ComfyUI (0.33) runs fused comfy_kitchen kernels (RoPE, attention, quantised matmuls)
    that have no backward unless ``comfy.model_management.in_training`` is set, as its own Train
    LoRA node does around its loop; older versions have no such flag and always differentiate.
    The previous value is restored, also when training fails or is cancelled.
    """
    if not hasattr(comfy.model_management, "in_training"):
        yield
        return
    previous = comfy.model_management.in_training
    comfy.model_management.in_training = True
    try:
        yield
    finally:
        comfy.model_management.in_training = previous
