"""The adapter's maths against independent computations (SPEC §3)."""

from __future__ import annotations

import pytest
import torch

from tlora_nodes.tlora_core import RankSchedule, TLoRA, TLoRAConfig, TLoRALayer

SHAPES = {"a.to_q": (48, 40), "a.to_k": (24, 40), "b.to_out.0": (40, 16)}  # name -> (in, out)


def make(variant="tlora", rank=20, min_rank=4, init="last", seed=0):
    return TLoRA.create(TLoRAConfig(variant=variant, rank=rank, min_rank=min_rank, init=init), SHAPES, seed=seed)


def perturb(adapter: TLoRA, seed: int = 1, scale: float = 0.05) -> TLoRA:
    """Move trainable parameters away from init, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return adapter


def direct_delta(layer: TLoRALayer, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """SPEC §3 written out term by term, independent of the factored implementation."""
    m = m[..., : layer.rank]
    if m.dim() == 2:
        m = m.view(m.shape[0], *([1] * (x.dim() - 2)), m.shape[1])
    x = x.double()
    if layer.variant == "vanilla":
        return ((x @ layer.down.double().T) * m.double()) @ layer.up.double().T
    trained = ((x @ layer.q.double().T) * layer.lam.double() * m.double()) @ layer.p.double().T
    frozen = ((x @ layer.q0.double().T) * layer.lam0.double() * m.double()) @ layer.p0.double().T
    return trained - frozen


def all_masks(rank):
    return [torch.cat([torch.ones(r), torch.zeros(rank - r)]) for r in range(rank + 1)]


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
@pytest.mark.parametrize("init", ["last", "principal", "middle"])
def test_delta_is_exactly_zero_at_init_for_every_mask(variant, init):
    adapter = make(variant, init=init)
    x = torch.randn(2, 5, 48)
    for name, layer in adapter.items():
        x = torch.randn(2, 5, layer.in_features)
        for mask in all_masks(adapter.config.rank):
            assert torch.equal(layer.delta(x, mask), torch.zeros(2, 5, layer.out_features))
            assert torch.equal(layer.delta_weight(mask), torch.zeros(layer.out_features, layer.in_features))


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
def test_delta_matches_the_spec_formula(variant):
    adapter = perturb(make(variant))
    schedule = adapter.schedule
    for name, layer in adapter.items():
        x = torch.randn(3, 7, layer.in_features)
        for t in (0, 300, 999):
            mask = schedule.mask_at(t)
            torch.testing.assert_close(layer.delta(x, mask).double(), direct_delta(layer, x, mask), rtol=1e-5, atol=1e-6)


def _trainable(layer: TLoRALayer) -> list[torch.nn.Parameter]:
    return [layer.down, layer.up] if layer.variant == "vanilla" else [layer.q, layer.p, layer.lam]


def _gradients(layer: TLoRALayer, x: torch.Tensor, mask: torch.Tensor, upstream: torch.Tensor, fn) -> list:
    for param in _trainable(layer):
        param.grad = None
    x = x.detach().clone().requires_grad_(x.requires_grad)
    (fn(layer, x, mask).double() * upstream).sum().backward()
    return [x.grad] + [param.grad.clone() for param in _trainable(layer)]


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("x_shape", [(3, 40), (3, 7, 40), (3, 2, 5, 40)])
def test_gradients_match_autograd_of_the_spec_formula(variant, per_row, x_shape):
    """The delta's hand-written backward against autograd through SPEC §3 written out in float64:
    gradients for x and every trainable factor, none for the frozen ones, with shared and
    per-row masks and activations of any rank."""
    layer = perturb(make(variant)).layer("b.to_out.0")  # 40 -> 16, rank 16
    schedule = make(variant).schedule
    mask = schedule.mask_at(torch.tensor([10, 990, 500])) if per_row else schedule.mask_at(400)
    g = torch.Generator().manual_seed(len(x_shape) * 4 + 2 * per_row + (variant == "tlora"))
    x = torch.randn(x_shape, generator=g).requires_grad_()
    upstream = torch.randn(*x_shape[:-1], 16, dtype=torch.float64, generator=g)
    ours = _gradients(layer, x, mask, upstream, lambda lay, x, m: lay.delta(x, m))
    spec = _gradients(layer, x, mask, upstream, direct_delta)
    for got, want in zip(ours, spec):
        # ours runs in float32: each entry sums tens of products, each rounded by 2^-24 of the
        # largest terms, so the bound is relative to the gradient's scale, not absolute
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-6 * max(1.0, want.abs().max().item()))
    if variant == "tlora":
        assert layer.q0.grad is None and layer.p0.grad is None and layer.lam0.grad is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradients_reach_half_precision_activations_in_their_dtype(dtype):
    layer = perturb(make("tlora")).layer("a.to_q")
    x = torch.randn(2, 5, 48).to(dtype).requires_grad_()
    layer.delta(x, torch.ones(20)).sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype
    assert layer.q.grad is not None and layer.q.grad.dtype == torch.float32


def test_no_input_gradient_is_computed_when_x_needs_none():
    layer = perturb(make("tlora")).layer("a.to_q")
    x = torch.randn(2, 5, 48)
    layer.delta(x, torch.ones(20)).sum().backward()
    assert x.grad is None and layer.q.grad is not None and layer.lam.grad is not None


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
def test_masked_forward_matches_merged_weight_fp32(variant):
    adapter = perturb(make(variant))
    for name, layer in adapter.items():
        x = torch.randn(4, 9, layer.in_features)
        for mask in all_masks(adapter.config.rank):
            merged = x @ layer.delta_weight(mask).T
            torch.testing.assert_close(layer.delta(x, mask), merged, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_forward_matches_merged_weight_half(variant, dtype):
    adapter = perturb(make(variant))
    for name, layer in adapter.items():
        x = torch.randn(4, 9, layer.in_features).to(dtype)
        mask = adapter.schedule.mask_at(400)
        out = layer.delta(x, mask)
        assert out.dtype == dtype
        merged = (x.float() @ layer.delta_weight(mask).T).to(dtype)
        torch.testing.assert_close(out, merged, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
def test_per_row_masks_equal_separate_calls(variant):
    adapter = perturb(make(variant))
    schedule = adapter.schedule
    timesteps = torch.tensor([10, 990, 500])
    masks = schedule.mask_at(timesteps)
    for name, layer in adapter.items():
        x = torch.randn(3, 6, layer.in_features)
        batched = layer.delta(x, masks)
        for row in range(3):
            torch.testing.assert_close(batched[row : row + 1], layer.delta(x[row : row + 1], masks[row]))


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
def test_raising_rank_only_adds_components(variant):
    adapter = perturb(make(variant))
    R = adapter.config.rank
    for name, layer in adapter.items():
        previous = torch.zeros(layer.out_features, layer.in_features)
        for r in range(1, R + 1):
            current = layer.delta_weight(all_masks(R)[r])
            # the difference is exactly the r-th component (rank <= 1 for Vanilla, <= 2 for Ortho)
            diff = (current - previous).double()
            if r > layer.rank:
                assert torch.equal(current, previous)
            else:
                k = r - 1
                if variant == "vanilla":
                    comp = torch.outer(layer.up[:, k], layer.down[k]).double()
                else:
                    comp = (
                        torch.outer(layer.p[:, k] * layer.lam[k], layer.q[k])
                        - torch.outer(layer.p0[:, k] * layer.lam0[k], layer.q0[k])
                    ).double()
                torch.testing.assert_close(diff, comp, rtol=1e-4, atol=1e-6)
            previous = current


@pytest.mark.parametrize("variant", ["tlora", "vanilla"])
def test_plain_factors_sliced_at_a_rank_give_the_masked_delta_weight(variant):
    """The merged sampling path and the export use the adapter as a plain LoRA whose first
    components(r) columns are rank r's: that slice must be the masked delta."""
    adapter = perturb(make(variant))
    for name, layer in adapter.items():
        down, up = layer.plain_factors()
        for r in (0, 1, 7, 16, 20):
            k = layer.components(r)
            assert k == (2 * min(r, layer.rank) if variant == "tlora" else min(r, layer.rank))
            torch.testing.assert_close(up[:, :k] @ down[:k], layer.delta_weight(all_masks(20)[r]), rtol=1e-5, atol=1e-6)
    fresh = make(variant)
    for name, layer in fresh.items():
        down, up = layer.plain_factors()
        if variant == "vanilla":  # up starts at zero
            assert torch.equal(up @ down, torch.zeros(layer.out_features, layer.in_features))
        else:  # trained and frozen branches alternate with opposite signs
            torch.testing.assert_close(up @ down, torch.zeros(layer.out_features, layer.in_features), rtol=0, atol=1e-6)


@pytest.mark.parametrize("init", ["last", "principal", "middle"])
def test_ortho_init_has_orthonormal_factors_and_spec_singular_values(init):
    fan_in, fan_out, rank, seed = 48, 40, 20, 3
    adapter = TLoRA.create(TLoRAConfig(rank=rank, min_rank=2, init=init), {"l": (fan_in, fan_out)}, seed=seed)
    layer = adapter.layer("l")
    eye = torch.eye(rank)
    torch.testing.assert_close(layer.q @ layer.q.T, eye, atol=1e-5, rtol=0)  # orthonormal rows
    torch.testing.assert_close(layer.p.T @ layer.p, eye, atol=1e-5, rtol=0)  # orthonormal columns
    # λ are the chosen singular values of the matrix drawn from the same seed: M ~ N(0, 1/R), (in, out)
    drawn = torch.randn(fan_in, fan_out, generator=torch.Generator().manual_seed(seed)) / rank
    singular = torch.linalg.svdvals(drawn)
    start = {"principal": 0, "last": singular.numel() - rank, "middle": -(-(singular.numel() - rank) // 2)}[init]
    torch.testing.assert_close(layer.lam, singular[start : start + rank], rtol=1e-5, atol=1e-6)
    for name in ("q", "p", "lam"):
        assert torch.equal(getattr(layer, name), getattr(layer, name + "0"))
    assert not layer.q0.requires_grad and layer.q.requires_grad


@pytest.mark.parametrize("fan_in,fan_out", [(30, 20), (20, 30), (24, 24)])
def test_ortho_init_takes_rows_of_u_like_the_reference(fan_in, fan_out):
    rank, seed = 6, 11
    layer = TLoRA.create(TLoRAConfig(rank=rank, min_rank=1, init="last"), {"l": (fan_in, fan_out)}, seed=seed).layer("l")
    drawn = torch.randn(fan_in, fan_out, generator=torch.Generator().manual_seed(seed)) / rank
    u, s, vh = torch.linalg.svd(drawn)
    torch.testing.assert_close(layer.q, u[-rank:])
    torch.testing.assert_close(layer.p, vh[:, -rank:])


def test_per_layer_rank_is_min_of_rank_in_out():
    adapter = make(rank=20)
    assert {n: layer.rank for n, layer in adapter.items()} == {"a.to_q": 20, "a.to_k": 20, "b.to_out.0": 16}
    # the narrow layer uses the first 16 entries of the 20-wide mask
    layer = perturb(adapter).layer("b.to_out.0")
    x = torch.randn(2, layer.in_features)
    torch.testing.assert_close(layer.delta(x, torch.ones(20)), layer.delta(x, torch.ones(16)))


def test_same_seed_gives_same_adapter_and_another_seed_does_not():
    a, b, c = make(seed=5), make(seed=5), make(seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.layer("a.to_q").q, c.layer("a.to_q").q)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(variant="lora"), "unknown variant 'lora'"),
        (dict(init="random"), "unknown init 'random'"),
        (dict(rank=16, min_rank=32), "min_rank (32) must be <= rank (16)"),
    ],
)
def test_config_rejects_bad_values_with_the_fix(kwargs, fragment):
    with pytest.raises(ValueError, match="T-LoRA: ") as err:
        TLoRAConfig(**kwargs)
    assert fragment in str(err.value)


def test_layer_rejects_rank_larger_than_the_layer_allows():
    with pytest.raises(ValueError, match=r"layer rank \(32\) exceeds what a 16x40 layer allows \(16\)"):
        TLoRALayer(40, 16, 32, "tlora")


def test_wrong_input_width_raises():
    layer = make().layer("a.to_q")
    with pytest.raises(RuntimeError):
        layer.delta(torch.randn(2, 3, 47), torch.ones(20))


def test_per_row_masks_must_match_batch():
    layer = make().layer("a.to_q")
    with pytest.raises(ValueError, match="2 per-row masks for a batch of 3 rows"):
        layer.delta(torch.randn(3, 4, 48), torch.ones(2, 20))


def test_with_config_shares_layers_and_changes_schedule():
    adapter = make(rank=20, min_rank=4)
    other = adapter.with_config(min_rank=10)
    assert other.schedule == RankSchedule(20, 10)
    assert other.layer("a.to_q") is adapter.layer("a.to_q")
