"""T-LoRA Train in the real ComfyUI with tiny models."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.comfyui


def train(helpers, tiny, model, kind, positive=None, latents=None, mask=None, **overrides):
    """T-LoRA Train's MODEL, TLORA and loss outputs (``train_all``: also its previews)."""
    return train_all(helpers, tiny, model, kind, positive, latents, mask, **overrides)[:3]


def train_all(helpers, tiny, model, kind, positive=None, latents=None, mask=None, **overrides):
    from tlora_nodes.nodes.train import TLoRATrain

    if latents is None:
        latents = torch.randn(1, *tiny.LATENT[kind], generator=torch.Generator().manual_seed(5))
    inputs = dict(
        model=model,
        latents={"samples": latents} if isinstance(latents, torch.Tensor) else latents,
        positive=positive if positive is not None else tiny.conditioning(kind)[0],
        steps=6, learning_rate=0.02, rank=8, min_rank=4, schedule_power=1.0, variant="Vanilla T-LoRA",
        init="last", batch_size=1, seed=0, save_every=0, filename_prefix="tlora/test", resume_from="none",
        training_dtype="fp32", gradient_checkpointing=False,
    )
    inputs.update(overrides)
    if mask is not None:
        inputs["mask"] = mask
    out = helpers.run_node(TLoRATrain, hidden={}, **inputs)
    return out


def saved_files(loras_dir):
    return sorted(str(p.relative_to(loras_dir)) for p in loras_dir.rglob("*.safetensors"))


def test_loss_falls_over_a_few_dozen_steps_on_one_latent(tiny, helpers, loras_dir):
    model = tiny.build("sd15")
    out = train(helpers, tiny, model, "sd15", steps=40, learning_rate=0.05, batch_size=4, rank=16, min_rank=8)
    losses = out[2]["loss"]
    assert len(losses) == 40 and all(isinstance(v, float) for v in losses)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert saved_files(loras_dir) == ["tlora/test_00001_.safetensors", "tlora/test_00001_step00040.safetensors"]


@pytest.mark.parametrize("variant", ["T-LoRA", "Vanilla T-LoRA"])
def test_trained_model_equals_load_then_apply_of_the_saved_file(tiny, helpers, loras_dir, variant):
    from tlora_nodes.nodes.apply import TimestepAwareApply
    from tlora_nodes.nodes.load import TLoRALoad

    model = tiny.build("sd15")
    trained_model, adapter, _ = train(helpers, tiny, model, "sd15", variant=variant, init="principal")
    assert adapter.training_steps == 6 and not any(p.requires_grad for p in adapter.parameters())
    loaded = helpers.run_node(TLoRALoad, lora_name="tlora/test_00001_.safetensors", min_rank=0, schedule_power=0.0)[0]
    assert loaded.config == adapter.config and loaded.training_steps == 6
    applied = helpers.run_node(TimestepAwareApply, model=model, tlora=loaded, strength_model=1.0)[0]
    got = tiny.sample(trained_model, "sd15", steps=4)
    want = tiny.sample(applied, "sd15", steps=4)
    assert torch.equal(got, want)
    assert not torch.allclose(got, tiny.sample(model, "sd15", steps=4))  # it learned something


def interrupt_at(monkeypatch, step):
    import comfy.model_management

    from tlora_nodes.nodes import train as train_module

    original = train_module._NodeCallbacks.on_step

    def on_step(self, current, total, loss):
        original(self, current, total, loss)
        if current == step:
            comfy.model_management.interrupt_current_processing()  # what POST /interrupt does

    monkeypatch.setattr(train_module._NodeCallbacks, "on_step", on_step)


def interrupt_inside_step(monkeypatch, step):
    """Cancel raised from inside the model call of ``step``, the way ComfyUI 0.33 raises it (it
    checks on every op, and clears the flag as it raises)."""
    import comfy.model_management

    from tlora_nodes.nodes import training_patches

    calls = []
    original = training_patches.OutputCapture.__call__

    def call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == step:  # batch_size rows share one call per step
            comfy.model_management.interrupt_current_processing()
            comfy.model_management.throw_exception_if_processing_interrupted()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(training_patches.OutputCapture, "__call__", call)


@pytest.mark.parametrize("where", ["between steps", "inside the model call"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_cancel_keeps_a_checkpoint_and_resume_reproduces_the_uninterrupted_run(tiny, helpers, loras_dir, monkeypatch, checkpointing, where):
    import comfy.model_management

    from tlora_nodes.tlora_core import load_tlora

    model = tiny.build("sd15")
    settings = dict(steps=9, variant="T-LoRA", init="principal", batch_size=2, gradient_checkpointing=checkpointing)
    _, uninterrupted, full_loss = train(helpers, tiny, model, "sd15", **settings)

    with monkeypatch.context() as m:
        if where == "between steps":
            interrupt_at(m, 4)
        else:
            interrupt_inside_step(m, 5)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            train(helpers, tiny, model, "sd15", **settings)
    assert not comfy.model_management.processing_interrupted()
    cancelled = "tlora/test_00002_step00004_cancelled.safetensors"
    assert cancelled in saved_files(loras_dir)
    assert load_tlora(str(loras_dir / cancelled)).adapter.training_steps == 4

    _, resumed, resumed_loss = train(helpers, tiny, model, "sd15", resume_from=cancelled, **settings)
    assert resumed.training_steps == 9
    for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed_loss["loss"] == full_loss["loss"]


def test_cancel_during_the_last_step_saves_the_run_and_stops_the_graph(tiny, helpers, loras_dir, monkeypatch):
    import comfy.model_management

    from tlora_nodes.tlora_core import load_tlora

    interrupt_at(monkeypatch, 3)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(helpers, tiny, tiny.build("sd15"), "sd15", steps=3)
    assert not comfy.model_management.processing_interrupted()
    # complete, so the final file (and the last step's checkpoint)
    assert saved_files(loras_dir) == ["tlora/test_00001_.safetensors", "tlora/test_00001_step00003.safetensors"]
    assert load_tlora(str(loras_dir / "tlora/test_00001_.safetensors")).adapter.training_steps == 3


def test_checkpoints_every_n_steps_are_resumable_files(tiny, helpers, loras_dir):
    from tlora_nodes.tlora_core import load_tlora

    train(helpers, tiny, tiny.build("sd15"), "sd15", steps=5, save_every=2)
    assert saved_files(loras_dir) == [
        "tlora/test_00001_.safetensors",
        "tlora/test_00001_step00002.safetensors",
        "tlora/test_00001_step00004.safetensors",
        "tlora/test_00001_step00005.safetensors",  # the last step: the run can be continued
    ]
    checkpoint = load_tlora(str(loras_dir / "tlora/test_00001_step00004.safetensors"))
    assert checkpoint.training_state["step"].item() == 4 and "rng" in checkpoint.training_state
    assert any(k.startswith("optimizer.") for k in checkpoint.training_state)
    final = load_tlora(str(loras_dir / "tlora/test_00001_.safetensors"))
    assert final.training_state == {}  # the final adapter carries no optimizer state
    assert final.metadata["learning_rate"] == "0.02" and final.metadata["base_model"] == "SD15"


def test_per_row_masks_follow_each_samples_timestep(tiny, helpers, loras_dir, monkeypatch):
    from tlora_nodes.nodes import patching
    from tlora_nodes.tlora_core.trainer import Trainer

    draws, calls = [], []
    original_draw, original_set = Trainer.draw, patching.TLoRAStack.set_timesteps

    def draw(self):
        batch = original_draw(self)
        draws.append(batch.timesteps.clone())
        return batch

    def set_timesteps(self, timesteps):
        original_set(self, timesteps)
        calls.append((timesteps.clone(), self.masks[0].clone()))

    monkeypatch.setattr(Trainer, "draw", draw)
    monkeypatch.setattr(patching.TLoRAStack, "set_timesteps", set_timesteps)
    model = tiny.build("sd15")
    _, adapter, _ = train(helpers, tiny, model, "sd15", steps=4, batch_size=2, rank=16, min_rank=2)
    assert len(calls) == len(draws) == 4
    distinct = 0
    for drawn, (seen, masks) in zip(draws, calls):
        assert seen.tolist() == drawn.double().tolist()  # sigma -> timestep gives back the drawn t
        expected = adapter.schedule.mask_at(drawn)
        if masks.dim() == 1:
            assert bool((expected == masks).all())
        else:
            distinct += 1
            assert torch.equal(masks, expected)  # row i carries the mask of its own timestep
    assert distinct > 0


def test_flux_flow_timesteps_round_trip_exactly(tiny, helpers, loras_dir, monkeypatch):
    from tlora_nodes.nodes import patching
    from tlora_nodes.tlora_core.trainer import Trainer

    draws, seen = [], []
    original_draw, original_set = Trainer.draw, patching.TLoRAStack.set_timesteps
    monkeypatch.setattr(Trainer, "draw", lambda self: draws.append(original_draw(self)) or draws[-1])
    monkeypatch.setattr(patching.TLoRAStack, "set_timesteps", lambda self, t: (seen.append(t.clone()), original_set(self, t)))
    train(helpers, tiny, tiny.build("flux"), "flux", steps=6, batch_size=3)
    assert [t.tolist() for t in seen] == [b.timesteps.double().tolist() for b in draws]


def test_masked_loss_ignores_pixels_outside_the_mask(tiny, helpers, loras_dir, monkeypatch):
    from tlora_nodes.nodes import training_patches

    model = tiny.build("sd15")
    mask = torch.zeros(1, 64, 64)
    mask[..., :, :40] = 1.0  # image resolution: latent columns 0-4 are in, 5-7 out
    outside = torch.zeros(1, 1, 8, 8)
    outside[..., 5:] = 1.0
    _, clean, clean_loss = train(helpers, tiny, model, "sd15", mask=mask, init="principal")

    take = training_patches.OutputCapture.take
    # wreck the prediction outside the mask: a masked loss must not notice
    monkeypatch.setattr(training_patches.OutputCapture, "take", lambda self: take(self) + 1000.0 * outside)
    _, wrecked, wrecked_loss = train(helpers, tiny, model, "sd15", mask=mask, init="principal")
    assert wrecked_loss == clean_loss
    assert all(torch.equal(x, y) for x, y in zip(clean.state_dict().values(), wrecked.state_dict().values()))
    _, _, unmasked_loss = train(helpers, tiny, model, "sd15", init="principal")
    assert min(unmasked_loss["loss"]) > 1000.0  # without the mask the same wreck dominates the loss


@pytest.mark.parametrize("kind", ["sd15", "sd2", "sdxl", "flux"])
def test_each_family_trains_a_few_steps(tiny, helpers, loras_dir, kind):
    from tlora_nodes.tlora_core import load_tlora

    model = tiny.build(kind)
    trained, adapter, loss = train(helpers, tiny, model, kind, steps=3, gradient_checkpointing=True)
    assert len(loss["loss"]) == 3 and all(torch.isfinite(torch.tensor(loss["loss"])))
    saved = load_tlora(str(loras_dir / "tlora/test_00001_.safetensors")).adapter
    assert saved.config.model_family == kind
    assert not torch.equal(tiny.sample(trained, kind, steps=2), tiny.sample(model, kind, steps=2))


@pytest.mark.parametrize("kind", ["sdxl", "flux"])
def test_gradient_checkpointing_gives_the_gradients_of_plain_backprop(tiny, helpers, loras_dir, kind):
    """Checkpointed blocks first run without autograd and recompute in backward (reentrant);
    every adapter layer, also those of the first adapted block (whose inputs need no gradient)
    and FLUX's in-place blocks, must get the gradient it gets without checkpointing."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    runs = []
    for checkpointing in (False, True):
        grads: list[list[torch.Tensor]] = []
        hook = register_optimizer_step_pre_hook(
            lambda optimizer, *_, grads=grads: grads.append([p.grad.clone() for group in optimizer.param_groups for p in group["params"]]))
        try:
            train(helpers, tiny, tiny.build(kind), kind, steps=2, variant="T-LoRA", batch_size=2,
                  gradient_checkpointing=checkpointing, filename_prefix=f"tlora/ckpt{int(checkpointing)}")
        finally:
            hook.remove()
        runs.append(grads[0])  # the first step: same adapter, same batch in both runs
    plain, checkpointed = runs
    assert len(plain) == len(checkpointed)
    for index, (want, got) in enumerate(zip(plain, checkpointed)):
        assert want.abs().max() > 0, f"parameter {index} got no gradient"
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()), msg=f"parameter {index}")


_SEEDED_ADAPTER = """
import sys
sys.path[:0] = [{root!r}]
from tests import conftest  # imports the pack as tlora_nodes, like ComfyUI
from tests.comfyui_env import prepare_in_process
prepare_in_process(conftest.COMFYUI_PATH)
from tests.nodes import tiny
from tlora_nodes.nodes import model_kinds
from tlora_nodes.tlora_core import TLoRA, TLoRAConfig
model = tiny.build("sdxl")
shapes = model_kinds.layer_shapes(model_kinds.find_targets(model, "test"))
adapter = TLoRA.create(TLoRAConfig(rank=8, min_rank=4, model_family="sdxl"), shapes, seed=7)
print([(name, round(float(layer.q.sum()), 6)) for name, layer in adapter.items()])
"""


def test_a_seed_gives_the_same_adapter_in_every_process():
    """The adapter's init draws layer after layer, so the layer order must not depend on the
    process: ComfyUI's UNet name mapping iterates sets, whose order follows PYTHONHASHSEED."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    outputs = []
    for hash_seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run([sys.executable, "-c", _SEEDED_ADAPTER.format(root=str(ROOT))], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout.strip().splitlines()[-1])
    assert outputs[0] == outputs[1] == outputs[2]


def test_bf16_training_runs(tiny, helpers, loras_dir):
    _, adapter, loss = train(helpers, tiny, tiny.build("sd15"), "sd15", steps=3, training_dtype="bf16")
    assert all(torch.isfinite(torch.tensor(loss["loss"])))
    assert next(adapter.parameters()).dtype == torch.float32  # the adapter's maths stay fp32


@pytest.mark.parametrize("training_dtype, casts", [("fp32", False), ("bf16", True)])
def test_weights_are_cast_per_call_only_when_the_training_dtype_differs(tiny, helpers, loras_dir, monkeypatch,
                                                                         training_dtype, casts):
    import comfy.ops

    calls = []
    original = comfy.ops.cast_bias_weight
    monkeypatch.setattr(comfy.ops, "cast_bias_weight", lambda *a, **k: calls.append(1) or original(*a, **k))
    _, _, loss = train(helpers, tiny, tiny.build("sd15"), "sd15", steps=2, training_dtype=training_dtype)
    assert all(torch.isfinite(torch.tensor(loss["loss"])))
    assert bool(calls) == casts


def test_training_targets_are_what_the_model_should_predict(tiny):
    import comfy.model_base

    from tlora_nodes.nodes import model_kinds

    for kind, model_type in (("sd15", None), ("sd2", comfy.model_base.ModelType.V_PREDICTION), ("flux", None)):
        sampling = tiny.build(kind, model_type=model_type).model.model_sampling
        x0 = torch.randn(3, *tiny.LATENT[kind])
        noise = torch.randn_like(x0)
        sigma = model_kinds.timestep_to_sigma(sampling, torch.tensor([10, 500, 990]), "test")
        x_t = sampling.noise_scaling(sigma, noise, x0)
        target = model_kinds.training_target(sampling, sigma, noise, x0, "test")
        # a model that outputs exactly the target denoises x_t back to x0
        torch.testing.assert_close(sampling.calculate_denoised(sigma, target, x_t), x0, rtol=1e-4, atol=1e-4)


def test_weights_created_in_inference_mode_can_be_trained(tiny, helpers, loras_dir):
    with torch.inference_mode():  # how every loader node creates weights
        model = tiny.build("sd15")
    assert next(model.model.parameters()).is_inference()
    _, _, loss = train(helpers, tiny, model, "sd15", steps=2)
    assert len(loss["loss"]) == 2


def test_same_seed_gives_the_same_adapter(tiny, helpers, loras_dir):
    model = tiny.build("sdxl")
    _, a, _ = train(helpers, tiny, model, "sdxl", seed=7, variant="T-LoRA")
    _, b, _ = train(helpers, tiny, model, "sdxl", seed=7, variant="T-LoRA")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# -- bad input ------------------------------------------------------------------------------------------
def test_latent_and_conditioning_counts_must_match(tiny, helpers, loras_dir):
    positive = tiny.conditioning("sd15")[0] * 2
    with pytest.raises(ValueError, match="T-LoRA Train: got 3 images but 2 captions"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", positive=positive, latents=torch.randn(3, 4, 8, 8))


def test_one_conditioning_per_image_is_used_per_image(tiny, helpers, loras_dir):
    positive = tiny.conditioning("sd15", seed=1)[0] + tiny.conditioning("sd15", seed=2)[0]
    _, _, loss = train(helpers, tiny, tiny.build("sd15"), "sd15", positive=positive, latents=torch.randn(2, 4, 8, 8), batch_size=2)
    assert len(loss["loss"]) == 6


def test_mask_of_the_wrong_size_is_refused(tiny, helpers, loras_dir):
    with pytest.raises(ValueError, match="T-LoRA Train: the mask is 50x50 but the latents need 64x64"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", mask=torch.ones(1, 50, 50))
    with pytest.raises(ValueError, match="covers no pixel"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", mask=torch.zeros(1, 64, 64))


def test_min_rank_above_rank_is_refused(tiny, helpers, loras_dir):
    with pytest.raises(ValueError, match=r"T-LoRA Train: min_rank \(9\) must be <= rank \(8\)"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", min_rank=9)


def test_zero_steps_is_refused(tiny, helpers, loras_dir):
    with pytest.raises(ValueError, match=r"T-LoRA Train: steps \(0\) must be >= 1"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", steps=0)


def test_resume_file_for_another_rank_or_model_is_refused(tiny, helpers, loras_dir):
    train(helpers, tiny, tiny.build("sd15"), "sd15", steps=2, save_every=1)
    checkpoint = "tlora/test_00001_step00001.safetensors"
    with pytest.raises(ValueError, match="was trained with other settings: rank 8 \\(this node: 16\\)"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", resume_from=checkpoint, rank=16)
    with pytest.raises(ValueError, match="model_family 'sd15' \\(this node: 'sdxl'\\)"):
        train(helpers, tiny, tiny.build("sdxl"), "sdxl", resume_from=checkpoint)
    with pytest.raises(ValueError, match="has no optimizer/RNG state"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", resume_from="tlora/test_00001_.safetensors")


def test_resume_from_a_reference_file_says_it_has_no_training_state(tiny, helpers, loras_dir):
    from safetensors.torch import save_file

    from tests.core.sdxl_layout import reference_state_dict

    save_file(reference_state_dict("tlora", rank=8), str(loras_dir / "pytorch_lora_weights.safetensors"))
    with pytest.raises(ValueError, match="T-LoRA Train: resume_from 'pytorch_lora_weights.safetensors' was trained by the reference trainer.*Use it with T-LoRA Load"):
        train(helpers, tiny, tiny.build("sdxl"), "sdxl", resume_from="pytorch_lora_weights.safetensors")


def test_resume_with_another_learning_rate_continues_and_warns(tiny, helpers, loras_dir, caplog):
    train(helpers, tiny, tiny.build("sd15"), "sd15", steps=2, save_every=1)
    with caplog.at_level("WARNING"):
        _, resumed, _ = train(helpers, tiny, tiny.build("sd15"), "sd15", steps=2, learning_rate=0.01,
                              resume_from="tlora/test_00001_step00001.safetensors")
    assert resumed.training_steps == 2
    assert "resuming 'tlora/test_00001_step00001.safetensors' with changed learning_rate 0.02 -> 0.01" in caplog.text


def test_latents_of_another_model_and_untrainable_sampling_are_refused_before_any_work(tiny, helpers, loras_dir, monkeypatch):
    from comfy_extras.nodes_model_advanced import ModelSamplingContinuousEDM, ModelSamplingDiscrete

    from tlora_nodes.tlora_core import TLoRA

    monkeypatch.setattr(TLoRA, "create", lambda *a, **k: pytest.fail("initialised an adapter for a run that can't work"))
    with pytest.raises(ValueError, match="T-LoRA Train: the latents have 4 channels, this FLUX.1 model needs 16. Encode the images with this model's VAE"):
        train(helpers, tiny, tiny.build("flux"), "flux", latents=torch.zeros(1, 4, 8, 8))
    edm = ModelSamplingContinuousEDM().patch(tiny.build("sdxl"), "edm", 120.0, 0.002)[0]
    with pytest.raises(ValueError, match="T-LoRA Train: this MODEL samples with ModelSamplingContinuousEDM. .*continuous EDM/V models"):
        train(helpers, tiny, edm, "sdxl")
    x0 = ModelSamplingDiscrete().patch(tiny.build("sd15"), "x0", False)[0]
    with pytest.raises(ValueError, match="T-LoRA Train: this MODEL predicts x0 outputs"):
        train(helpers, tiny, x0, "sd15")
    assert saved_files(loras_dir) == []


def test_divergence_stops_keeps_the_last_checkpoint_and_names_the_step(tiny, helpers, loras_dir, monkeypatch):
    from tlora_nodes.nodes import model_kinds
    from tlora_nodes.tlora_core import load_tlora

    original = model_kinds.training_target
    calls = []

    def poisoned(*args):
        calls.append(1)
        target = original(*args)
        return target * float("nan") if len(calls) == 3 else target

    monkeypatch.setattr(model_kinds, "training_target", poisoned)
    with pytest.raises(RuntimeError, match="T-LoRA Train: training diverged at step 3.*checkpoint of step 2 is kept.*step00002"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", steps=6, save_every=2)
    assert saved_files(loras_dir) == ["tlora/test_00001_step00002.safetensors"]
    assert load_tlora(str(loras_dir / "tlora/test_00001_step00002.safetensors")).adapter.training_steps == 2


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tiny, helpers, loras_dir, monkeypatch):
    from tlora_nodes.tlora_core import formats, load_tlora

    original = formats.save_file
    writes = []

    def disk_full_on_second(tensors, filename, metadata=None):
        writes.append(filename)
        if len(writes) == 2:
            with open(filename, "wb") as f:
                f.write(b"partial")
            raise OSError(28, "No space left on device")
        return original(tensors, filename, metadata=metadata)

    monkeypatch.setattr(formats, "save_file", disk_full_on_second)
    with pytest.raises(OSError, match="T-LoRA Train: could not write .*step00004.*No space left.*previous checkpoint \\(tlora/test_00001_step00002.safetensors\\), which is intact"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", steps=6, save_every=2)
    assert saved_files(loras_dir) == ["tlora/test_00001_step00002.safetensors"]
    assert load_tlora(str(loras_dir / "tlora/test_00001_step00002.safetensors")).adapter.training_steps == 2
    assert not [p for p in os.listdir(loras_dir / "tlora") if p.startswith(".tmp")]


def test_nothing_is_written_outside_the_loras_folder(tiny, helpers, loras_dir):
    with pytest.raises(ValueError, match="filename_prefix '../../escape' points outside the loras folder"):
        train(helpers, tiny, tiny.build("sd15"), "sd15", filename_prefix="../../escape")
    assert saved_files(loras_dir.parent) == []


# -- nodes/compat.py: each branch on the ComfyUI version that takes it ---------------------------------
def test_training_runs_with_comfyuis_training_flag_set_and_restores_it(tiny, helpers, loras_dir, monkeypatch):
    """ComfyUI 0.33's FLUX RoPE/attention kernels have no backward unless in_training is set."""
    import comfy.model_management as mm

    from tlora_nodes.nodes import training_patches

    if not hasattr(mm, "in_training"):
        pytest.skip("this ComfyUI has no in_training flag (older than 0.33): its models always differentiate")
    seen = []
    take = training_patches.OutputCapture.take

    def recording_take(self):
        seen.append(mm.in_training)
        if len(seen) == 3:
            raise RuntimeError("boom")
        return take(self)

    monkeypatch.setattr(training_patches.OutputCapture, "take", recording_take)
    model = tiny.build("flux")
    train(helpers, tiny, model, "flux", steps=2, gradient_checkpointing=True)  # failed before: no autograd formula
    assert seen == [True, True] and mm.in_training is False
    with pytest.raises(RuntimeError, match="boom"):
        train(helpers, tiny, model, "flux", steps=2)
    assert mm.in_training is False  # restored after a failed run too


def test_comfyui_without_the_training_flag_is_left_alone(tiny, helpers, loras_dir):
    import comfy.model_management as mm

    if hasattr(mm, "in_training"):
        pytest.skip("this ComfyUI has the in_training flag (the test above covers it)")
    train(helpers, tiny, tiny.build("flux"), "flux", steps=2)
    assert not hasattr(mm, "in_training")
