"""Patches that exist only on T-LoRA Train's own clone of the MODEL: the diffusion model's raw
prediction kept for the loss, gradient checkpointing of the top-level blocks, copies for blocks
that update tensors in place, and weights made usable by autograd. ModelPatcher removes them with
the clone; Timestep-Aware Apply never sees them.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.utils.checkpoint

import comfy.model_patcher

from . import patching
from .model_kinds import kind_of

log = logging.getLogger(__name__)


class OutputCapture:
    """Keeps the diffusion model's raw prediction (ε, v or velocity) of each call, which is what
    the loss compares against; apply_model only returns the denoised latent. An object patch of
    the diffusion model's forward: every model class is called through it (not every one runs
    ComfyUI's DIFFUSION_MODEL wrappers: SD3's MMDiT doesn't)."""

    def __init__(self, model: comfy.model_patcher.ModelPatcher) -> None:
        self.outputs: list[torch.Tensor] = []
        self.net = model.model.diffusion_model
        model.add_object_patch("diffusion_model.forward", self)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = type(self.net).forward(self.net, *args, **kwargs)
        self.outputs.append(out)
        return out

    def take(self) -> torch.Tensor:
        outputs, self.outputs = self.outputs, []
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _own(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _copy_saved(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone()


def _as_saved(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class _TrainingForward:
    """Object patch for one top-level block during training.

    checkpoint: activation checkpointing, reentrant: the block first runs without autograd (no
    graph, nothing saved) and again with autograd during backward. PyTorch's non-reentrant form
    instead records the graph twice and sends every tensor saved for backward through Python
    pack/unpack hooks, which on a GPU costs more host time than the block's kernels take
    (bench/RESULTS.md). The reentrant form passes gradients through its positional tensor inputs
    only, so every tensor argument is passed positionally; an adapted block whose inputs need
    no gradient (the first one) gets a dummy input that does, so that its adapters' gradients
    flow; a block with no adapter and no such input runs without autograd.
    inplace: the block updates tensors in place (FLUX: ``txt += ...``), which autograd refuses
    for tensors it saved, and which would corrupt what a recomputation starts from: it runs on
    copies of its tensor arguments, with the tensors it saves for backward copied too.
    """

    def __init__(self, module: torch.nn.Module, checkpoint: bool, adapted: bool, inplace: bool) -> None:
        self.module = module
        self.checkpoint = checkpoint
        self.adapted = adapted  # holds adapted layers
        self.inplace = inplace

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        forward = type(self.module).forward
        if not self.inplace:
            return forward(self.module, *args, **kwargs)
        with torch.autograd.graph.saved_tensors_hooks(_copy_saved, _as_saved):
            return forward(self.module, *map(_own, args), **{k: _own(v) for k, v in kwargs.items()})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.checkpoint and torch.is_grad_enabled():
            return _checkpointed(self._run, args, kwargs, self.adapted)
        return self._run(*args, **kwargs)


def _checkpointed(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any], adapted: bool) -> Any:
    keys = list(kwargs)
    values = [*args, *kwargs.values()]
    where = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    tensors = [values[i] for i in where]
    trainable_input = any(t.requires_grad for t in tensors)
    if not adapted and not trainable_input:
        with torch.no_grad():  # nothing in or before this block is trained: no graph to keep
            return fn(*args, **kwargs)

    def run(*given: torch.Tensor) -> Any:
        filled = list(values)
        for i, tensor in zip(where, given):
            filled[i] = tensor
        return fn(*filled[: len(args)], **dict(zip(keys, filled[len(args) :])))

    if not trainable_input:  # the first adapted block: see _TrainingForward
        tensors.append(torch.ones((), requires_grad=True))
    return torch.utils.checkpoint.checkpoint(run, *tensors, use_reentrant=True)


def add_training_patches(model: comfy.model_patcher.ModelPatcher, gradient_checkpointing: bool, node: str) -> int:
    """Patch the diffusion model's top-level blocks (the ones ComfyUI's own trainer checkpoints)
    on this training clone only, for checkpointing and/or in-place safety; ModelPatcher removes
    the patches with the rest. Returns how many blocks were patched."""
    from comfy_extras.nodes_train import find_all_highest_child_module_with_forward

    inplace = kind_of(model, node).inplace
    if not gradient_checkpointing and not inplace:
        return 0
    blocks = find_all_highest_child_module_with_forward(model.model.diffusion_model)
    paths = {id(m): n for n, m in model.model.named_modules()}
    stack = patching.get_stack(model)
    adapted_modules = set(map(id, stack.modules)) if stack is not None else set()
    for block in blocks:
        adapted = any(id(m) in adapted_modules for m in block.modules())
        patch = _TrainingForward(block, gradient_checkpointing, adapted, inplace)
        model.add_object_patch(f"{paths[id(block)]}.forward", patch)
    return len(blocks)


def make_weights_autograd_safe(model: comfy.model_patcher.ModelPatcher) -> int:
    """Replace weights created under ``torch.inference_mode`` (as every loader node creates them)
    by equal ordinary tensors: autograd can't save inference tensors for backward, and every layer
    after the first adapted one needs its weight saved. Values are unchanged. Returns how many."""
    replaced = 0
    with torch.inference_mode(False), torch.no_grad():
        for module in model.model.diffusion_model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None and param.is_inference():
                    module._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                    replaced += 1
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    module._buffers[name] = buffer.clone()
                    replaced += 1
    if replaced:
        log.info("T-LoRA: made %d inference-mode tensors usable for training (values unchanged).", replaced)
    return replaced
