"""Video families (Wan 2.1 / 2.2, HunyuanVideo 1.5, LTX-Video) with tiny models of ComfyUI's own
classes, their shift nodes and real samplers: the rank of every model call, train -> file -> load
-> apply on one-frame and multi-frame latents, per-frame subject masks, image-to-video
conditioning from ComfyUI's own nodes, and the two experts of Wan 2.2 A14B. Classes ComfyUI 0.3.64
lacks (HunyuanVideo 1.5) are skipped there."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfyui

VIDEO = ["wan21", "wan21_i2v", "wan22_5b", "hunyuan_video15", "ltxv"]
# Wan 2.2 A14B's I2V experts: WAN21_T2V with 36 input channels (16 latent + 4 mask + 16 start image)
A14B_I2V = dict(model_type="t2v", in_dim=36)


def model_of(tiny, kind: str, seed: int = 0, shift: bool = True, **config):
    if not tiny.available(kind):
        pytest.skip(f"this ComfyUI has no {tiny.ALL_FAMILIES[kind][0]} model class")
    if config:  # another checkpoint of the same class (e.g. an A14B I2V expert)
        class_name, unet_config, latent = tiny.ALL_FAMILIES[kind]
        tiny.ALL_FAMILIES[kind] = (class_name, dict(unet_config, **config), latent)
        try:
            model = tiny.build(kind, seed=seed)
        finally:
            tiny.ALL_FAMILIES[kind] = (class_name, unet_config, latent)
    else:
        model = tiny.build(kind, seed=seed)
    return tiny.with_shift(model, kind) if shift else model


def latents_of(tiny, kind: str, frames: int | None = None, seed: int = 5, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *tiny.latent_shape(kind, frames), generator=torch.Generator().manual_seed(seed))


def train(helpers, tiny, model, kind, frames=None, latents=None, positive=None, mask=None, **overrides):
    from tlora_nodes.nodes.train import TLoRATrain

    samples = latents if latents is not None else {"samples": latents_of(tiny, kind, frames)}
    inputs = dict(
        model=model, latents=samples, positive=positive if positive is not None else tiny.conditioning(kind, frames=frames)[0],
        steps=2, learning_rate=0.02, rank=4, min_rank=2, schedule_power=1.0, variant="T-LoRA", init="principal",
        batch_size=1, seed=0, save_every=0, filename_prefix=f"tlora/{kind}", resume_from="none", training_dtype="fp32",
        gradient_checkpointing=True,
    )
    inputs.update(overrides)
    if mask is not None:
        inputs["mask"] = mask
    return helpers.run_node(TLoRATrain, hidden={}, **inputs)


def apply(helpers, model, adapter, strength=1.0):
    from tlora_nodes.nodes.apply import TimestepAwareApply

    return helpers.run_node(TimestepAwareApply, model=model, tlora=adapter, strength_model=strength)[0]


def load(helpers, name: str):
    from tlora_nodes.nodes.load import TLoRALoad

    return helpers.run_node(TLoRALoad, lora_name=name, min_rank=0, schedule_power=0.0)[0]


class Inputs:
    """What the diffusion model receives (x, timestep, extra conds) and returns, per call."""

    def __init__(self, model):
        self.calls: list[dict] = []
        net = model.model.diffusion_model

        def hook(module, args, kwargs, output):
            x, timestep = args[0], args[1]
            self.calls.append({"x": x.detach().clone(), "timestep": timestep.detach().clone(),
                               "clip_fea": kwargs.get("clip_fea"), "out": output.detach().clone()})

        self.handle = net.register_forward_hook(hook, with_kwargs=True)

    def remove(self):
        self.handle.remove()


@pytest.fixture
def no_adapter_init(monkeypatch):
    """Fails a test that initialises an adapter: bad input must be refused before any work."""
    from tlora_nodes.tlora_core import TLoRA

    monkeypatch.setattr(TLoRA, "create", lambda *a, **k: pytest.fail("initialised an adapter for a run that can't work"))


# -- the table -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", VIDEO)
def test_video_families_have_their_rule_frame_stride_and_flow_t(tiny, helpers, kind):
    from tlora_nodes.nodes import model_kinds

    model = model_of(tiny, kind)
    entry = model_kinds.kind_of(model, "test")
    assert entry.family == kind and entry.video
    assert entry.rules == (("double-stream", "single-stream") if kind == "hunyuan_video15" else ("cross-attention DiT",))
    latent_format = model.get_model_object("latent_format")
    assert getattr(latent_format, "latent_dimensions", None) == 3
    stride = getattr(latent_format, "temporal_downscale_ratio", None)  # ComfyUI 0.3.64's formats don't state it
    assert stride in (None, entry.frame_stride)
    sampling = model.get_model_object("model_sampling")
    sigma = torch.tensor([0.8125])
    assert model_kinds.sigma_to_timestep(sampling, sigma).tolist() == [812.5]  # t = 1000·sigma after the shift node
    layers = {t.path.split(".", 2)[-1] for t in model_kinds.find_targets(model, "test").values()}
    expected = {
        "wan21": {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                  "cross_attn.v", "cross_attn.o"},
        "ltxv": {f"attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")},
        "hunyuan_video15": {"img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "linear1"},
    }
    expected["wan22_5b"] = expected["wan21"]
    expected["wan21_i2v"] = expected["wan21"] | {"cross_attn.k_img", "cross_attn.v_img"}
    assert layers == expected[kind]


def test_wan22_a14b_experts_split_where_wan_22_hands_over(tiny):
    from tlora_nodes.nodes import model_kinds

    t2v, i2v = model_of(tiny, "wan21"), model_of(tiny, "wan21", **A14B_I2V)
    assert model_kinds.expert_range(t2v, "high-noise", "t") == (875, 1000)  # Wan 2.2's boundary 0.875 (T2V)
    assert model_kinds.expert_range(t2v, "low-noise", "t") == (0, 875)
    assert model_kinds.expert_range(i2v, "high-noise", "t") == (900, 1000)  # 0.900 (I2V)
    assert model_kinds.expert_range(t2v, "none", "t") is None
    assert model_kinds.kind_of(i2v, "t").family == "wan21"


# -- sampling: the rank of every model call ------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 3])
@pytest.mark.parametrize("kind", VIDEO)
def test_every_model_call_uses_the_rank_of_its_own_sigma(tiny, helpers, kind, frames):
    model = model_of(tiny, kind)
    adapter = helpers.make_adapter(model, rank=8, min_rank=2)
    patched = apply(helpers, model, adapter)
    log = helpers.CallLog(patched)
    out = tiny.sample(patched, kind, sampler="heun", scheduler="simple", steps=3, cfg=2.0, frames=frames)
    assert out.shape == (1, *tiny.latent_shape(kind, frames)) and bool(torch.isfinite(out).all())
    assert log.calls
    seen = set()
    for sigmas, ranks in log.calls:
        expected = [int(adapter.schedule.rank_at(helpers.independent_timestep(model, s))) for s in sigmas]
        assert ranks == expected, (sigmas, ranks, expected)
        seen.update(ranks)
    assert len(seen) > 1


# -- training: train -> file -> load -> apply ---------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 3])
@pytest.mark.parametrize("kind", VIDEO)
def test_trained_model_equals_load_then_apply_of_its_file(tiny, helpers, loras_dir, kind, frames):
    model = model_of(tiny, kind)
    trained, adapter, loss = train(helpers, tiny, model, kind, frames)
    assert len(loss["loss"]) == 2 and all(torch.isfinite(torch.tensor(loss["loss"])))
    assert adapter.config.model_family == kind and adapter.config.timestep_range is None
    loaded = load(helpers, f"tlora/{kind}_00001_.safetensors")
    assert loaded.config == adapter.config
    got = tiny.sample(trained, kind, steps=2, scheduler="simple", frames=frames)
    want = tiny.sample(apply(helpers, model, loaded), kind, steps=2, scheduler="simple", frames=frames)
    assert torch.equal(got, want)
    assert not torch.equal(got, tiny.sample(model, kind, steps=2, scheduler="simple", frames=frames))
