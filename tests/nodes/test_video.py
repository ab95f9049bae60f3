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
    return helpers.run_node(TLoRATrain, hidden={}, **inputs)[:3]  # model, tlora, loss (not the previews)


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
    seen = log.assert_each_call_used_its_sigmas_rank(model, adapter.schedule)
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


# -- image-to-video: the start image from ComfyUI's own nodes ----------------------------------------
def start_image(frames: int = 1, size: int = 64, seed: int = 3) -> torch.Tensor:
    """An IMAGE batch (frames, H, W, 3) in [0, 1]."""
    return torch.rand(frames, size, size, 3, generator=torch.Generator().manual_seed(seed))


def wan_i2v(helpers, tiny, kind: str, frames: int, clip_vision: bool = True, length: int | None = None):
    """positive / negative made by ComfyUI's WanImageToVideo from a start image (and a
    CLIPVisionEncode output for Wan 2.1 i2v), for a clip of ``frames`` latent frames."""
    import comfy.clip_vision
    from comfy_extras.nodes_wan import WanImageToVideo

    pos, neg = tiny.conditioning("wan21", frames=frames)  # text only: Wan's umT5 context
    inputs = dict(positive=pos, negative=neg, vae=tiny.StandInVAE(16), width=64, height=64,
                  length=length or 4 * (frames - 1) + 1, batch_size=1, start_image=start_image())
    if clip_vision:
        vision = comfy.clip_vision.Output()
        vision["penultimate_hidden_states"] = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(9))
        inputs["clip_vision_output"] = vision
    positive, negative, _ = helpers.run_node(WanImageToVideo, **inputs)
    return positive, negative


@pytest.mark.parametrize("frames", [1, 3])
def test_wan_i2v_trains_on_the_start_image_and_clip_vision_from_wan_image_to_video(tiny, helpers, loras_dir, frames):
    model = model_of(tiny, "wan21_i2v")
    positive, negative = wan_i2v(helpers, tiny, "wan21_i2v", frames)
    inputs = Inputs(model)
    try:
        trained, adapter, _ = train(helpers, tiny, model, "wan21_i2v", frames, positive=positive)
    finally:
        inputs.remove()
    # the model saw the start image (mask 4 + image 16 channels beside the 16 of x) and its CLIP-vision tokens
    concat = positive[0][1]["concat_latent_image"]
    image = model.get_model_object("latent_format").process_in(concat)
    for call in inputs.calls:
        assert call["x"].shape[1] == 36 and call["clip_fea"] is not None
        assert torch.allclose(call["x"][:, 20:], image, atol=1e-6)
        assert torch.equal(call["x"][:, 16:20, :1], torch.ones_like(call["x"][:, 16:20, :1]))  # the given frame
    loaded = load(helpers, "tlora/wan21_i2v_00001_.safetensors")
    kwargs = dict(steps=2, scheduler="simple", frames=frames, positive=positive, negative=negative)
    got = tiny.sample(trained, "wan21_i2v", **kwargs)
    assert torch.equal(got, tiny.sample(apply(helpers, model, loaded), "wan21_i2v", **kwargs))
    assert not torch.equal(got, tiny.sample(model, "wan21_i2v", **kwargs))


def test_hunyuan_video15_i2v_trains_on_the_start_image_from_its_own_node(tiny, helpers, loras_dir):
    nodes_hunyuan = pytest.importorskip("comfy_extras.nodes_hunyuan")
    model = model_of(tiny, "hunyuan_video15")  # skips where the class is missing (0.3.64)
    import comfy.clip_vision

    pos, neg = tiny.conditioning("hunyuan_video15")
    drop = ("concat_latent_image", "concat_mask", "clip_vision_output")  # what the i2v node adds
    pos, neg = ([[c[0][0], {k: v for k, v in c[0][1].items() if k not in drop}]] for c in (pos, neg))
    vision = comfy.clip_vision.Output()
    vision["last_hidden_state"] = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(9))
    positive, negative, _ = helpers.run_node(
        nodes_hunyuan.HunyuanVideo15ImageToVideo, positive=pos, negative=neg, vae=tiny.StandInVAE(32, down=16),
        width=128, height=128, length=9, batch_size=1, start_image=start_image(size=128), clip_vision_output=vision)
    inputs = Inputs(model)
    try:
        trained, _, _ = train(helpers, tiny, model, "hunyuan_video15", 3, positive=positive)
    finally:
        inputs.remove()
    image = model.get_model_object("latent_format").process_in(positive[0][1]["concat_latent_image"])
    for call in inputs.calls:  # 32 of x, then the start image's 32 and its mask
        assert call["x"].shape[1] == 65 and torch.allclose(call["x"][:, 32:64], image, atol=1e-5)
    loaded = load(helpers, "tlora/hunyuan_video15_00001_.safetensors")
    kwargs = dict(steps=2, scheduler="simple", positive=positive, negative=negative)
    got = tiny.sample(trained, "hunyuan_video15", **kwargs)
    assert torch.equal(got, tiny.sample(apply(helpers, model, loaded), "hunyuan_video15", **kwargs))


def test_wan22_5b_i2v_latent_keeps_its_start_frame_clean_at_timestep_0_and_out_of_the_loss(tiny, helpers, loras_dir):
    """Wan22ImageToVideoLatent marks the start frame given (noise_mask 0): the model gets it clean
    with timestep 0 there, as ComfyUI's sampler gives it, and learns only the other frames."""
    from comfy_extras.nodes_wan import Wan22ImageToVideoLatent

    model = model_of(tiny, "wan22_5b")
    made = helpers.run_node(Wan22ImageToVideoLatent, vae=tiny.StandInVAE(48, down=16), width=128, height=128,
                            length=9, batch_size=1, start_image=start_image(size=128))[0]
    clip = latents_of(tiny, "wan22_5b", 3)
    clip[:, :, :1] = made["samples"][:, :, :1]  # the clip starts with the image
    latents = {"samples": clip, "noise_mask": made["noise_mask"]}
    inputs = Inputs(model)
    try:
        trained, adapter, loss = train(helpers, tiny, model, "wan22_5b", latents=latents, steps=3)
    finally:
        inputs.remove()
    x0 = model.get_model_object("latent_format").process_in(clip)
    assert inputs.calls
    for call in inputs.calls:
        assert call["timestep"].shape == (1, 3) and float(call["timestep"][0, 0]) == 0.0
        assert bool((call["timestep"][0, 1:] > 0).all())
        assert torch.allclose(call["x"][:, :, :1], x0[:, :, :1], atol=1e-6)  # clean, as sampled
    # the loss only reads the frames to make: another start frame output changes nothing
    from tlora_nodes.nodes import video

    given = made["noise_mask"].expand(1, 48, 3, 8, 8)
    w = video.loss_weights(None, given, 5)
    error = torch.rand(1, 48, 3, 8, 8)
    other = error.clone()
    other[:, :, 0] += 5.0
    assert torch.equal((error * w).sum() / w.sum(), (other * w).sum() / w.sum())
    assert torch.isclose((error * w).sum() / w.sum(), error[:, :, 1:].mean())


def test_ltxv_i2v_inplace_latent_trains_with_its_first_frame_given(tiny, helpers, loras_dir):
    """LTXVImgToVideoInplace writes the start image into the encoded clip and marks it given: the
    model gets the clean start frame with timestep 0 on its tokens, as when sampling."""
    nodes_lt = pytest.importorskip("comfy_extras.nodes_lt")
    if not hasattr(nodes_lt, "LTXVImgToVideoInplace"):
        pytest.skip("this ComfyUI has no LTXVImgToVideoInplace node")
    model = model_of(tiny, "ltxv")
    clip = {"samples": latents_of(tiny, "ltxv", 3)}
    made = helpers.run_node(nodes_lt.LTXVImgToVideoInplace, vae=tiny.StandInVAE(128, down=32, stride=8),
                            image=start_image(size=128), latent=clip, strength=1.0)[0]
    inputs = Inputs(model)
    try:
        trained, _, loss = train(helpers, tiny, model, "ltxv", latents=made, steps=2)
    finally:
        inputs.remove()
    x0 = model.get_model_object("latent_format").process_in(made["samples"])
    assert inputs.calls and all(torch.isfinite(torch.tensor(loss["loss"])))
    for call in inputs.calls:
        assert float(call["timestep"].min()) == 0.0 and float(call["timestep"].max()) > 0.0
        assert torch.allclose(call["x"][:, :, :1], x0[:, :, :1], atol=1e-6)
        assert not torch.allclose(call["x"][:, :, 1:], x0[:, :, 1:], atol=1e-3)
    loaded = load(helpers, "tlora/ltxv_00001_.safetensors")
    got = tiny.sample(trained, "ltxv", steps=2, scheduler="simple")
    assert torch.equal(got, tiny.sample(apply(helpers, model, loaded), "ltxv", steps=2, scheduler="simple"))


# -- subject masks per frame -------------------------------------------------------------------------
def test_a_mask_per_video_frame_weighs_each_latent_frame_by_its_own_video_frames():
    from tlora_nodes.nodes import video

    latents = torch.zeros(1, 16, 3, 4, 4)  # 3 latent frames = 9 video frames: 0 | 1-4 | 5-8
    mask = torch.zeros(9, 32, 32)
    mask[3, :8, :8] = 1.0  # the subject in video frame 3 only: latent frame 1, its top-left latent pixel
    mask[0, 24:, 24:] = 1.0  # and in frame 0, bottom-right: latent frame 0
    weights = video.subject_weights(mask, latents, 8, 4, "T-LoRA Train")
    assert weights.shape == (1, 1, 3, 4, 4)
    want = torch.zeros(1, 1, 3, 4, 4)
    want[0, 0, 1, 0, 0] = 1.0
    want[0, 0, 0, 3, 3] = 1.0
    assert torch.equal(video.subject_weights(mask, latents, 8, 4, "T-LoRA Train"), want)  # the subject left the frame
    with pytest.raises(ValueError, match="covers no pixel of its video in any frame"):
        video.subject_weights(torch.zeros(9, 32, 32), latents, 8, 4, "T-LoRA Train")
    mask[7, 8:16, :8] = 1.0  # frame 7: latent frame 2
    want[0, 0, 2, 1, 0] = 1.0
    assert torch.equal(video.subject_weights(mask, latents, 8, 4, "T-LoRA Train"), want)
    per_latent_frame = video.subject_weights(want[0, 0], latents, 8, 4, "T-LoRA Train")  # 3 masks at latent size
    assert torch.equal(per_latent_frame, want)
    one = video.subject_weights(torch.ones(1, 4, 4), latents, 8, 4, "T-LoRA Train")
    assert one.shape == (1, 1, 1, 4, 4)


@pytest.mark.parametrize("masks", [1, 3, 9])
def test_training_a_clip_with_a_subject_mask_per_frame_or_one_for_all(tiny, helpers, loras_dir, masks):
    model = model_of(tiny, "wan21")
    mask = torch.zeros(masks, 64, 64)
    mask[:, 16:48, 16:48] = 1.0
    trained, adapter, loss = train(helpers, tiny, model, "wan21", 3, mask=mask)
    assert all(torch.isfinite(torch.tensor(loss["loss"])))
    loaded = load(helpers, "tlora/wan21_00001_.safetensors")
    got = tiny.sample(trained, "wan21", steps=2, scheduler="simple", frames=3)
    assert torch.equal(got, tiny.sample(apply(helpers, model, loaded), "wan21", steps=2, scheduler="simple", frames=3))


# -- two experts (Wan 2.2 A14B) --------------------------------------------------------------------------
def test_an_expert_trains_on_its_timesteps_only_and_its_file_says_so(tiny, helpers, loras_dir, caplog):
    """The A14B I2V high-noise expert (WAN21_T2V with 36 input channels) with WanImageToVideo's
    start image: every training call at t >= 900, the file named and marked for that expert."""
    model = model_of(tiny, "wan21", **A14B_I2V)
    positive, negative = wan_i2v(helpers, tiny, "wan21", 3, clip_vision=False)
    inputs = Inputs(model)
    try:
        _, adapter, _ = train(helpers, tiny, model, "wan21", 3, positive=positive, expert="high-noise", steps=4)
    finally:
        inputs.remove()
    assert adapter.config.timestep_range == (900, 1000)
    timesteps = torch.cat([c["timestep"].reshape(-1) for c in inputs.calls])
    assert len(timesteps) == 4 and bool((timesteps >= 900).all()), timesteps
    with caplog.at_level("INFO"):
        loaded = load(helpers, "tlora/wan21_high_noise_00001_.safetensors")
    assert loaded.config.timestep_range == (900, 1000)
    assert "trained for the high-noise expert: t 900-999 (sigma 0.900-1.000) only" in caplog.text
    ranks = {int(adapter.schedule.rank_at(t)) for t in timesteps}
    assert ranks == {2}  # rank 4, min_rank 2: the high-noise expert runs at r_min


def test_sampling_refuses_the_t_lora_of_the_other_expert(tiny, helpers):
    """Both experts are WAN21_T2V: only the sampler's sigmas tell them apart. Sampling as
    ComfyUI's A14B template does (KSamplerAdvanced: the high-noise expert steps 0-2 of 4, the
    low-noise one steps 2-4), each expert's T-LoRA runs and the other's is refused before the
    first model call."""
    model = model_of(tiny, "wan21")  # Wan 2.2 A14B T2V: hand-over at t 875
    base = helpers.make_adapter(model, rank=4, min_rank=2)
    high = apply(helpers, model, base.with_config(timestep_range=(875, 1000)))
    low = apply(helpers, model, base.with_config(timestep_range=(0, 875)))
    runs = {"high-noise": dict(start_step=0, last_step=2), "low-noise": dict(start_step=2, last_step=4)}
    for expert, patched in (("high-noise", high), ("low-noise", low)):
        for run, steps in runs.items():
            if run == expert:
                out = tiny.sample(patched, "wan21", steps=4, scheduler="simple", **steps)
                assert bool(torch.isfinite(out).all())
                continue
            log = helpers.CallLog(patched)
            with pytest.raises(ValueError, match=f"trained on the {expert} expert.*other expert"):
                tiny.sample(patched, "wan21", steps=4, scheduler="simple", **steps)
            assert log.calls == []
    # a T-LoRA of every timestep runs on either expert
    whole = apply(helpers, model, base)
    for steps in runs.values():
        assert bool(torch.isfinite(tiny.sample(whole, "wan21", steps=4, scheduler="simple", **steps)).all())


def test_resuming_the_other_experts_file_is_refused(tiny, helpers, loras_dir):
    model = model_of(tiny, "wan21")
    train(helpers, tiny, model, "wan21", 1, expert="high-noise", save_every=1)
    checkpoint = "tlora/wan21_high_noise_00001_step00001.safetensors"
    with pytest.raises(ValueError, match="timesteps the high-noise expert: t 875-999.*this node: the low-noise expert"):
        train(helpers, tiny, model, "wan21", 1, expert="low-noise", resume_from=checkpoint)


# -- bad input: a clear error before any work ---------------------------------------------------------
def test_a_mask_whose_frames_do_not_match_the_clip_is_refused(tiny, helpers, loras_dir, no_adapter_init):
    model = model_of(tiny, "wan21")
    with pytest.raises(ValueError, match=r"T-LoRA Train: got a mask of 5 frames for 1 latent\(s\) of 3 latent frames \(9 frames of video\)\. Give 1, 3 or 9"):
        train(helpers, tiny, model, "wan21", 3, mask=torch.ones(5, 64, 64))


def test_a_start_image_made_for_another_length_is_refused(tiny, helpers, loras_dir, no_adapter_init):
    model = model_of(tiny, "wan21_i2v")
    positive, _ = wan_i2v(helpers, tiny, "wan21_i2v", 2)  # length 5: 2 latent frames
    with pytest.raises(ValueError, match="made for 2 latent frames \\(5 video frames\\).*Set length to 9"):
        train(helpers, tiny, model, "wan21_i2v", 3, positive=positive)


def test_an_i2v_model_without_its_start_image_is_refused(tiny, helpers, loras_dir, no_adapter_init):
    model = model_of(tiny, "wan21_i2v")
    text = [[tiny.conditioning("wan21")[0][0][0], {}]]
    with pytest.raises(ValueError, match="carries no start image latent.*and no CLIP-vision.*WanImageToVideo"):
        train(helpers, tiny, model, "wan21_i2v", 3, positive=text)
    expert = model_of(tiny, "wan21", **A14B_I2V)
    with pytest.raises(ValueError, match="carries no start image latent \\(concat_latent_image\\)\\. Make positive with WanImageToVideo"):
        train(helpers, tiny, expert, "wan21", 3, positive=text, expert="low-noise")


def test_an_expert_of_a_single_model_is_refused(tiny, helpers, loras_dir, no_adapter_init):
    model = model_of(tiny, "wan22_5b")
    with pytest.raises(ValueError, match="expert is 'high-noise', but Wan 2.2 TI2V 5B is one model.*Set expert to none"):
        train(helpers, tiny, model, "wan22_5b", 3, expert="high-noise")


def test_a_latent_whose_every_frame_is_given_is_refused(tiny, helpers, loras_dir, no_adapter_init):
    from comfy_extras.nodes_wan import Wan22ImageToVideoLatent

    model = model_of(tiny, "wan22_5b")
    made = helpers.run_node(Wan22ImageToVideoLatent, vae=tiny.StandInVAE(48, down=16), width=128, height=128,
                            length=1, batch_size=1, start_image=start_image(size=128))[0]
    with pytest.raises(ValueError, match="noise_mask marks every frame as given"):
        train(helpers, tiny, model, "wan22_5b", latents=made)


def test_the_start_latent_of_an_i2v_node_is_not_a_clip_to_train_on(tiny, helpers, loras_dir, no_adapter_init):
    from comfy_extras.nodes_wan import Wan22ImageToVideoLatent

    model = model_of(tiny, "wan22_5b")
    made = helpers.run_node(Wan22ImageToVideoLatent, vae=tiny.StandInVAE(48, down=16), width=128, height=128,
                            length=9, batch_size=1, start_image=start_image(size=128))[0]
    with pytest.raises(ValueError, match="latent 1 holds no picture in the frames to learn.*VAE Encode"):
        train(helpers, tiny, model, "wan22_5b", latents=made)
    with pytest.raises(ValueError, match="latent 2 holds no picture"):
        samples = torch.cat([latents_of(tiny, "wan22_5b", 3), torch.zeros(1, *tiny.latent_shape("wan22_5b", 3))])
        train(helpers, tiny, model, "wan22_5b", latents={"samples": samples})


def test_video_latents_for_an_image_model_are_refused(tiny, helpers, loras_dir, no_adapter_init):
    model = tiny.build("sd15")
    with pytest.raises(ValueError, match="the latents are a video \\(3 frames.*makes images"):
        train(helpers, tiny, model, "sd15", latents={"samples": torch.randn(1, 4, 3, 8, 8)},
              positive=tiny.conditioning("sd15")[0])


def test_a_t_lora_of_an_image_model_is_refused_on_a_video_model(tiny, helpers):
    model = model_of(tiny, "wan21")
    image_model = tiny.build("sd15")
    adapter = helpers.make_adapter(image_model)
    with pytest.raises(ValueError, match="Timestep-Aware Apply: this T-LoRA was trained for .*but the MODEL is"):
        apply(helpers, model, adapter)
