"""T-LoRA Train that people can watch and trust: datasets as lists with per-image captions and
resolution buckets, the family's reference recipe, finished runs that continue, previews."""

from __future__ import annotations

import pytest
import torch

from .test_train import saved_files, train, train_all

pytestmark = pytest.mark.comfyui


def params(adapter):
    return {k: v.detach().clone() for k, v in adapter.state_dict().items()}


def same(a, b) -> bool:
    pa, pb = params(a), params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def distinct_conditioning(tiny, kind: str, n: int) -> list:
    """n one-entry CONDITIONINGs whose text embeddings are constant n, n+1, ...: which one a model
    call got is readable from its input."""
    base = tiny.conditioning(kind)[0][0]
    return [[[torch.full_like(base[0], float(i + 1)), dict(base[1])]] for i in range(n)]


class CondRecorder:
    """Every training model call's conditioning and its x_t rows (ComfyUI's calc_cond_batch)."""

    def __init__(self, monkeypatch):
        import comfy.samplers

        self.calls = []
        original = comfy.samplers.calc_cond_batch

        def record(model, conds, x_in, timestep, model_options):
            context = conds[0][0]["model_conds"]["c_crossattn"].cond
            self.calls.append((context.flatten()[0].item(), x_in.detach().clone(), timestep.detach().clone()))
            return original(model, conds, x_in, timestep, model_options)

        monkeypatch.setattr(comfy.samplers, "calc_cond_batch", record)


def check_captions(recorder, draws, latents, captions, model):
    """Each recorded call's rows are x_t of samples whose caption is that call's conditioning: x_t
    recomputed here from the drawn sample, noise and timestep."""
    sampling = model.get_model_object("model_sampling")
    latent_format = model.get_model_object("latent_format")
    calls = iter(recorder.calls)
    for batch in draws:
        rows_seen = 0
        for caption_value, x_in, sigma in [next(calls) for _ in range(len({(captions[int(i)], tuple(latents[int(i)].shape)) for i in batch.indices}))]:
            for row in range(x_in.shape[0]):
                matches = []
                for r, i in enumerate(batch.indices.tolist()):
                    if tuple(latents[i].shape) != tuple(x_in.shape[1:]):
                        continue
                    x0 = latent_format.process_in(latents[i].unsqueeze(0))
                    s = sampling.sigma(batch.timesteps[r:r + 1].float())
                    expected = sampling.noise_scaling(s, batch.noise[r].unsqueeze(0), x0)
                    if torch.allclose(expected[0], x_in[row], atol=1e-5):
                        matches.append(i)
                assert matches, "a model call's row is no drawn sample"
                assert all(captions[i] == caption_value for i in matches), (matches, caption_value)
            rows_seen += x_in.shape[0]
        assert rows_seen == len(batch.indices)


@pytest.mark.parametrize("layout", ["batch and one CONDITIONING per image (0.3.64)", "lists (0.33 dataset nodes)",
                                    "resolution buckets"])
def test_per_image_captions_reach_their_samples_in_every_batch(tiny, helpers, loras_dir, monkeypatch, layout):
    from tlora_nodes.tlora_core.trainer import Trainer

    model = tiny.build("sd15")
    conds = distinct_conditioning(tiny, "sd15", 3)
    g = torch.Generator().manual_seed(3)
    if layout.startswith("batch"):
        latents = [torch.randn(4, 8, 8, generator=g) for _ in range(3)]
        inputs = dict(latents={"samples": torch.stack(latents)}, positive=[c[0] for c in conds])
    elif layout.startswith("lists"):
        latents = [torch.randn(4, 8, 8, generator=g) for _ in range(3)]
        inputs = dict(latents=helpers.Many({"samples": x.unsqueeze(0)} for x in latents), positive=helpers.Many(conds))
    else:  # what 0.33's Resolution Bucket sends: one LATENT per size, one caption entry per image
        latents = [torch.randn(4, 8, 8, generator=g), torch.randn(4, 6, 10, generator=g), torch.randn(4, 8, 8, generator=g)]
        inputs = dict(latents=helpers.Many([{"samples": torch.stack([latents[0], latents[2]])}, {"samples": latents[1][None]}]),
                      positive=helpers.Many([[conds[0][0], conds[2][0]], conds[1]]))
        latents = [latents[0], latents[2], latents[1]]  # the node's sample order: bucket by bucket
        conds = [conds[0], conds[2], conds[1]]
    captions = [c[0][0].flatten()[0].item() for c in conds]
    draws = []
    original = Trainer.draw
    monkeypatch.setattr(Trainer, "draw", lambda self: draws.append(original(self)) or draws[-1])
    recorder = CondRecorder(monkeypatch)
    _, _, loss = train(helpers, tiny, model, "sd15", steps=5, batch_size=4, **inputs)
    assert len(loss["loss"]) == 5
    assert len({int(i) for b in draws for i in b.indices}) == 3
    check_captions(recorder, draws, latents, captions, model)


def test_comfyuis_resolution_bucket_output_trains_each_image_with_its_caption(tiny, helpers, loras_dir, monkeypatch):
    """ComfyUI 0.33's own Resolution Bucket node (as after Make Training Dataset: one LATENT and
    one caption per image, two sizes) connected straight to T-LoRA Train."""
    from tlora_nodes.tlora_core.trainer import Trainer

    why = "this ComfyUI has no Resolution Bucket node (0.33's dataset nodes); 0.3.64 trains a LATENT batch"
    nodes_dataset = pytest.importorskip("comfy_extras.nodes_dataset", reason=why)
    bucket_node = getattr(nodes_dataset, "ResolutionBucket", None)
    if bucket_node is None:
        pytest.skip(why)
    model = tiny.build("sd15")
    conds = distinct_conditioning(tiny, "sd15", 4)
    g = torch.Generator().manual_seed(7)
    shapes = [(4, 8, 8), (4, 6, 10), (4, 8, 8), (4, 6, 10)]
    images = [torch.randn(1, *shape, generator=g) for shape in shapes]
    bucketed = helpers.run_node(bucket_node, latents=helpers.Many({"samples": x} for x in images),
                                conditioning=helpers.Many(conds))
    out_latents, out_conds = bucketed[0], bucketed[1]
    assert len(out_latents) == 2  # two sizes, two buckets
    latents = [x for item in out_latents for x in item["samples"].unbind(0)]
    captions = [entry[0].flatten()[0].item() for bucket in out_conds for entry in bucket]
    assert sorted(captions) == [1.0, 2.0, 3.0, 4.0]
    draws = []
    original = Trainer.draw
    monkeypatch.setattr(Trainer, "draw", lambda self: draws.append(original(self)) or draws[-1])
    recorder = CondRecorder(monkeypatch)
    _, _, loss = train(helpers, tiny, model, "sd15", steps=4, batch_size=4, latents=helpers.Many(out_latents),
                       positive=helpers.Many(out_conds))
    assert len(loss["loss"]) == 4
    check_captions(recorder, draws, latents, captions, model)


def test_images_of_different_sizes_train_and_the_node_says_how(tiny, helpers, loras_dir, caplog):
    model = tiny.build("sdxl")
    g = torch.Generator().manual_seed(0)
    batches = helpers.Many([{"samples": torch.randn(2, 4, 8, 8, generator=g)}, {"samples": torch.randn(1, 4, 6, 10, generator=g)}])
    with caplog.at_level("INFO"):
        out = train(helpers, tiny, model, "sdxl", latents=batches, positive=helpers.Many([tiny.conditioning("sdxl")[0]] * 2),
                    steps=3, batch_size=3)
    assert len(out[2]["loss"]) == 3
    assert "3 images in 2 sizes (2 at 64x64, 1 at 80x48; a batch runs once per size)" in caplog.text


# -- bad input, nothing lost ------------------------------------------------------------------------------
def bad(helpers, tiny, kind="sd15", model=None, **inputs):
    return train(helpers, tiny, model or tiny.build(kind), kind, steps=2, **inputs)


def test_bad_datasets_are_refused_before_the_first_step(tiny, helpers, loras_dir):
    conds = tiny.conditioning("sd15")[0]
    with pytest.raises(ValueError, match="T-LoRA Train: got 3 images but 2 prompt inputs with 2 captions. Give one caption"):
        bad(helpers, tiny, latents=helpers.Many([{"samples": torch.randn(1, 4, 8, 8)}] * 3), positive=helpers.Many([conds] * 2))
    with pytest.raises(ValueError, match="got 2 images but 3 captions.*one .txt caption file per image"):
        bad(helpers, tiny, latents={"samples": torch.randn(2, 4, 8, 8)}, positive=conds * 3)
    with pytest.raises(ValueError, match="T-LoRA Train: there are no images to train on.*empty folder"):
        bad(helpers, tiny, latents={"samples": torch.zeros(0, 4, 8, 8)})
    with pytest.raises(ValueError, match="T-LoRA Train: an image is 8x8 pixels \\(latent 1x1\\); a SDXL model needs at least "
                                         "16x16 \\(latent 2x2\\). Use larger images"):
        bad(helpers, tiny, "sdxl", latents={"samples": torch.randn(1, 4, 1, 1)})
    assert saved_files(loras_dir) == []


def tiny_vae(tmp_path, channels: int):
    import comfy.sd
    import comfy.utils

    from tests.e2e.tiny_files import write_tiny_taesd

    path = write_tiny_taesd(tmp_path / f"taesd{channels}.safetensors", latent_channels=channels)
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


def test_bad_preview_inputs_are_refused_before_the_first_step(tiny, helpers, loras_dir, tmp_path):
    prompts = tiny.conditioning("sd15", seed=1)[0]
    with pytest.raises(ValueError, match="T-LoRA Train: preview_vae decodes 16-channel image latents, but this SD1.5 model "
                                         "makes 4-channel image latents: it is another model family's VAE"):
        bad(helpers, tiny, preview_prompts=prompts, preview_vae=tiny_vae(tmp_path, 16))
    with pytest.raises(ValueError, match="T-LoRA Train: preview_prompts come from another text encoder \\(2048-wide "
                                         "embeddings\\) than the training prompt \\(768-wide\\)"):
        bad(helpers, tiny, preview_prompts=tiny.conditioning("sdxl")[0], preview_vae=tiny_vae(tmp_path, 4))
    with pytest.raises(ValueError, match="previews need both preview_prompts and preview_vae; connect preview_vae"):
        bad(helpers, tiny, preview_prompts=prompts)
    assert saved_files(loras_dir) == []


# -- previews --------------------------------------------------------------------------------------------------
def test_previews_show_progress_and_leave_training_unchanged(tiny, helpers, loras_dir, tmp_path, monkeypatch):
    import comfy.utils

    model = tiny.build("sd15")
    settings = dict(steps=5, batch_size=2, variant="T-LoRA", init="principal")
    _, plain, plain_loss = train(helpers, tiny, model, "sd15", **settings)

    shown = []
    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute",
                        lambda self, value, total=None, preview=None: shown.append((value, preview)))
    prompts = tiny.conditioning("sd15", seed=1)[0] + tiny.conditioning("sd15", seed=2)[0]  # two prompts
    _, watched, watched_loss, grid = train_all(
        helpers, tiny, model, "sd15", preview_prompts=prompts, preview_vae=tiny_vae(tmp_path, 4), preview_every=2,
        preview_steps=3, preview_cfg=2.0, **settings,
    )
    assert same(plain, watched) and plain_loss == watched_loss  # previews change nothing
    # steps 2, 4 and the end (5): three columns of two prompts, 64x64 pixels each (8x8 latents)
    assert grid.shape == (1, 2 * 64, 3 * 64, 3) and 0.0 <= float(grid.min()) and float(grid.max()) <= 1.0
    assert [value for value, preview in shown if preview is not None] == [2, 4, 5]
    kind, image, _ = next(p for _, p in shown if p is not None)
    assert kind == "JPEG" and image.size == (64, 128)
    files = sorted(str(p.relative_to(loras_dir)) for p in loras_dir.rglob("*.png"))
    assert files == ["tlora/test_00002_previews.png", "tlora/test_00002_step00002_preview.png",
                     "tlora/test_00002_step00004_preview.png", "tlora/test_00002_step00005_preview.png"]


def test_a_preview_samples_the_adapter_as_timestep_aware_apply_does(tiny, helpers, loras_dir, tmp_path):
    """The last preview equals sampling the output MODEL (the trained adapter, applied) with the
    same settings and decoding it: the preview is the adapter as users will sample it."""
    import comfy.sample

    from tlora_nodes.nodes import previews

    model = tiny.build("sd15")
    vae = tiny_vae(tmp_path, 4)
    prompt = tiny.conditioning("sd15", seed=1)[0]
    trained, _, _, grid = train_all(helpers, tiny, model, "sd15", steps=3, preview_prompts=prompt, preview_vae=vae,
                                preview_every=0, preview_steps=3, preview_cfg=2.0, preview_seed=4)
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(4))
    samples = comfy.sample.sample(trained, noise, 3, 2.0, "euler", "simple", prompt, [previews._zeroed(prompt[0])], latent,
                                  seed=4, disable_pbar=True)
    torch.testing.assert_close(grid[0], vae.decode(samples)[0].clamp(0, 1), atol=1e-5, rtol=0)


def test_cancel_during_a_preview_stops_within_it_and_keeps_the_checkpoint(tiny, helpers, loras_dir, tmp_path, monkeypatch):
    import comfy.model_management
    import comfy.sample

    from tlora_nodes.tlora_core import load_tlora

    calls = []
    original = comfy.sample.sample

    def cancelled_preview(*args, **kwargs):
        callback = kwargs["callback"]

        def counting(*a):
            calls.append(1)
            if len(calls) == 2:
                comfy.model_management.interrupt_current_processing()  # what POST /interrupt does
            callback(*a)

        return original(*args, **{**kwargs, "callback": counting})

    monkeypatch.setattr(comfy.sample, "sample", cancelled_preview)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(helpers, tiny, tiny.build("sd15"), "sd15", steps=6, preview_prompts=tiny.conditioning("sd15")[0],
              preview_vae=tiny_vae(tmp_path, 4), preview_every=3, preview_steps=10)
    assert len(calls) == 2  # stopped at the second of the preview's ten sampling steps
    assert not comfy.model_management.processing_interrupted()
    assert saved_files(loras_dir) == ["tlora/test_00001_step00003_cancelled.safetensors"]
    assert load_tlora(str(loras_dir / "tlora/test_00001_step00003_cancelled.safetensors")).training_state["step"].item() == 3


def tiny_wan_vae(tmp_path):
    """ComfyUI's own Wan 2.1 VAE at width 16 (tests/e2e/tiny_files.py), or a skip where ComfyUI
    builds that VAE at its full width whatever the file holds (0.3.64)."""
    import comfy.sd
    import comfy.utils

    from tests.e2e.tiny_files import write_tiny_wan_vae

    state = comfy.utils.load_torch_file(str(write_tiny_wan_vae(tmp_path / "wan21_vae.safetensors")))
    try:
        return comfy.sd.VAE(sd=state)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        pytest.skip("this ComfyUI builds the Wan 2.1 VAE 96 wide whatever the file holds (0.3.64): no tiny one loads")


def test_video_previews_are_the_first_frame_sampled_as_the_trained_model_samples_it(tiny, helpers, loras_dir, tmp_path,
                                                                                    monkeypatch):
    """Wan 2.1 (shift 8) trained on a 3-frame clip: each preview samples one latent frame with the
    adapter as it is at that step and decodes it with a Wan 2.1 VAE; the last one equals sampling
    T-LoRA Train's MODEL output that way; previews change neither the adapter nor the loss."""
    import comfy.sample
    import comfy.utils

    from tlora_nodes.nodes import previews

    if not tiny.available("wan21"):
        pytest.skip("this ComfyUI has no WAN21_T2V model class")
    vae = tiny_wan_vae(tmp_path)
    model = tiny.with_shift(tiny.build("wan21"), "wan21")
    assert tiny.LATENT["wan21"][1] == 3  # the training latent is a clip
    settings = dict(steps=2, init="principal")
    _, plain, plain_loss = train(helpers, tiny, model, "wan21", **settings)

    shown = []
    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute",
                        lambda self, value, total=None, preview=None: shown.append((value, preview)))
    prompt = tiny.conditioning("wan21", seed=1)[0]
    trained, watched, watched_loss, grid = train_all(
        helpers, tiny, model, "wan21", preview_prompts=prompt, preview_vae=vae, preview_every=1, preview_steps=3,
        preview_cfg=2.0, preview_seed=4, **settings,
    )
    assert same(plain, watched) and plain_loss == watched_loss
    # steps 1 and 2: two columns of one 64x64 frame (an 8x8 latent frame)
    assert grid.shape == (1, 64, 2 * 64, 3)
    assert [value for value, preview in shown if preview is not None] == [1, 2]

    latent = torch.zeros(1, 16, 1, 8, 8)  # one latent frame: the first frame of the clip
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(4))
    samples = comfy.sample.sample(trained, noise, 3, 2.0, "euler", "simple", prompt, [previews._zeroed(prompt[0])], latent,
                                  seed=4, disable_pbar=True)
    frames = vae.decode(samples)
    assert frames.shape == (1, 1, 64, 64, 3)
    torch.testing.assert_close(grid[0, :, 64:], frames[0, 0].clamp(0, 1), atol=1e-5, rtol=0)
    assert not torch.equal(grid[0, :, :64], grid[0, :, 64:])  # the adapter moved between the steps


# -- the recipe -------------------------------------------------------------------------------------------------
class Guidance:
    """The guidance every training model call passed to the FLUX network."""

    def __init__(self, monkeypatch):
        from tlora_nodes.nodes import training_patches

        self.seen = []
        original = training_patches.OutputCapture.__call__

        def call(capture, *args, **kwargs):
            guidance = kwargs.get("guidance", args[4] if len(args) > 4 else None)
            self.seen.append(None if guidance is None else guidance.flatten().tolist())
            return original(capture, *args, **kwargs)

        monkeypatch.setattr(training_patches.OutputCapture, "__call__", call)


def test_flux_reference_recipe_trains_vanilla_32_1_with_prodigy_clipping_and_guidance_1(tiny, helpers, loras_dir, monkeypatch, caplog):
    pytest.importorskip("prodigyopt")
    from tlora_nodes.tlora_core import load_tlora
    from tlora_nodes.tlora_core.trainer import Trainer

    seen = Guidance(monkeypatch)
    made = []
    original_init = Trainer.__init__
    monkeypatch.setattr(Trainer, "__init__", lambda self, *a, **k: (original_init(self, *a, **k), made.append(self))[0])
    positive = tiny.conditioning("flux")[0]
    assert positive[0][1]["guidance"] == 3.5
    with caplog.at_level("INFO"):
        _, adapter, _ = train(helpers, tiny, tiny.build("flux"), "flux", steps=2, positive=positive, recipe="family reference")
    config = adapter.config
    assert (config.variant, config.rank, config.min_rank) == ("vanilla", 32, 1)
    settings = made[0].settings
    assert (settings.optimizer, settings.learning_rate, settings.max_grad_norm, settings.first_timestep) == ("prodigy", 1.0, 1.0, 1)
    assert seen.seen and all(g == [1.0] for g in seen.seen)  # not the prompt's 3.5
    meta = load_tlora(str(loras_dir / "tlora/test_00001_.safetensors")).metadata
    assert (meta["optimizer"], meta["max_grad_norm"], meta["timesteps"], meta["training_guidance"], meta["recipe"]) == (
        "prodigy", "1.0", "1..1000", "1.0", "FLUX.1 reference recipe")
    assert "FLUX.1 reference recipe: Vanilla T-LoRA rank 32/1, Prodigy lr 1, grad-norm clip 1, guidance 1, t 1..1000" in caplog.text
    assert "the node's variant 'vanilla'" not in caplog.text and "rank 8 (used: 32)" in caplog.text


def test_sd_reference_recipe_is_the_papers(tiny, helpers, loras_dir):
    from tlora_nodes.tlora_core import load_tlora

    _, adapter, _ = train(helpers, tiny, tiny.build("sd15"), "sd15", steps=1, recipe="family reference")
    assert (adapter.config.variant, adapter.config.rank, adapter.config.min_rank) == ("tlora", 64, 32)
    meta = load_tlora(str(loras_dir / "tlora/test_00001_.safetensors")).metadata
    assert (meta["optimizer"], meta["learning_rate"], meta["max_grad_norm"], meta["timesteps"], meta["training_guidance"]) == (
        "adamw", "0.0001", "none", "0..999", "prompt")


def test_the_run_tells_the_frontend_the_schedule_it_trained(tiny, helpers, loras_dir):
    """The UI output's tlora_schedule (which the schedule plot draws as "as trained"): under the
    family reference, the recipe's rank / min_rank / variant, not the node's; the node's
    schedule_power either way; 'custom': the node's values."""
    out = train_all(helpers, tiny, tiny.build("sd15"), "sd15", steps=1, recipe="family reference", schedule_power=2.0)
    assert out.ui["tlora_schedule"] == [{
        "recipe": "SD-XL paper recipe", "choice": "family reference", "family": "SD1.5", "variant": "tlora",
        "variant_label": "T-LoRA", "rank": 64, "min_rank": 32, "schedule_power": 2.0,
    }]
    config = out[1].config  # what was trained says the same
    assert (config.variant, config.rank, config.min_rank, config.schedule_power) == ("tlora", 64, 32, 2.0)
    out = train_all(helpers, tiny, tiny.build("sd15"), "sd15", steps=1, recipe="custom", rank=6, min_rank=6)
    assert out.ui["tlora_schedule"] == [{
        "recipe": "custom", "choice": "custom", "family": "SD1.5", "variant": "vanilla",
        "variant_label": "Vanilla T-LoRA", "rank": 6, "min_rank": 6, "schedule_power": 1.0,
    }]


def test_family_recipes_name_every_family_under_the_recipe_it_trains_with():
    """GET /tlora/recipes' answer: one entry per reference recipe; every family of the table in
    exactly the entry of its own recipe; models outside the table under the default one."""
    from tlora_nodes.nodes import model_kinds, recipe

    table = recipe.family_recipes()
    assert (table["reference"], table["custom"]) == ("family reference", "custom") == tuple(recipe.CHOICES)
    by_name = {entry["name"]: entry for entry in table["recipes"]}
    assert len(by_name) == len(table["recipes"]) == 2
    sd, flux = by_name["SD-XL paper recipe"], by_name["FLUX.1 reference recipe"]
    # SPEC §5: the paper's SD-XL recipe; the reference FLUX code's
    assert (sd["variant"], sd["variant_label"], sd["rank"], sd["min_rank"], sd["optimizer"], sd["learning_rate"],
            sd["max_grad_norm"], sd["others"]) == ("tlora", "T-LoRA", 64, 32, "AdamW", 1e-4, None, False)
    assert (flux["variant"], flux["variant_label"], flux["rank"], flux["min_rank"], flux["optimizer"],
            flux["learning_rate"], flux["max_grad_norm"], flux["others"]) == (
        "vanilla", "Vanilla T-LoRA", 32, 1, "Prodigy", 1.0, 1.0, True)
    assert sd["families"] == ["SD1.5", "SD2", "SDXL", "SSD-1B", "Segmind Vega", "KOALA 700M", "KOALA 1B"]
    listed = [family for entry in table["recipes"] for family in entry["families"]]
    assert sorted(listed) == sorted(kind.label for kind in model_kinds.KINDS)  # each once
    for kind in model_kinds.KINDS:
        entry = next(e for e in table["recipes"] if kind.label in e["families"])
        assert (entry["name"], entry["rank"], entry["min_rank"]) == (kind.recipe.name, kind.recipe.rank, kind.recipe.min_rank)


def strip_recipe(path):
    """The checkpoint as T-LoRA Train wrote it before the recipe was recorded."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key in ("optimizer", "betas", "weight_decay", "eps", "max_grad_norm", "timesteps", "recipe", "training_guidance"):
        meta.pop(key)
    save_file(tensors, str(path), metadata=meta)


def test_a_checkpoint_from_before_the_recipe_resumes_under_its_old_rule(tiny, helpers, loras_dir, monkeypatch):
    """Old FLUX checkpoints were trained with timesteps 0..999, the prompt's guidance and no
    clipping: resuming one continues exactly that run."""
    from tlora_nodes.nodes import dataset, recipe, train as train_module
    from tlora_nodes.tlora_core import TLoRAConfig, load_tlora
    from tlora_nodes.tlora_core.trainer import TrainSettings

    model = tiny.build("flux")
    positive = tiny.conditioning("flux")[0]
    latents = [{"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))}]
    data = dataset.build(model, latents, [positive], None, "test", train_module.check_trainable, lambda m, s: None)
    config = TLoRAConfig(variant="vanilla", rank=8, min_rank=4, model_family="flux")
    old_rule = recipe.RunRecipe("custom", "vanilla", 8, 4, "adamw", 0.02, None, 0, None)

    def old_run(steps, save_every=0, resume_from=None):
        settings = TrainSettings(steps=steps, learning_rate=0.02, save_every=save_every)
        return train_module.train(model, data, settings, config, torch.float32, False, "tlora/old", resume_from, None, old_rule)

    full = old_run(4)
    old_run(2, save_every=2)
    strip_recipe(loras_dir / "tlora/old_00002_step00002.safetensors")
    assert "optimizer" not in load_tlora(str(loras_dir / "tlora/old_00002_step00002.safetensors")).metadata
    seen = Guidance(monkeypatch)
    _, resumed, _ = train(helpers, tiny, model, "flux", steps=4, positive=positive, latents=latents[0]["samples"],
                             resume_from="tlora/old_00002_step00002.safetensors")
    assert all(g == [3.5] for g in seen.seen)  # the prompt's guidance, as it was trained
    assert same(full.adapter, resumed)


def test_a_finished_run_continued_to_more_steps_equals_one_longer_run(tiny, helpers, loras_dir):
    model = tiny.build("sd15")
    settings = dict(variant="T-LoRA", init="principal", batch_size=2, save_every=0)
    _, longer, longer_loss = train(helpers, tiny, model, "sd15", steps=5, **settings)
    train(helpers, tiny, model, "sd15", steps=3, **settings)
    assert "tlora/test_00002_step00003.safetensors" in saved_files(loras_dir)
    _, continued, continued_loss = train(helpers, tiny, model, "sd15", steps=5,
                                            resume_from="tlora/test_00002_step00003.safetensors", **settings)
    assert continued.training_steps == 5 and same(longer, continued)
    assert continued_loss["loss"] == longer_loss["loss"]  # the checkpoint carries the first steps' losses
