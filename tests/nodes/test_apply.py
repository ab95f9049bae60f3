"""Timestep-Aware Apply in the real ComfyUI: the sigma of every model call picks the rank."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.comfyui

SAMPLERS = ["euler", "heun", "dpmpp_2m", "dpmpp_sde", "euler_ancestral", "uni_pc", "dpm_2"]


def apply(helpers, model, adapter, strength=1.0):
    from tlora_nodes.nodes.apply import TimestepAwareApply

    return helpers.run_node(TimestepAwareApply, model=model, tlora=adapter, strength_model=strength)[0]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_active_rank_follows_the_sigma_of_every_model_call(tiny, helpers, kind, sampler):
    model = tiny.build(kind)
    adapter = helpers.make_adapter(model, rank=16, min_rank=3)
    patched = apply(helpers, model, adapter)
    log = helpers.CallLog(patched)
    tiny.sample(patched, kind, sampler=sampler, scheduler="karras" if kind == "sd15" else "simple", steps=5)
    assert len(log.calls) >= 5
    if sampler in ("heun", "dpm_2", "dpmpp_sde"):
        assert len(log.calls) > 5  # several model calls per step, each at its own sigma
    schedule = adapter.schedule
    for sigmas, ranks in log.calls:
        for sigma, rank in zip(sigmas, ranks):
            assert rank == int(schedule.rank_at(helpers.independent_timestep(model, sigma))), (sigma, rank)
    assert len({r for _, ranks in log.calls for r in ranks}) > 2  # the rank really moves


def test_sdxl_ddim_uniform_25_steps_gives_the_spec_rank_list(tiny, helpers):
    model = tiny.build("sdxl")
    adapter = helpers.make_adapter(model, rank=64, min_rank=32)
    patched = apply(helpers, model, adapter)
    log = helpers.CallLog(patched)
    tiny.sample(patched, "sdxl", sampler="euler", scheduler="ddim_uniform", steps=25)
    ranks = [r[0] for _, r in log.calls]
    assert ranks == [33, 34, 35, 37, 38, 39, 40, 42, 43, 44, 46, 47, 48, 49, 51, 52, 53, 55, 56, 57, 58, 60, 61, 62, 63]


def assert_same_effect(got, want, plain, rel=1e-3):
    """got and want differ from the plain model's output by the same delta."""
    effect = (want - plain).abs().max().item()
    assert effect > 0
    torch.testing.assert_close(got - plain, want - plain, rtol=rel, atol=rel * effect)


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
@pytest.mark.parametrize("kind", ["sd15", "sdxl", "flux"])
def test_patched_output_equals_merged_delta_at_that_sigma(tiny, helpers, kind, variant):
    model = tiny.build(kind)
    adapter = helpers.make_adapter(model, variant=variant, rank=12, min_rank=2)
    patched = apply(helpers, model, adapter, strength=0.8)
    sampling = model.model.model_sampling
    ranks = []
    for sigma in (float(sampling.sigma_max) * 0.9, float(sampling.percent_to_sigma(0.5)), float(sampling.percent_to_sigma(0.97))):
        rank = int(adapter.schedule.rank_at(helpers.independent_timestep(model, sigma)))
        ranks.append(rank)
        reference = helpers.merged_model(model, adapter, rank, strength=0.8)
        got = helpers.denoise_at(patched, kind, sigma)
        want = helpers.denoise_at(reference, kind, sigma)
        assert_same_effect(got, want, helpers.denoise_at(model, kind, sigma))
    assert len(set(ranks)) == 3


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_merged_path_and_activation_path_agree(tiny, helpers, patching, monkeypatch, kind, variant):
    model = tiny.build(kind)
    adapter = helpers.make_adapter(model, variant=variant, rank=12, min_rank=3)
    patched = apply(helpers, model, adapter, strength=0.7)
    stack = patching.get_stack(patched)
    merges = []
    original = patching.TLoRAStack._merged_weight
    monkeypatch.setattr(patching.TLoRAStack, "_merged_weight", lambda self, *a: merges.append(1) or original(self, *a))
    merged = tiny.sample(patched, kind, steps=4)
    assert merges, "sampling (no autograd, shared rank, resident weights) should use merged weights"
    assert stack._merged  # host memory: kept for the next run while the model stays loaded (issue 17)
    monkeypatch.setattr(patching.TLoRAStack, "_can_merge", lambda self, module, x: False)
    activation = tiny.sample(apply(helpers, model, adapter, strength=0.7), kind, steps=4)
    plain = tiny.sample(model, kind, steps=4)
    assert_same_effect(merged, activation, plain)


def test_merged_host_weights_serve_the_next_run_and_go_with_the_model(tiny, helpers, patching):
    """On the CPU a run's merged weights stay for the next run (moved to its ranks in place, no new
    tensors; ComfyUI detaches the model at every load, which must not drop them) and give that run
    exactly what a fresh stack gives; merged weights on any other device go when each run ends, the
    host ones when another stack samples or ComfyUI unloads the model."""
    import comfy.model_management

    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=12, min_rank=3)
    patched = apply(helpers, model, adapter, strength=0.7)
    stack = patching.get_stack(patched)
    first = tiny.sample(patched, "sd15", steps=5)
    kept = {module: cached.tensor.data_ptr() for module, cached in stack._merged.items()}
    assert kept and len(kept) == len(stack.mergeable)
    again = tiny.sample(patched, "sd15", steps=5)
    torch.testing.assert_close(again, first, rtol=1e-5, atol=1e-5 * first.abs().max().item())
    assert {module: cached.tensor.data_ptr() for module, cached in stack._merged.items()} == kept  # the same memory

    module, cached = next(iter(stack._merged.items()))
    stack._merged[module] = patching._Merged(cached.source, cached.ranks, torch.empty(cached.tensor.shape, device="meta"), 0, 1)
    stack.release_run()  # a run ends: the weight on another device (stands for the GPU) goes, host ones stay
    assert module not in stack._merged and len(stack._merged) == len(kept) - 1

    fresh = tiny.sample(apply(helpers, model, adapter, strength=0.7), "sd15", steps=5)
    torch.testing.assert_close(again, fresh, rtol=1e-5, atol=1e-5 * fresh.abs().max().item())
    assert stack._merged == {}  # one stack keeps host merges: the one that sampled last
    tiny.sample(patched, "sd15", steps=5)
    assert stack._merged
    comfy.model_management.unload_all_models()  # ComfyUI unloads the model: ON_DETACH, unpatch_all
    assert stack._merged == {}


def test_a_kept_merged_weight_is_not_reused_after_the_weights_were_patched(tiny, helpers, patching):
    """Weights LoRA-patched in place between two runs (ComfyUI records it in the model's
    current_weight_patches_uuid): the next run merges from the weights as they are, never reuses
    the first run's copy. And the real case, a stock LoraLoader clone of the same checkpoint run
    in between, leaves our next run exactly as it was."""
    import uuid

    import comfy.sd
    import comfy.utils

    from tlora_nodes.tlora_core import export_lora

    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=8, min_rank=2)
    patched = apply(helpers, model, adapter)
    stack = patching.get_stack(patched)
    want = tiny.sample(patched, "sd15", steps=3)
    other = helpers.make_adapter(model, variant="vanilla", rank=4, min_rank=4, seed=5, scale=0.3)
    lora_model, _ = comfy.sd.load_lora_for_models(model, None, export_lora(other), 1.0, 0)
    assert (tiny.sample(lora_model, "sd15", steps=3) - want).abs().max() > 1e-3  # the LoRA shows
    torch.testing.assert_close(tiny.sample(patched, "sd15", steps=3), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())

    assert stack._merged  # kept from that run
    g = torch.Generator().manual_seed(9)
    changes = {}
    with torch.no_grad():
        for module in stack.mergeable:
            changes[module] = torch.randn(module.weight.shape, generator=g) * 0.05
            module.weight += changes[module]
    model.model.current_weight_patches_uuid = uuid.uuid4()  # what ComfyUI sets when it patches weights
    try:
        got = tiny.sample(patched, "sd15", steps=3)
        fresh = tiny.sample(apply(helpers, model, adapter), "sd15", steps=3)
    finally:
        with torch.no_grad():
            for module, change in changes.items():
                module.weight -= change
        model.model.current_weight_patches_uuid = None
    assert (fresh - want).abs().max() > 1e-3
    torch.testing.assert_close(got, fresh, rtol=1e-5, atol=1e-5 * fresh.abs().max().item())


def test_flux_merges_fused_qkv_but_never_copies_linear1s_mlp_rows(tiny, helpers, patching, monkeypatch):
    """Double blocks' qkv is all q, k and v rows: merged. Single blocks' linear1 is q, k, v and
    the MLP input: a merged copy would be 4/7 untouched rows, so its deltas go on the activations."""
    from tlora_nodes.nodes.patching import _covers_all_rows

    assert _covers_all_rows([None], 6) and _covers_all_rows([(0, 2), (2, 2), (4, 2)], 6)
    assert _covers_all_rows([(2, 4), (0, 3)], 6) and not _covers_all_rows([(0, 2), (3, 3)], 6)
    assert not _covers_all_rows([(0, 2), (2, 2), (4, 2)], 14)

    model = tiny.build("flux")
    patched = apply(helpers, model, helpers.make_adapter(model, rank=8, min_rank=2))
    names = {id(m): n for n, m in model.model.named_modules()}
    merged = set()
    original = patching.TLoRAStack._merged_weight
    monkeypatch.setattr(patching.TLoRAStack, "_merged_weight",
                        lambda self, module, *a: merged.add(names[id(module)]) or original(self, module, *a))
    tiny.sample(patched, "flux", steps=2)
    assert any(n.endswith("img_attn.qkv") for n in merged) and any(n.endswith("txt_attn.qkv") for n in merged)
    assert any(".single_blocks." in n for n, _ in model.model.named_modules())
    assert not any(n.endswith("linear1") for n in merged)


@pytest.mark.parametrize("timesteps", [(500.0, 500.0), (999.0, 12.0)], ids=["shared-rank", "per-row"])
@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
@pytest.mark.parametrize("kind", ["sd15", "flux"])
def test_frozen_activation_side_equals_the_two_branch_delta(tiny, helpers, patching, monkeypatch, kind, variant, timesteps):
    """A frozen adapter's activation-side delta (the masked plain LoRA, float32) against the
    two-branch delta that training differentiates, on the same call, layer by layer."""
    import comfy.utils

    model = tiny.build(kind)
    adapter = helpers.make_adapter(model, variant=variant, rank=8, min_rank=2)
    patched = apply(helpers, model, adapter, strength=0.6)
    stack = patching.get_stack(patched)
    stack.set_timesteps(torch.tensor(timesteps))
    monkeypatch.setattr(stack, "_can_merge", lambda module, x: False)
    g = torch.Generator().manual_seed(3)
    for name, target in list(stack.applied[0].targets.items())[:12]:
        module = comfy.utils.get_attr(patched.model, target.module)
        slots = ((0, name, target.rows),)
        x = torch.randn(2, 5, target.in_features, generator=g)
        with torch.no_grad():
            base = type(module).forward(module, x)
            frozen = stack.forward(module, slots, x) - base
        stack.training = True  # as on T-LoRA Train's clone: the exact two-branch delta, with autograd
        with torch.enable_grad():
            two_branch = stack.forward(module, slots, x) - base
        stack.training = False
        assert two_branch.requires_grad and not frozen.requires_grad  # each call took its own path
        scale = two_branch.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(frozen, two_branch.detach(), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
def test_min_rank_equal_rank_matches_stock_lora_loader_on_the_export(tiny, helpers, variant, tmp_path):
    import comfy.sd
    import comfy.utils

    from tlora_nodes.tlora_core import save_lora

    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, variant=variant, rank=8, min_rank=8)
    path = str(tmp_path / "plain.safetensors")
    save_lora(path, adapter, storage_dtype="fp32")
    stock, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(path), 0.7, 0.0)
    ours = apply(helpers, model, adapter, strength=0.7)
    got = tiny.sample(ours, "sd15", sampler="dpmpp_2m", steps=4)
    want = tiny.sample(stock, "sd15", sampler="dpmpp_2m", steps=4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_stock_lora_before_or_after_gives_the_same_sum(tiny, helpers, tmp_path):
    import comfy.sd
    import comfy.utils

    from tlora_nodes.tlora_core import save_lora

    model = tiny.build("sd15")
    ours = helpers.make_adapter(model, rank=8, min_rank=2, seed=1)
    other = helpers.make_adapter(model, variant="vanilla", rank=4, min_rank=4, seed=2)
    path = str(tmp_path / "other.safetensors")
    save_lora(path, other, storage_dtype="fp32")
    stock_sd = comfy.utils.load_torch_file(path)

    lora_first, _ = comfy.sd.load_lora_for_models(model, None, stock_sd, 1.0, 0.0)
    before = apply(helpers, lora_first, ours)
    after, _ = comfy.sd.load_lora_for_models(apply(helpers, model, ours), None, stock_sd, 1.0, 0.0)

    sigma = float(model.model.model_sampling.percent_to_sigma(0.3))
    rank = int(ours.schedule.rank_at(helpers.independent_timestep(model, sigma)))
    reference = helpers.merged_model(helpers.merged_model(model, other, 4), ours, rank)
    want = helpers.denoise_at(reference, "sd15", sigma)
    for stacked in (before, after):
        got = helpers.denoise_at(stacked, "sd15", sigma)
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4 * want.abs().max().item())


def test_hook_lora_on_one_conditioning_stays_on_that_conditioning(tiny, helpers):
    """Hook LoRAs rewrite the weights in place for each conditioning's call; the T-LoRA must add
    to whatever weight that call has. Reference: the same adapter at a fixed rank, as a hook on
    both conditionings (ComfyUI's own mechanism throughout)."""
    import comfy.hooks

    from tlora_nodes.tlora_core import export_lora

    model = tiny.build("sd15")
    ours = helpers.make_adapter(model, rank=8, min_rank=8, seed=1)  # one rank: a plain LoRA
    other = helpers.make_adapter(model, variant="vanilla", rank=4, min_rank=4, seed=2)
    other_hook = comfy.hooks.create_hook_lora(export_lora(other), 1.0, 1.0)
    ours_hook = comfy.hooks.create_hook_lora(export_lora(ours), 1.0, 1.0)
    pos, neg = tiny.conditioning("sd15")

    got = tiny.sample(apply(helpers, model, ours), "sd15", steps=3,
                      positive=comfy.hooks.set_hooks_for_conditioning(pos, other_hook), negative=neg)
    both = other_hook.clone_and_combine(ours_hook)
    want = tiny.sample(model, "sd15", steps=3, positive=comfy.hooks.set_hooks_for_conditioning(pos, both),
                       negative=comfy.hooks.set_hooks_for_conditioning(neg, ours_hook))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_merged_weights_only_when_they_fit_beside_the_calls_activations(tiny, helpers, monkeypatch):
    import comfy.model_management

    from tlora_nodes.nodes.patching import get_stack

    model = tiny.build("sd15")
    stack = get_stack(apply(helpers, model, helpers.make_adapter(model)))
    need = sum(m.weight.numel() * m.weight.element_size() for m in stack.modules)
    monkeypatch.setattr(comfy.model_management, "minimum_inference_memory", lambda: 100)
    gpu = torch.device("cuda", 0)  # a device object only: nothing is allocated
    for free, activations, fits in ((need + 100, 0, True), (need + 99, 0, False),
                                    (need + 5000, 5000, True), (need + 4999, 5000, False)):
        monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda device, f=free: f)
        stack.release_run()  # asked once per run
        stack.call_memory = activations
        assert stack._has_merge_room(gpu) is fits, (free - need, activations)
    assert stack._has_merge_room(torch.device("cpu"))


def test_two_tloras_stack(tiny, helpers, patching):
    model = tiny.build("sd15")
    a = helpers.make_adapter(model, rank=8, min_rank=2, seed=1)
    b = helpers.make_adapter(model, variant="vanilla", rank=6, min_rank=3, seed=2)
    both = apply(helpers, apply(helpers, model, a), b, strength=0.5)
    assert len(patching.get_stack(both).applied) == 2
    sigma = float(model.model.model_sampling.percent_to_sigma(0.6))
    t = helpers.independent_timestep(model, sigma)
    reference = helpers.merged_model(
        helpers.merged_model(model, a, int(a.schedule.rank_at(t))), b, int(b.schedule.rank_at(t)), strength=0.5
    )
    got, want = helpers.denoise_at(both, "sd15", sigma), helpers.denoise_at(reference, "sd15", sigma)
    torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4 * want.abs().max().item())


def test_strength_zero_returns_the_input_model(tiny, helpers):
    model = tiny.build("sd15")
    assert apply(helpers, model, helpers.make_adapter(model), strength=0.0) is model


def test_rerun_gives_identical_output_and_never_mutates_the_input(tiny, helpers, patching):
    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model)
    plain_before = tiny.sample(model, "sd15", steps=3)
    first = tiny.sample(apply(helpers, model, adapter), "sd15", steps=3)
    second_model = apply(helpers, model, adapter)
    second = tiny.sample(second_model, "sd15", steps=3)
    assert torch.equal(first, second)
    assert len(patching.get_stack(second_model).applied) == 1  # no stacking across runs
    assert model.object_patches == {} and patching.get_stack(model) is None
    assert torch.equal(tiny.sample(model, "sd15", steps=3), plain_before)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_cfg_one_and_split_cond_batches_use_each_calls_sigma(tiny, helpers, cfg):
    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=10, min_rank=2)
    patched = apply(helpers, model, adapter)
    log = helpers.CallLog(patched)
    positive, _ = tiny.conditioning("sd15", tokens=6)
    _, negative = tiny.conditioning("sd15", tokens=31)  # can't be batched with 6 tokens: separate calls
    tiny.sample(patched, "sd15", cfg=cfg, steps=4, positive=positive, negative=negative)
    assert len(log.calls) == (4 if cfg == 1.0 else 8)  # cfg 1 skips the uncond
    for sigmas, ranks in log.calls:
        assert len(sigmas) == 1
        assert ranks[0] == int(adapter.schedule.rank_at(helpers.independent_timestep(model, sigmas[0])))


def test_rows_at_different_sigmas_get_their_own_masks(tiny, helpers):
    import comfy.samplers

    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=10, min_rank=2)
    patched = apply(helpers, model, adapter)
    sigmas = [float(model.model.model_sampling.percent_to_sigma(p)) for p in (0.05, 0.9)]
    x = tiny.noise("sd15", batch=2)
    pos, _ = tiny.conditioning("sd15", batch=1)
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(pos, pos)
    guider.set_cfg(1.0)

    def call(model_patcher, xs, ss):
        # one model call with per-row sigmas, through ComfyUI's own cond batching
        class OneCall(comfy.samplers.Sampler):
            def sample(self, model_wrap, sigmas_, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
                return model_wrap(xs, torch.tensor(ss), **extra_args)

        g = comfy.samplers.CFGGuider(model_patcher)
        g.set_conds(pos, pos)
        g.set_cfg(1.0)
        return g.sample(xs, torch.zeros_like(xs), OneCall(), torch.tensor([1.0, 0.0]))

    both = call(patched, x, sigmas)
    for row, sigma in enumerate(sigmas):
        alone = call(apply(helpers, model, adapter), x[row : row + 1], [sigma])
        torch.testing.assert_close(both[row : row + 1], alone, rtol=1e-4, atol=1e-4 * alone.abs().max().item())
    stack_ranks = [int(adapter.schedule.rank_at(helpers.independent_timestep(model, s))) for s in sigmas]
    assert stack_ranks[0] != stack_ranks[1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_stays_within_tolerance(tiny, helpers, dtype):
    model32 = tiny.build("sd15")
    adapter = helpers.make_adapter(model32, rank=8, min_rank=2)
    model16 = tiny.build("sd15", dtype=dtype)
    sigma = float(model32.model.model_sampling.percent_to_sigma(0.4))
    rank = int(adapter.schedule.rank_at(helpers.independent_timestep(model32, sigma)))
    got = helpers.denoise_at(apply(helpers, model16, adapter), "sd15", sigma)
    want = helpers.denoise_at(helpers.merged_model(model32, adapter, rank), "sd15", sigma)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() < 0.05 * scale
    assert torch.isfinite(got).all()


def test_fp8_weights_give_the_fp8_model_plus_the_delta(tiny, helpers):
    fp8 = torch.float8_e4m3fn
    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=8, min_rank=2)
    # an fp8-stored model computing in fp32 (ComfyUI's manual cast), and its exact fp32 twin
    model8 = tiny.build("sd15")
    model8.model.manual_cast_dtype = torch.float32
    with torch.no_grad():
        for module in model8.model.diffusion_model.modules():
            if hasattr(module, "comfy_cast_weights") and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
                module.weight.data = module.weight.data.to(fp8)
                module.comfy_cast_weights = True
    twin = tiny.build("sd15")
    with torch.no_grad():
        for (n8, p8), (n, p) in zip(model8.model.named_parameters(), twin.model.named_parameters()):
            p.copy_(p8.float())
    sigma = float(model.model.model_sampling.percent_to_sigma(0.5))
    rank = int(adapter.schedule.rank_at(helpers.independent_timestep(model, sigma)))
    got = helpers.denoise_at(apply(helpers, model8, adapter), "sd15", sigma)
    want = helpers.denoise_at(helpers.merged_model(twin, adapter, rank), "sd15", sigma)
    torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4 * want.abs().max().item())


def test_scaled_fp8_weights_give_the_scaled_model_plus_the_delta(tiny, helpers):
    """ComfyUI's own loader reads a scaled-fp8 file (0.3.64: scaled-fp8 layers; 0.33: quantized
    mixed-precision layers); the T-LoRA adds to what that model computes the delta it adds to the
    dequantised float32 twin. (The two bases differ by the fp8 layers' own rounding order.)"""
    model, twin = tiny.build_scaled_fp8("sd15", scale=0.5)
    adapter = helpers.make_adapter(twin, rank=8, min_rank=2)
    sigma = float(twin.model.model_sampling.percent_to_sigma(0.5))
    rank = int(adapter.schedule.rank_at(helpers.independent_timestep(twin, sigma)))
    got = helpers.denoise_at(apply(helpers, model, adapter), "sd15", sigma) - helpers.denoise_at(model, "sd15", sigma)
    plain = helpers.denoise_at(twin, "sd15", sigma)
    want = helpers.denoise_at(helpers.merged_model(twin, adapter, rank), "sd15", sigma) - plain
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * want.abs().max().item())


def test_lowvram_partial_loading_gives_the_full_load_output(tiny, helpers, monkeypatch):
    import comfy.model_management as mm

    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=8, min_rank=2)
    full = tiny.sample(apply(helpers, model, adapter), "sd15", steps=3)
    mm.unload_all_models()
    # pretend the CPU is a device with no VRAM: ComfyUI then casts every weight per forward
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    patched = apply(helpers, model, adapter)
    low = tiny.sample(patched, "sd15", steps=3)
    assert model.model.model_lowvram
    torch.testing.assert_close(low, full, rtol=1e-5, atol=1e-5 * full.abs().max().item())
    mm.unload_all_models()


def test_torch_compile_does_not_recompile_per_step(tiny, helpers):
    import torch._dynamo

    import comfy.sample
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model, rank=8, min_rank=2)
    patched = apply(helpers, model, adapter)
    set_torch_compile_wrapper(patched, backend="eager")
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    graphs_after_step = []
    positive, negative = tiny.conditioning("sd15")
    comfy.sample.sample(
        patched, tiny.noise("sd15"), 6, 3.0, "euler", "normal", positive, negative, torch.zeros(1, 4, 8, 8),
        disable_pbar=True, callback=lambda *args: graphs_after_step.append(counters["stats"]["unique_graphs"]),
    )
    log_ranks = {int(adapter.schedule.rank_at(t)) for t in (999, 500, 0)}
    assert len(log_ranks) > 1
    assert graphs_after_step[1] > 0
    assert graphs_after_step[1:] == [graphs_after_step[1]] * 5  # steps 3-6 run at new ranks, compile nothing
    torch._dynamo.reset()


# -- bad input -------------------------------------------------------------------------------------
def test_tlora_for_another_family_names_both(tiny, helpers):
    sdxl = tiny.build("sdxl")
    adapter = helpers.make_adapter(sdxl)
    with pytest.raises(ValueError, match="Timestep-Aware Apply: this T-LoRA was trained for SDXL, but the MODEL is SD1.5"):
        apply(helpers, tiny.build("sd15"), adapter)


def test_tlora_for_other_layer_shapes_is_refused(tiny, helpers):
    sd15 = tiny.build("sd15")
    adapter = helpers.make_adapter(tiny.build("sd2"), family="sd15")  # SD2 context width, labelled SD1.5
    with pytest.raises(ValueError, match=r"made for other layer shapes.*T-LoRA 1024->320, model 768->320"):
        apply(helpers, sd15, adapter)


def test_lcm_sampling_maps_its_50_step_table_back_to_the_1000_training_timesteps(tiny, helpers):
    """LCM's model sampling keeps every 20th training sigma (t = 19, 39, ..., 999); its own
    timestep() maps back to those t. Independently: the closest of those training sigmas."""
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    model = tiny.build("sd15")
    full = torch.log(model.model.model_sampling.sigmas.double())
    kept = torch.arange(19, 1000, 20)
    lcm = ModelSamplingDiscrete().patch(model, "lcm", False)[0]
    adapter = helpers.make_adapter(model, rank=16, min_rank=3)
    patched = apply(helpers, lcm, adapter)
    log = helpers.CallLog(patched)
    tiny.sample(patched, "sd15", sampler="lcm", scheduler="sgm_uniform", steps=6)
    assert len(log.calls) == 6
    for sigmas, ranks in log.calls:
        for sigma, rank in zip(sigmas, ranks):
            t = int(kept[(full[kept] - math.log(sigma)).abs().argmin()])
            assert rank == int(adapter.schedule.rank_at(t)), (sigma, t, rank)
    assert min(r for _, ranks in log.calls for r in ranks) <= 5  # high noise really gets a low rank


def test_continuous_edm_models_are_refused_when_applied_and_when_switched_later(tiny, helpers):
    from comfy_extras.nodes_model_advanced import ModelSamplingContinuousEDM

    model = tiny.build("sdxl")
    adapter = helpers.make_adapter(model)
    edm = ModelSamplingContinuousEDM().patch(model, "edm", 120.0, 0.002)[0]
    with pytest.raises(ValueError, match="Timestep-Aware Apply: this MODEL samples with ModelSamplingContinuousEDM. T-LoRA's schedule needs"):
        apply(helpers, edm, adapter)
    switched = ModelSamplingContinuousEDM().patch(apply(helpers, model, adapter), "edm", 120.0, 0.002)[0]
    with pytest.raises(ValueError, match="a node after Timestep-Aware Apply switched the model to ModelSamplingContinuousEDM"):
        tiny.sample(switched, "sdxl", steps=2)


def test_unsupported_model_is_refused_with_the_list(tiny, helpers):
    model = tiny.build("sd15")
    adapter = helpers.make_adapter(model)
    model.model.model_config = type("StableCascade_C", (), {"unet_config": {}})()
    with pytest.raises(ValueError, match="T-LoRA can't adapt a StableCascade_C model: .*\\(SD1.5, SD2, SDXL, .*FLUX.1, SD3"):
        apply(helpers, model, adapter)
