"""Merged weights that follow the rank in place (float32) stay within their proven rounding
bound over whole sampling runs; bfloat16 and float16 weights are merged afresh at every rank.

The bound (nodes/patching.py, ``TLoRAStack._move_in_place``): with T the exact
W + Σ s·U[:, :k]·D[:k] of the factors the stack merges, A = |W| + 2·Σ |s·U|·|D| over all
components, u = 2^-24 and N the roundings the stack counted since its last fresh merge,
|M − T| ≤ γ_N·A elementwise, γ_N = N·u / (1 − N·u). Checked here in float64 at every model call.
"""

from __future__ import annotations

import random

import pytest
import torch

pytestmark = pytest.mark.comfyui

U32 = 2.0**-24


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def run_timesteps(model, steps: int, scheduler: str = "normal", start: int = 0, evaluations: int = 1) -> list[float]:
    """The reference timestep of every model call of one sampling run: ``steps`` steps from
    ``start`` (img2img starts mid-way), ``evaluations`` model calls per step (Heun-like
    samplers also evaluate the next sigma, so the rank goes up and down within a run)."""
    import comfy.samplers

    from tlora_nodes.nodes.model_kinds import sigma_to_timestep

    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps)[start:]
    calls = []
    for i in range(len(sigmas) - 1):
        for sigma in (sigmas[i], sigmas[i + 1])[:evaluations]:
            if float(sigma) > 0:
                calls.append(float(sigma_to_timestep(sampling, sigma.reshape(1))[0]))
    return calls


def merged_modules(patched, one_per_kind: bool = False):
    """(module, slots) of every adapted Linear the stack merges; with ``one_per_kind`` one of
    each weight shape and slot layout (each merged weight follows its ranks on its own, so the
    others repeat the same sums; checking every one in float64 at every call is minutes)."""
    from tlora_nodes.nodes.patching import _PatchedForward, get_stack

    stack = get_stack(patched)
    patches = [p for p in patched.object_patches.values() if isinstance(p, _PatchedForward)]
    modules = [(p.module, p.slots) for p in patches if p.module in stack.mergeable]
    if not one_per_kind:
        return modules
    kinds = {}
    for module, slots in modules:
        kinds.setdefault((tuple(module.weight.shape), tuple((i, rows) for i, _, rows in slots)), (module, slots))
    return list(kinds.values())


def exact(stack, module, slots):
    """(T, A) in float64 from the factors the stack merges."""
    weight = module.weight.detach().double()
    total = weight.clone()
    magnitude = weight.abs()
    for i, name, rows in slots:
        down, up = (f.double() for f in stack._plain_factors(i, name, weight.device, torch.float32))
        k = stack._own_layers[i][name].components(stack.shared_ranks[i])
        part = slice(None) if rows is None else slice(rows[0], rows[0] + rows[1])
        total[part] += up[:, :k] @ down[:k]
        magnitude[part] += 2 * (up.abs() @ down.abs())
    return total, magnitude


def fresh_merge(stack, module, slots):
    """A fresh float32 merge of the same factors at the stack's ranks, as the stack made it
    before moves existed, and its roundings (1 + k per slot)."""
    fresh = module.weight.detach().clone()
    roundings = 0
    for i, name, rows in slots:
        down, up = stack._plain_factors(i, name, fresh.device, torch.float32)
        k = stack._own_layers[i][name].components(stack.shared_ranks[i])
        part = fresh if rows is None else fresh[rows[0] : rows[0] + rows[1]]
        part.addmm_(up[:, :k], down[:k])
        roundings += k + 1
    return fresh, roundings


def drive(stack, modules, timesteps, check):
    """Model calls at these timesteps (no cleanup in between: several runs in a row keep their
    merged weights), each merged weight checked by ``check(module, slots, merged)``."""
    with torch.inference_mode():
        for t in timesteps:
            stack.set_timesteps(torch.tensor([t, t]))  # cond and uncond in one batch
            for module, slots in modules:
                check(module, slots, stack._merged_weight(module, slots, module.weight.device))


def schedules(model):
    """Rank sequences a real sampler produces: 25 steps of txt2img twice in a row, Heun-like
    evaluations (up and down within each step), img2img from 60 %, and a random walk."""
    txt2img = run_timesteps(model, 25)
    walk = random.Random(0)
    return {
        "txt2img x2": txt2img + txt2img,
        "heun": run_timesteps(model, 25, "karras", evaluations=2),
        "img2img": run_timesteps(model, 25, start=10) + txt2img,
        "random": [walk.choice(txt2img) for _ in range(60)],
    }


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_float32_moves_in_place_stay_within_the_bound(tiny, helpers, patching, kind, variant, monkeypatch):
    model = tiny.build(kind)
    a = helpers.make_adapter(model, variant=variant, rank=64 if kind == "sd15" else 16, min_rank=32 if kind == "sd15" else 4)
    b = helpers.make_adapter(model, variant=variant, rank=8, min_rank=2, seed=3)
    patched = model.clone()
    patching.attach(patched, a, 0.8, "test")
    patching.attach(patched, b, -1.7, "test")  # two adapters on the same rows: one bound over both
    stack = patching.get_stack(patched)
    modules = merged_modules(patched, one_per_kind=True)
    assert modules
    if kind == "flux":
        assert any(rows is not None for _, slots in modules for _, _, rows in slots)  # fused qkv: row slots

    moved = []
    original = patching.TLoRAStack._move_in_place
    monkeypatch.setattr(patching.TLoRAStack, "_move_in_place", lambda self, *a: moved.append(original(self, *a)) or moved[-1])
    worst = {"drift": 0.0, "fresh": 0.0}

    references = {}  # (module, ranks) -> T, A and the fresh merge: a run revisits its ranks

    def check(module, slots, merged):
        entry = stack._merged[module]
        assert entry.tensor is merged and entry.roundings <= entry.budget
        key = (module, tuple(stack.shared_ranks))
        if key not in references:
            references[key] = (*exact(stack, module, slots), *fresh_merge(stack, module, slots))
        total, magnitude, fresh, fresh_roundings = references[key]
        error = (merged.double() - total).abs()
        bound = gamma(entry.roundings) * magnitude
        assert bool((error <= bound).all()), (float((error - bound).max()), entry.roundings)
        assert bool(((merged - fresh).double().abs() <= gamma(entry.roundings + fresh_roundings) * magnitude).all())
        worst["drift"] = max(worst["drift"], float(error.max() / magnitude.max()))
        worst["fresh"] = max(worst["fresh"], float((fresh.double() - total).abs().max() / magnitude.max()))

    for name, timesteps in schedules(model).items():
        drive(stack, modules, timesteps, check)
    assert moved.count(True) > 10 * max(1, moved.count(False)) or moved.count(True) > 100, moved.count(True)
    # the practical size of the drift: a few float32 roundings of the weight, as a fresh merge
    assert worst["drift"] < 16 * max(worst["fresh"], U32), worst


def test_drift_budget_forces_a_fresh_merge(tiny, helpers, patching, monkeypatch):
    """Up and down between two neighbouring ranks forever: the roundings reach the budget, then
    the weight is merged afresh (and its count starts again) instead of drifting on."""
    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=64, min_rank=32)
    patched = model.clone()
    stack = patching.attach(patched, adapter, 1.0, "test")
    module, slots = merged_modules(patched)[0]
    ts = run_timesteps(model, 25)
    ranks = [int(adapter.schedule.rank_at(t)) for t in ts]
    low, high = next((ts[j], ts[j + 1]) for j in range(len(ts) - 1) if ranks[j + 1] == ranks[j] + 1)
    counts = []
    with torch.inference_mode():
        for t in [low, high] * 200:
            stack.set_timesteps(torch.tensor([t]))
            stack._merged_weight(module, slots, module.weight.device)
            counts.append(stack._merged[module].roundings)
    budget = stack._merged[module].budget
    assert max(counts) <= budget
    assert sum(1 for x, y in zip(counts, counts[1:]) if y < x) >= 2  # reset by fresh merges, more than once


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_are_merged_afresh_at_every_rank(tiny, helpers, patching, dtype):
    model = tiny.build("sd15", dtype=dtype)
    adapter = helpers.make_adapter(model, rank=64, min_rank=32)
    patched = model.clone()
    stack = patching.attach(patched, adapter, 1.0, "test")
    modules = merged_modules(patched, one_per_kind=True)

    def check(module, slots, merged):
        ((i, name, rows),) = slots
        down, up = stack._plain_factors(i, name, module.weight.device, dtype)
        k = stack._own_layers[i][name].components(stack.shared_ranks[i])
        assert torch.equal(merged, torch.addmm(module.weight, up[:, :k], down[:k]))

    drive(stack, modules, schedules(model)["heun"], check)


def test_weights_replaced_between_calls_are_merged_from_the_new_weight(tiny, helpers, patching):
    """A weight swapped for another tensor (ComfyUI's weight patching sets new Parameters) is
    not moved in place from the old one's merge."""
    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=64, min_rank=32)
    patched = model.clone()
    stack = patching.attach(patched, adapter, 1.0, "test")
    module, slots = merged_modules(patched)[0]
    ((i, name, _),) = slots
    ts = run_timesteps(model, 25)
    with torch.inference_mode():
        stack.set_timesteps(torch.tensor([ts[0]]))
        stack._merged_weight(module, slots, module.weight.device)
        original = module.weight
        module.weight = torch.nn.Parameter(original.detach() * 2, requires_grad=False)
        try:
            stack.set_timesteps(torch.tensor([ts[5]]))
            merged = stack._merged_weight(module, slots, module.weight.device)
            down, up = stack._plain_factors(i, name, module.weight.device, torch.float32)
            k = stack._own_layers[i][name].components(stack.shared_ranks[i])
            torch.testing.assert_close(merged, torch.addmm(module.weight, up[:, :k], down[:k]), rtol=0, atol=0)
        finally:
            module.weight = original
