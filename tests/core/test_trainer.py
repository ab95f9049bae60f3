"""The training loop on a toy problem: learning, determinism, exact resume, cancel, divergence."""

from __future__ import annotations

import copy

import pytest
import torch

from tlora_nodes.tlora_core import TLoRA, TLoRAConfig, load_tlora, save_tlora
from tlora_nodes.tlora_core.trainer import NoGradient, Trainer, TrainingDiverged, TrainSettings, recipe_from


def toy(variant="vanilla", seed=0):
    """One 16->12 layer that must learn a fixed linear map, with the rank of each sample
    following its timestep (the T-LoRA schedule)."""
    config = TLoRAConfig(variant=variant, rank=8, min_rank=2, init="principal")
    adapter = TLoRA.create(config, {"layer": (16, 12)}, seed=seed)
    g = torch.Generator().manual_seed(99)
    inputs = torch.randn(3, 16, generator=g)  # three "training images"
    target_map = torch.randn(12, 16, generator=g) * 0.1

    def compute_gradients(batch):
        x = inputs[batch.indices] + 0.01 * batch.stacked_noise()
        masks = adapter.schedule.mask_at(batch.timesteps)  # one mask per row
        loss = ((adapter.layer("layer").delta(x, masks) - x @ target_map.T) ** 2).mean()
        loss.backward()
        return loss.item()

    return adapter, compute_gradients


class Recorder:
    def __init__(self, stop_after=None):
        self.steps, self.saves, self.stop_after = [], [], stop_after

    def on_step(self, step, total, loss):
        self.steps.append((step, total, loss))

    def should_stop(self):
        return self.stop_after is not None and len(self.steps) >= self.stop_after

    def save(self, checkpoint):
        self.saves.append((checkpoint.step, checkpoint.reason))


def params(adapter):
    return {k: v.clone() for k, v in adapter.state_dict().items()}


SHAPES = [(16,)] * 3  # three samples of one shape


def train(steps, seed=0, variant="vanilla", callbacks=None, **kw):
    adapter, compute = toy(variant)
    kw.setdefault("learning_rate", 0.05)
    trainer = Trainer(adapter, TrainSettings(steps=steps, batch_size=2, seed=seed, **kw), SHAPES, callbacks)
    result = trainer.run(compute)
    return adapter, trainer, result


@pytest.mark.parametrize("variant", ["vanilla", "tlora"])
def test_loss_falls_on_a_toy_problem(variant):
    _, _, result = train(60, variant=variant)
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 60
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_same_seed_same_result_and_another_seed_differs():
    a, _, ra = train(15, seed=3)
    b, _, rb = train(15, seed=3)
    c, _, _ = train(15, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(params(a).values(), params(b).values()))
    assert ra.losses == rb.losses
    assert not all(torch.equal(x, y) for x, y in zip(params(a).values(), params(c).values()))


def test_draws_cover_the_timestep_range():
    adapter, compute = toy()
    trainer = Trainer(adapter, TrainSettings(steps=1, batch_size=500), SHAPES)
    batch = trainer.draw()
    assert batch.timesteps.min() >= 0 and batch.timesteps.max() <= 999
    assert batch.timesteps.min() < 50 and batch.timesteps.max() > 950  # uniform over [0, 1000)
    assert set(batch.indices.tolist()) == {0, 1, 2}
    assert batch.stacked_noise().shape == (500, 16)


def test_a_timestep_range_draws_only_inside_it_and_consumes_the_generator_like_the_full_range():
    """One expert of a two-expert model trains on its own timesteps only; everything else a
    seed draws (samples, noise, later steps) stays what the full range draws."""
    adapter, _ = toy()
    full = Trainer(adapter, TrainSettings(steps=1, batch_size=500, seed=4), SHAPES)
    high = Trainer(adapter, TrainSettings(steps=1, batch_size=500, seed=4, timestep_range=(875, 1000)), SHAPES)
    low = Trainer(adapter, TrainSettings(steps=1, batch_size=500, seed=4, timestep_range=(0, 875)), SHAPES)
    a, b, c = full.draw(), high.draw(), low.draw()
    assert b.timesteps.min() == 875 and b.timesteps.max() == 999  # 500 draws over 125 values reach both ends
    assert 0 <= c.timesteps.min() < 20 and 855 < c.timesteps.max() <= 874
    for x in (b, c):
        assert torch.equal(x.indices, a.indices) and torch.equal(x.stacked_noise(), a.stacked_noise())
    assert torch.equal(high.generator.get_state(), full.generator.get_state())


def test_the_full_timestep_range_is_the_default_and_draws_exactly_what_it_always_drew():
    adapter, _ = toy()
    explicit = TrainSettings(steps=1, batch_size=7, seed=2, timestep_range=(0, 1000))
    assert explicit.timestep_range is None and explicit == TrainSettings(steps=1, batch_size=7, seed=2)
    g = torch.Generator().manual_seed(2)  # the draw order of every run so far: samples, timesteps, noise
    indices, timesteps = torch.randint(0, 3, (7,), generator=g), torch.randint(0, 1000, (7,), generator=g)
    batch = Trainer(adapter, explicit, SHAPES).draw()
    assert torch.equal(batch.indices, indices) and torch.equal(batch.timesteps, timesteps)
    assert torch.equal(batch.stacked_noise(), torch.randn((7, 16), generator=g))


@pytest.mark.parametrize("variant", ["vanilla", "tlora"])
def test_resume_from_a_checkpoint_file_reproduces_the_uninterrupted_run(tmp_path, variant):
    full, full_trainer, _ = train(12, variant=variant)
    # first run: cancelled after 5 steps, which writes a checkpoint with the training state
    adapter, compute = toy(variant)
    rec = Recorder(stop_after=5)
    trainer = Trainer(adapter, TrainSettings(steps=12, learning_rate=0.05, batch_size=2), SHAPES, rec)
    path = str(tmp_path / "ckpt.safetensors")
    rec.save = lambda checkpoint: save_tlora(path, checkpoint.adapter, training_state=checkpoint.training_state)
    result = trainer.run(compute)
    assert result.cancelled and result.steps_done == 5
    # second run: a fresh process would rebuild everything from the file
    loaded = load_tlora(path)
    resumed_adapter = loaded.adapter
    # the toy's loss closure binds its own adapter: give that adapter the loaded values
    resumed_adapter2, compute3 = toy(variant)
    resumed_adapter2.load_state_dict(resumed_adapter.state_dict())
    resumed_adapter2.training_steps = resumed_adapter.training_steps
    trainer2 = Trainer(resumed_adapter2, TrainSettings(steps=12, learning_rate=0.05, batch_size=2), SHAPES)
    trainer2.load_state_dict(loaded.training_state)
    result2 = trainer2.run(compute3)
    assert result2.steps_done == 12 and resumed_adapter2.training_steps == 12
    assert all(torch.equal(x, y) for x, y in zip(params(full).values(), params(resumed_adapter2).values()))
    assert result2.losses == full_trainer.losses


def test_checkpoints_every_n_steps_and_at_the_last_step():
    rec = Recorder()
    train(10, callbacks=rec, save_every=4)
    assert rec.saves == [(4, "checkpoint"), (8, "checkpoint"), (10, "checkpoint")]
    rec = Recorder()
    train(8, callbacks=rec, save_every=4)
    assert rec.saves == [(4, "checkpoint"), (8, "checkpoint")]  # the last step is saved once
    rec = Recorder()
    train(5, callbacks=rec, save_every=0)
    assert rec.saves == [(5, "checkpoint")]
    assert [s[0] for s in rec.steps] == list(range(1, 6))


def test_cancel_stops_within_one_step_and_saves_what_was_learned():
    rec = Recorder(stop_after=3)
    adapter, trainer, result = train(10, callbacks=rec)
    assert result.cancelled and result.steps_done == 3
    assert rec.saves == [(3, "cancelled")]
    assert adapter.training_steps == 3


def test_divergence_names_the_step_and_keeps_the_last_good_values():
    adapter, compute = toy()
    calls = []

    def sometimes_nan(batch):
        calls.append(batch.step)
        loss = compute(batch)
        return float("nan") if batch.step == 4 else loss

    rec = Recorder()
    trainer = Trainer(adapter, TrainSettings(steps=10, learning_rate=0.05, batch_size=2, save_every=2), SHAPES, rec)
    snapshots = {}
    original_save = rec.save
    rec.save = lambda checkpoint: (original_save(checkpoint), snapshots.__setitem__(checkpoint.step, params(adapter)))
    with pytest.raises(TrainingDiverged, match="diverged at step 4.*checkpoint of step 3 is kept.*Lower 'learning_rate'") as err:
        trainer.run(sometimes_nan)
    assert err.value.step == 4 and err.value.last_checkpoint_step == 3
    assert trainer.step == 3  # step 4 was not applied
    # the last good step (3) was not saved yet: it is, so nothing learned is lost
    assert rec.saves == [(2, "checkpoint"), (3, "diverged")]
    assert all(torch.equal(snapshots[3][k], v) for k, v in params(adapter).items())
    assert all(torch.isfinite(v).all() for v in params(adapter).values())


def test_divergence_right_after_a_checkpoint_writes_nothing_new():
    adapter, compute = toy()
    rec = Recorder()
    trainer = Trainer(adapter, TrainSettings(steps=10, learning_rate=0.05, batch_size=2, save_every=2), SHAPES, rec)
    with pytest.raises(TrainingDiverged, match="diverged at step 3.*checkpoint of step 2 is kept"):
        trainer.run(lambda batch: float("nan") if batch.step == 3 else compute(batch))
    assert rec.saves == [(2, "checkpoint")]


def test_nan_gradient_is_divergence_too():
    adapter, compute = toy()

    def nan_grad(batch):
        loss = compute(batch)
        next(adapter.trainable_parameters()).grad[0, 0] = float("inf")
        return loss

    trainer = Trainer(adapter, TrainSettings(steps=3), SHAPES)
    before = params(adapter)
    with pytest.raises(TrainingDiverged, match="step 1"):
        trainer.run(nan_grad)
    assert all(torch.equal(before[k], v) for k, v in params(adapter).items())


def test_cancel_raised_inside_a_step_ends_as_a_cancel_and_resumes_exactly():
    """ComfyUI 0.33 raises its interrupt from inside the model call: the step is dropped (its
    draw too), the run ends cancelled at the step before, and resuming matches a plain run."""
    full, full_trainer, _ = train(8)
    adapter, compute = toy()
    saved = {}

    class Interrupted(Exception):
        pass

    class CancelInStep5(Recorder):
        def should_stop(self):
            return len(self.steps) >= 4 and saved.get("raised", False)

    rec = CancelInStep5()

    def interrupted_at_5(batch):
        if batch.step == 5 and "raised" not in saved:
            saved["raised"] = True
            raise Interrupted()
        return compute(batch)

    settings = TrainSettings(steps=8, learning_rate=0.05, batch_size=2)
    trainer = Trainer(adapter, settings, SHAPES, rec)
    rec.save = lambda c: saved.update(step=c.step, reason=c.reason, state=c.training_state, params=params(c.adapter))
    result = trainer.run(interrupted_at_5)
    assert result.cancelled and result.steps_done == 4 and (saved["step"], saved["reason"]) == (4, "cancelled")
    assert_resuming_equals(saved, settings, full, full_trainer)


def assert_resuming_equals(saved: dict, settings: TrainSettings, full, full_trainer) -> None:
    """A run resumed from what ``saved`` holds (params and training state) ends exactly where the
    uninterrupted run ``full`` did: same parameters, same losses."""
    resumed, compute = toy()
    resumed.load_state_dict(saved["params"])
    trainer = Trainer(resumed, settings, SHAPES)
    trainer.load_state_dict(saved["state"])
    trainer.run(compute)
    assert all(torch.equal(x, y) for x, y in zip(params(full).values(), params(resumed).values()))
    assert trainer.losses == full_trainer.losses


def test_a_failing_step_saves_progress_then_reraises():
    adapter, compute = toy()

    def oom_at_5(batch):
        if batch.step == 5:
            raise MemoryError("out of memory")
        return compute(batch)

    rec = Recorder()
    trainer = Trainer(adapter, TrainSettings(steps=10), SHAPES, rec)
    with pytest.raises(MemoryError):
        trainer.run(oom_at_5)
    assert rec.saves == [(4, "error")]


@pytest.mark.parametrize("failure", ["error", "diverged"])
def test_resuming_after_a_failed_step_retries_its_batch_and_matches_the_uninterrupted_run(failure):
    full, full_trainer, _ = train(8)
    adapter, compute = toy()
    rec = Recorder()
    saved = {}

    def fails_once_at_5(batch):
        if batch.step == 5 and not saved:
            if failure == "error":
                raise MemoryError("out of memory")
            compute(batch)
            return float("nan")
        return compute(batch)

    settings = TrainSettings(steps=8, learning_rate=0.05, batch_size=2)
    trainer = Trainer(adapter, settings, SHAPES, rec)
    rec.save = lambda c: saved.update(step=c.step, reason=c.reason, state=c.training_state, params=params(c.adapter))
    with pytest.raises((MemoryError, TrainingDiverged)):
        trainer.run(fails_once_at_5)
    assert (saved["step"], saved["reason"]) == (4, failure)
    # resume from what was saved: the same result as a run that never failed
    assert_resuming_equals(saved, settings, full, full_trainer)


def test_no_gradient_reaching_the_adapter_is_named_not_called_divergence():
    adapter, _ = toy()
    trainer = Trainer(adapter, TrainSettings(steps=3), SHAPES)
    with pytest.raises(NoGradient, match="no gradient reached the adapter at step 1"):
        trainer.run(lambda batch: 1.0)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(steps=0), "steps (0) must be >= 1"),
        (dict(learning_rate=0.0), "learning_rate (0.0) must be > 0"),
        (dict(batch_size=0), "batch_size (0) must be >= 1"),
        (dict(save_every=-1), "save_every (-1) must be >= 0"),
        (dict(optimizer="sgd"), "optimizer 'sgd' is not one of adamw, prodigy"),
        (dict(max_grad_norm=0.0), "max_grad_norm (0.0) must be > 0"),
        (dict(first_timestep=2), "first_timestep (2) must be 0"),
        (dict(timestep_range=(875, 875)), "timestep_range ((875, 875)) must be whole timesteps with 0 <= first < end <= 1000"),
        (dict(timestep_range=(900, 1001)), "0 <= first < end <= 1000"),
        (dict(timestep_range=(0.5, 10)), "must be whole timesteps"),
        (dict(timestep_range=(1,)), "must be two whole numbers"),
    ],
)
def test_settings_reject_bad_values(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        TrainSettings(**kwargs)
    assert fragment in str(err.value)


def test_resume_state_for_another_adapter_is_refused():
    _, trainer, _ = train(3)
    state = trainer.state_dict()
    other = TLoRA.create(TLoRAConfig(variant="tlora", rank=8, min_rank=2), {"a": (16, 12), "b": (16, 12)})
    t2 = Trainer(other, TrainSettings(steps=5), SHAPES)
    # Vanilla has 2 trainable tensors, this Ortho adapter 6: the state fits only by accident
    state = {k: v for k, v in state.items()}
    state["optimizer.9.exp_avg"] = torch.zeros(1)
    with pytest.raises(ValueError, match="optimizer state is for 10 parameters, this adapter has 6"):
        t2.load_state_dict(copy.copy(state))


# -- finished runs continue ----------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "prodigy"])
def test_a_finished_run_continued_to_more_steps_equals_one_longer_run(tmp_path, optimizer):
    """The last step's checkpoint (written even with save_every 0) resumed with a larger
    ``steps`` ends exactly where one uninterrupted run of that length does."""
    lr = 1.0 if optimizer == "prodigy" else 0.05
    full, full_trainer, _ = train(14, optimizer=optimizer, learning_rate=lr)
    adapter, compute = toy()
    files = {}
    rec = Recorder()
    rec.save = lambda c: (save_tlora(str(tmp_path / f"{c.step}.safetensors"), c.adapter, training_state=c.training_state),
                          files.__setitem__(c.step, c.reason))
    short = Trainer(adapter, TrainSettings(steps=9, learning_rate=lr, batch_size=2, optimizer=optimizer), SHAPES, rec)
    assert not short.run(compute).cancelled
    assert files == {9: "checkpoint"}
    loaded = load_tlora(str(tmp_path / "9.safetensors"))
    continued, compute2 = toy()
    continued.load_state_dict(loaded.adapter.state_dict())
    continued.training_steps = loaded.adapter.training_steps
    longer = Trainer(continued, TrainSettings(steps=14, learning_rate=lr, batch_size=2, optimizer=optimizer), SHAPES)
    longer.load_state_dict(loaded.training_state)
    longer.run(compute2)
    assert continued.training_steps == 14
    assert all(torch.equal(x, y) for x, y in zip(params(full).values(), params(continued).values()))
    assert longer.losses == full_trainer.losses


def test_a_run_in_parts_equals_one_run():
    full, full_trainer, _ = train(10, save_every=3)
    adapter, compute = toy()
    rec = Recorder()
    trainer = Trainer(adapter, TrainSettings(steps=10, learning_rate=0.05, batch_size=2, save_every=3), SHAPES, rec)
    for stop_at in (2, 2, 7, 50):
        trainer.run(compute, stop_at=stop_at)
    assert trainer.step == 10 and rec.saves == [(3, "checkpoint"), (6, "checkpoint"), (9, "checkpoint"), (10, "checkpoint")]
    assert all(torch.equal(x, y) for x, y in zip(params(full).values(), params(adapter).values()))
    assert trainer.losses == full_trainer.losses


def test_stop_between_parts_saves_the_step_once():
    adapter, compute = toy()
    rec = Recorder()
    trainer = Trainer(adapter, TrainSettings(steps=10, batch_size=2, save_every=4), SHAPES, rec)
    trainer.run(compute, stop_at=4)
    assert trainer.stop().cancelled and rec.saves == [(4, "checkpoint")]  # step 4 is saved already
    trainer.run(compute, stop_at=6)
    assert trainer.stop().steps_done == 6 and rec.saves[-1] == (6, "cancelled")


# -- the recipe: optimizer, clipping, timestep range -------------------------------------------------------
def test_prodigy_runs_with_the_reference_settings_and_learns():
    pytest.importorskip("prodigyopt")
    _, trainer, result = train(200, optimizer="prodigy", learning_rate=1.0)  # its warm-up needs ~100 steps here
    group = trainer.optimizer.param_groups[0]
    # the reference FLUX run.py: lr 1, betas (0.9, 0.999), weight decay 1e-4 decoupled, eps 1e-8,
    # bias correction and safeguard warm-up on
    assert type(trainer.optimizer).__name__ == "Prodigy"
    assert (group["lr"], group["betas"], group["weight_decay"], group["eps"]) == (1.0, (0.9, 0.999), 1e-4, 1e-8)
    assert group["decouple"] and group["use_bias_correction"] and group["safeguard_warmup"]
    assert group["d"] > group["d0"]  # it adapted its step size
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_prodigy_checkpoint_carries_its_step_size_estimate():
    pytest.importorskip("prodigyopt")
    _, trainer, _ = train(5, optimizer="prodigy", learning_rate=1.0)
    state = trainer.state_dict()
    group = trainer.optimizer.param_groups[0]
    for key in ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k"):
        assert state[f"optimizer_group.0.{key}"].item() == group[key] and type(state[f"optimizer_group.0.{key}"].item()) is type(group[key])
    assert state["optimizer_value.0.step"].item() == 5


def test_missing_prodigy_package_names_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_prodigy(name, *args, **kwargs):
        if name == "prodigyopt":
            raise ImportError("No module named 'prodigyopt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prodigy)
    adapter, _ = toy()
    with pytest.raises(ImportError, match="needs the 'prodigyopt' package.*pip install prodigyopt.*or choose optimizer AdamW"):
        Trainer(adapter, TrainSettings(optimizer="prodigy", learning_rate=1.0), SHAPES)


def test_gradient_norm_is_clipped_to_max_grad_norm():
    adapter, compute = toy()
    trainer = Trainer(adapter, TrainSettings(steps=1, batch_size=2, max_grad_norm=1e-3), SHAPES)
    raw = {}

    def remember(batch):
        loss = compute(batch)
        raw.update({id(p): p.grad.clone() for p in trainer.params if p.grad is not None})
        return loss

    trainer.run(remember)
    unclipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in raw.values()]))
    assert unclipped > 1e-3  # clipping has something to do
    for p in trainer.params:
        if p.grad is not None:  # what the optimizer stepped with: the same direction, scaled to norm 1e-3
            expected = raw[id(p)].double() * (1e-3 / (unclipped + 1e-6))
            torch.testing.assert_close(p.grad.double(), expected, rtol=1e-5, atol=1e-12)


def test_flow_timesteps_are_drawn_from_1_to_1000():
    adapter, _ = toy()
    trainer = Trainer(adapter, TrainSettings(steps=1, batch_size=20000, first_timestep=1), SHAPES)
    t = trainer.draw().timesteps
    assert int(t.min()) == 1 and int(t.max()) == 1000  # sigma = 1 is trained, sigma = 0 never
    trainer = Trainer(adapter, TrainSettings(steps=1, batch_size=20000), SHAPES)
    t = trainer.draw().timesteps
    assert int(t.min()) == 0 and int(t.max()) == 999


def test_recipe_round_trips_through_metadata_and_old_files_get_the_old_rule():
    settings = TrainSettings(optimizer="prodigy", learning_rate=1.0, max_grad_norm=1.0, first_timestep=1)
    got = recipe_from(settings.recipe())
    assert TrainSettings(learning_rate=1.0, **got) == settings
    assert recipe_from({"format": "tlora-nodes"}) == {"optimizer": "adamw", "max_grad_norm": None, "first_timestep": 0}
    assert TrainSettings(**recipe_from(TrainSettings().recipe())) == TrainSettings()


# -- samples of different shapes (resolution buckets) -------------------------------------------------------
def test_a_batch_of_one_shape_draws_exactly_as_before():
    adapter, _ = toy()
    trainer = Trainer(adapter, TrainSettings(steps=1, batch_size=3, seed=5), [(4, 6, 6)] * 2)
    g = torch.Generator().manual_seed(5)
    indices = torch.randint(0, 2, (3,), generator=g)
    timesteps = torch.randint(0, 1000, (3,), generator=g)
    noise = torch.randn((3, 4, 6, 6), generator=g)
    batch = trainer.draw()
    assert torch.equal(batch.indices, indices) and torch.equal(batch.timesteps, timesteps)
    assert torch.equal(batch.stacked_noise(), noise)


def test_samples_of_different_shapes_get_noise_of_their_own_shape():
    adapter, _ = toy()
    shapes = [(4, 6, 6), (4, 8, 4), (4, 6, 6)]
    trainer = Trainer(adapter, TrainSettings(steps=1, batch_size=16, seed=1), shapes)
    batch = trainer.draw()
    assert [tuple(n.shape) for n in batch.noise] == [shapes[int(i)] for i in batch.indices]
    again = Trainer(adapter, TrainSettings(steps=1, batch_size=16, seed=1), shapes).draw()
    assert all(torch.equal(a, b) for a, b in zip(batch.noise, again.noise))
