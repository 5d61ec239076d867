"""The loop's rules and pieces, each on its own, without a training run: stopping, logging and
validation cadence, the run state's transitions and checkpoint round trip, the log window, the
budget overrides, the Learner protocol and one Trainer step."""
import inspect
import math

import numpy as np
import pytest
import torch

from rnn_train.config import build_config
from rnn_train.data.dataset import Dataset
from rnn_train.data.vocab import Vocab
from rnn_train.training.learner import Learner, TorchLearner
from rnn_train.training.logwindow import LogWindow
from rnn_train.training.monitor import Monitor
from rnn_train.training.rules import (LIMIT_KEYS, budget_overrides, planned_steps, should_log, should_stop,
                                      should_validate, validates_each_epoch)
from rnn_train.training.rundir import RunDir
from rnn_train.training.schedule import PlateauState
from rnn_train.training.state import RunState, capture_rng, restore_rng
from rnn_train.training.trainer import Trainer
from rnn_train.training.world import World
from rnn_train.teaching.numpy_backend import NumpyLearner

CPU = torch.device("cpu")


def cfg_with(*overrides):
    return build_config({"train": {"max_steps": 0, "epochs": 0}}, ["train.max_steps=100", *overrides])


# ---- should_stop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, state, reason", [
    (["train.max_steps=10"], RunState(step=9), ""),
    (["train.max_steps=10"], RunState(step=10), "max_steps"),
    (["train.max_steps=0", "train.max_tokens=480"], RunState(step=999, tokens=479), ""),
    (["train.max_steps=0", "train.max_tokens=480"], RunState(tokens=480), "max_tokens"),
    (["train.max_time=2.5"], RunState(train_seconds=2.49), ""),
    (["train.max_time=2.5"], RunState(train_seconds=2.5), "max_time"),
    (["train.max_steps=0", "train.epochs=2"], RunState(epoch=1, step=10**6), ""),
    (["train.max_steps=0", "train.epochs=2"], RunState(epoch=2), "epochs"),
    (["train.patience=3"], RunState(evals_since_best=2), ""),
    (["train.patience=3"], RunState(evals_since_best=3), "early_stopping"),
    (["train.patience=0"], RunState(evals_since_best=50), ""),  # 0 = off
    # several limits reached at once: the first in the documented order names the stop
    (["train.max_steps=10", "train.max_tokens=10", "train.epochs=1"], RunState(step=10, tokens=10, epoch=1),
     "max_steps"),
    (["train.max_steps=0", "train.max_tokens=10", "train.epochs=1"], RunState(tokens=10, epoch=1), "max_tokens"),
])
def test_should_stop_names_the_first_limit_reached(overrides, state, reason):
    assert should_stop(state, cfg_with(*overrides)) == reason


def test_every_limit_key_is_a_train_key_and_budget_overrides_switch_the_others_off():
    cfg = build_config({}, budget_overrides(max_tokens=1000))
    t = cfg.train
    assert (t.max_tokens, t.max_steps, t.epochs, t.max_time, t.patience) == (1000, 0, 0, 0.0, 0)
    cfg = build_config({"train": {"patience": 4, "epochs": 9}}, budget_overrides(max_time=30))
    assert (cfg.train.max_time, cfg.train.max_tokens, cfg.train.epochs, cfg.train.patience) == (30.0, 0, 0, 0)
    assert {o.split("=")[0] for o in budget_overrides(max_time=1.5)} == set(LIMIT_KEYS)
    assert "train.max_time=1.5" in budget_overrides(max_time=1.5)
    with pytest.raises(ValueError):
        budget_overrides(max_tokens=5, max_time=5)


# ---- cadence ---------------------------------------------------------------------------------------


def test_logging_and_validation_cadence():
    cfg = cfg_with("log.log_every=5", "train.eval_every=20")
    assert [s for s in range(1, 61) if should_log(s, cfg)] == list(range(5, 61, 5))
    assert [s for s in range(1, 61) if should_validate(s, cfg)] == [20, 40, 60]
    assert not validates_each_epoch(cfg)
    per_epoch = cfg_with("train.eval_every=0")
    assert not any(should_validate(s, per_epoch) for s in range(1, 100)) and validates_each_epoch(per_epoch)
    every = cfg_with("log.log_every=1")
    assert all(should_log(s, every) for s in range(1, 10))


def test_planned_steps_is_the_first_limit_in_updates():
    # 1,000 characters, batch 4 x 10: a random epoch has (1000 - 9 - 1) // 10 // 4 = 24 batches at worst
    base = ["data.batch_size=4", "data.num_steps=10", "data.partition=random"]
    assert planned_steps(cfg_with(*base, "train.max_steps=100"), 1000) == 100
    assert planned_steps(cfg_with(*base, "train.epochs=2"), 1000) == 48
    assert planned_steps(cfg_with(*base, "train.max_steps=0", "train.max_tokens=1000"), 1000) == 25  # ceil(1000/40)
    assert planned_steps(cfg_with(*base, "train.max_steps=0", "train.max_time=5"), 1000) == 0  # unknown


# ---- RunState ----------------------------------------------------------------------------------------


def test_run_state_transitions():
    s = RunState()
    s.advance(48)
    s.advance(48)
    assert (s.step, s.batch_in_epoch, s.tokens, s.epoch) == (2, 2, 96, 0)
    s.hidden = torch.ones(1, 4, 3)
    s.end_epoch()
    assert (s.epoch, s.batch_in_epoch, s.hidden, s.step) == (1, 0, None, 2)

    assert s.record_validation(2.0, plateau_factor=0.5, plateau_patience=0) is True
    assert (s.best_val_loss, s.evals_since_best, s.val_loss) == (2.0, 0, 2.0)
    assert s.record_validation(2.5, 0.5, 0) is False
    assert (s.best_val_loss, s.evals_since_best, s.val_loss) == (2.0, 1, 2.5)
    assert s.plateau.scale == 0.5  # patience 0: the first bad validation cuts the LR
    assert s.record_validation(1.0, 0.5, 0) is True and s.evals_since_best == 0


def test_run_state_round_trips_through_a_checkpoint_dict():
    s = RunState(step=7, epoch=1, batch_in_epoch=3, tokens=336, train_seconds=1.25, best_val_loss=2.5,
                 evals_since_best=2, val_loss=2.75, plateau=PlateauState(2.5, 1, 0.5),
                 hidden=(torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 4, 3)), rng=capture_rng(CPU))
    ckpt = s.to_checkpoint({"model": {"w": torch.ones(2)}, "optimizer": {}}, {"train": {"lr": 1.0}}, ["<unk>", "a"])
    assert ckpt["config"] == {"train": {"lr": 1.0}} and ckpt["vocab"] == ["<unk>", "a"]
    assert not ckpt["hidden"][0].requires_grad  # stored detached
    back = RunState.from_checkpoint(ckpt)
    for name in ("step", "epoch", "batch_in_epoch", "tokens", "train_seconds", "best_val_loss", "evals_since_best",
                 "val_loss", "plateau"):
        assert getattr(back, name) == getattr(s, name), name
    assert all(torch.equal(a, b) for a, b in zip(back.hidden, s.hidden))
    # an old checkpoint without val_loss reads as "not validated yet"
    del ckpt["val_loss"]
    assert math.isnan(RunState.from_checkpoint(ckpt).val_loss)


def test_rng_capture_and_restore_replay_the_same_draws():
    saved = capture_rng(CPU)
    first = torch.rand(3)
    restore_rng(saved, CPU)
    assert torch.equal(torch.rand(3), first)


# ---- the log window ------------------------------------------------------------------------------------


def test_log_window_means_over_an_interval_and_over_the_run():
    w = LogWindow(CPU, clip_norm=1.0)
    assert w.flush() is None and math.isnan(w.last_loss) and w.run_clipped_fraction == 0.0
    for loss, norm in ((2.0, 0.5), (4.0, 3.0)):
        w.add(torch.tensor(loss), torch.tensor(norm))
        w.timed(tokens=100, seconds=0.5)
    m = w.flush()
    assert (m.loss, m.grad_norm, m.clipped_fraction, m.tokens_per_s) == (3.0, 1.75, 0.5, 200.0)
    w.add(torch.tensor(1.0), torch.tensor(2.0))
    w.timed(100, 1.0)
    assert w.flush().loss == 1.0 and w.last_loss == 1.0 and w.last_grad_norm == 2.0
    assert w.run_clipped_fraction == pytest.approx(2 / 3)
    off = LogWindow(CPU, clip_norm=0.0)  # clipping off: nothing counts as clipped
    off.add(torch.tensor(1.0), torch.tensor(99.0))
    assert off.flush().clipped_fraction == 0.0


# ---- processes -----------------------------------------------------------------------------------------


def test_world_gives_each_rank_its_block_of_rows():
    batch = np.arange(12).reshape(4, 3)
    assert World().is_writer and World().rows(batch) is not None and np.array_equal(World().rows(batch), batch)
    halves = [World(r, 2).rows(batch) for r in range(2)]
    assert np.array_equal(np.concatenate(halves), batch) and halves[1][0, 0] == 6
    assert not World(1, 2).is_writer
    with pytest.raises(ValueError):
        World(0, 3).rows(batch)


# ---- the Learner protocol and one Trainer step ----------------------------------------------------------


def test_both_backends_are_learners():
    """Both backends provide every member of the protocol, with the protocol's parameters."""
    torch_cfg = build_config({"model": {"cell": "rnn", "hidden_size": 4}, "train": {"max_steps": 1}})
    numpy_cfg = build_config({"model": {"cell": "rnn", "hidden_size": 4, "backend": "numpy"},
                              "train": {"optimizer": "sgd", "max_steps": 1}})
    methods = ("set_lr", "train_step", "evaluate", "torch_model", "state_dict", "load_state_dict")
    for learner in (TorchLearner(torch_cfg, 5, CPU), NumpyLearner(numpy_cfg, 5, CPU)):
        assert isinstance(learner, Learner)
        for name in methods:
            protocol = list(inspect.signature(getattr(Learner, name)).parameters)[1:]  # without self
            assert list(inspect.signature(getattr(learner, name)).parameters) == protocol, (learner, name)
        assert learner.kernel in ("native", "numpy") or learner.kernel.startswith("fused-"), learner.kernel
    assert NumpyLearner(numpy_cfg, 5, CPU).kernel == "numpy"


def _tiny_dataset(n=400, vocab_size=6):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab_size, n).astype(np.uint8)
    vocab = Vocab(["<unk>", *"abcde"])
    return Dataset(vocab, ids[:300], ids[300:], ids[:0], n, 0.0)


def test_a_trainer_step_advances_the_state_and_carries_the_hidden_state(tmp_path):
    cfg = build_config({"data": {"batch_size": 2, "num_steps": 5, "partition": "sequential"},
                        "model": {"cell": "gru", "hidden_size": 4},
                        "train": {"max_steps": 10, "schedule": "cosine", "warmup_steps": 4, "lr": 0.1},
                        "log": {"log_every": 2, "sample_length": 0, "tensorboard": False}})
    data = _tiny_dataset()
    learner = TorchLearner(cfg, len(data.vocab), CPU)
    trainer = Trainer(cfg, learner, data, RunState(), RunDir(tmp_path), Monitor(None, quiet=True), CPU)
    x, y = next(iter(trainer.epoch_batches()))
    loss = trainer.train_step(x, y)
    s = trainer.state
    assert (s.step, s.batch_in_epoch, s.tokens) == (1, 1, 10) and s.train_seconds > 0
    assert trainer.lr == pytest.approx(0.1 / 4)  # warmup step 1 of 4
    assert s.hidden.shape == (1, 2, 4) and not s.hidden.requires_grad
    assert abs(float(loss) - math.log(len(data.vocab))) < 0.5  # untrained: about ln V
    assert trainer.window.steps == 1 and trainer.window.flush().loss == pytest.approx(float(loss))
    assert not list(tmp_path.iterdir())  # a step writes nothing


@pytest.mark.parametrize("clip", [0.0, 0.05, 1e6])  # off, clipping every step, never reached
def test_a_torch_step_clips_exactly_as_torchs_clip_grad_norm(clip):
    """The learner skips torch's multiply by a factor of exactly 1; the weights and the norm it reports
    are those of clip_grad_norm_ (or get_total_norm, clipping off) to the bit, step after step."""
    cfg = build_config({"data": {"batch_size": 4, "num_steps": 6}, "model": {"cell": "lstm", "hidden_size": 8},
                        "train": {"max_steps": 3, "clip_norm": clip, "optimizer": "sgd", "lr": 0.5}})
    learner = TorchLearner(cfg, 6, CPU)
    model = learner.model
    reference = TorchLearner(cfg, 6, CPU)
    reference.model.load_state_dict(model.state_dict())
    rng = np.random.default_rng(1)
    for _ in range(3):
        x, y = (rng.integers(0, 6, (4, 6)) for _ in range(2))
        _, norm, _ = learner.train_step(x, y, None)
        logits, _ = reference.model(torch.from_numpy(x), None)
        torch.nn.functional.cross_entropy(logits.reshape(-1, 6), torch.from_numpy(y).reshape(-1)).backward()
        grads = [p.grad for p in reference.params]
        expected = (torch.nn.utils.clip_grad_norm_(reference.params, clip, foreach=True) if clip > 0
                    else torch.nn.utils.get_total_norm(grads, foreach=True))
        reference.optimizer.step()
        reference.optimizer.zero_grad(set_to_none=True)
        assert torch.equal(norm, expected)
        for a, b in zip(model.parameters(), reference.model.parameters()):
            assert torch.equal(a, b)
    assert clip == 0 or (float(norm) > clip) == (clip == 0.05)  # the cases are what their comments say
