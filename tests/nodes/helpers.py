"""Helpers for the ComfyUI integration tests (imported only when ComfyUI is present)."""

from __future__ import annotations

import copy

import numpy as np
import torch

import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy_api.internal import make_locked_method_func

from tlora_nodes.nodes import model_kinds, patching
from tlora_nodes.tlora_core import TLoRA, TLoRAConfig

from . import tiny


class Many(list):
    """An input that comes from a node's list output (``is_output_list``): passed to a node that
    takes lists as it is, not wrapped in a list of one."""


def run_node(node_cls, hidden: dict | None = None, **inputs):
    """Execute a V3 node the way ComfyUI's executor does (class clone, locked method; for a node
    that takes lists, every input as a list: one value from an ordinary output, ``Many`` as is)."""
    node_cls.VALIDATE_CLASS()
    clone = node_cls.PREPARE_CLASS_CLONE(hidden or {})
    if node_cls.INPUT_IS_LIST:
        inputs = {k: list(v) if isinstance(v, Many) else [v] for k, v in inputs.items()}
    return make_locked_method_func(node_cls, "EXECUTE_NORMALIZED", clone)(**inputs)


def make_adapter(model, variant="tlora", rank=8, min_rank=2, power=1.0, seed=0, scale=0.05, family=None) -> TLoRA:
    """An adapter for this model's layers, moved away from its (zero-delta) init."""
    targets = model_kinds.find_targets(model, "test")
    family = family or model_kinds.kind_of(model, "test").family
    config = TLoRAConfig(variant=variant, rank=rank, min_rank=min_rank, schedule_power=power, model_family=family)
    adapter = TLoRA.create(config, model_kinds.layer_shapes(targets), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return adapter


def copy_model(base_model):
    """A deep copy of a BaseModel that shares its model config: ComfyUI 0.33's model config
    answers every unknown attribute with None (``__setstate__`` too), so it can't be deep-copied;
    it holds no tensors, and nothing here changes it."""
    config = base_model.model_config
    return copy.deepcopy(base_model, memo={id(config): config})


def merged_model(model, adapter: TLoRA, rank: int, strength: float = 1.0):
    """An independent reference: a deep copy of the model with strength·ΔW(mask of ``rank``)
    added straight into the weights (fused Flux weights at their row offsets)."""
    base = copy_model(model.model)
    mask = torch.cat([torch.ones(rank), torch.zeros(adapter.config.rank - rank)])
    targets = model_kinds.find_targets(model, "test")
    with torch.no_grad():
        for name, layer in adapter.items():
            target = targets[name]
            weight = comfy.utils.get_attr(base, target.module + ".weight")
            delta = (strength * layer.delta_weight(mask)).to(weight.dtype)
            if target.rows is None:
                weight += delta
            else:
                weight[target.rows[0] : target.rows[0] + target.rows[1]] += delta
    return comfy.model_patcher.ModelPatcher(base, load_device=tiny.CPU, offload_device=tiny.CPU)


def independent_timestep(model, sigma: float) -> float:
    """The reference's t for sigma, computed here without ComfyUI's conversion code."""
    sampling = model.model.model_sampling
    if isinstance(sampling, (comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.ModelSamplingDiscreteFlow)):
        return round(1000.0 * sigma, 3)
    table = np.log(sampling.sigmas.double().numpy())
    return float(np.abs(np.log(sigma) - table).argmin())


def denoise_at(model, kind: str, sigma: float, cfg: float = 3.0, seed: int = 0, batch: int = 1, positive=None, negative=None):
    """The model's denoised prediction at one sigma, through the real sampling path (one Euler
    step from sigma to 0 returns the denoised latent)."""
    pos, neg = tiny.conditioning(kind, batch=batch)
    sampler = comfy.samplers.sampler_object("euler")
    sigmas = torch.tensor([sigma, 0.0])
    noise = tiny.noise(kind, seed, batch) * sigma
    latent = torch.zeros(batch, *tiny.LATENT[kind])
    return comfy.sample.sample_custom(
        model, noise, cfg, sampler, sigmas, positive or pos, negative or neg, latent, disable_pbar=True, seed=seed
    )


class CallLog:
    """Records (sigma, active rank) for every model call of a patched model, from ComfyUI's
    APPLY_MODEL wrapper (every model class goes through it; not every one runs DIFFUSION_MODEL
    wrappers): the sigma of each row, and the ranks that call left set."""

    KEY = "tlora_test_log"

    def __init__(self, model):
        self.calls: list[tuple[list[float], list[int]]] = []
        stack = patching.get_stack(model)

        def record(executor, x, t, *args, **kwargs):
            out = executor(x, t, *args, **kwargs)
            sigmas = t.reshape(-1).tolist()
            ranks = stack.active_ranks[0].reshape(-1).tolist()
            if len(ranks) == 1:
                ranks = ranks * len(sigmas)
            self.calls.append((sigmas, ranks))
            return out

        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, self.KEY, record)

    def assert_each_call_used_its_sigmas_rank(self, model, schedule) -> set[int]:
        """Every recorded call's rank is r(t(sigma)) with t computed independently of the pack;
        returns the ranks seen."""
        assert self.calls, "the model was never called"
        seen: set[int] = set()
        for sigmas, ranks in self.calls:
            expected = [int(schedule.rank_at(independent_timestep(model, s))) for s in sigmas]
            assert ranks == expected, (sigmas, ranks, expected)
            seen.update(ranks)
        return seen

