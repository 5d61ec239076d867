"""`model.backend: numpy` against the torch backend, through the real `train` pipeline.

The claim under test: the hand-written BPTT + SGD update of `rnn_train.numpy_backend` is the same
training as PyTorch's autograd + `torch.optim.SGD`, so with identical initial weights, batches and
clipping the two runs log the same losses and gradient norms and end with the same weights (in
float64). Around that: its checkpoints are ordinary ones (predict.py loads them, --resume continues
them exactly) and the command line accepts and rejects it as the config rules say.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnn_train.data.batching import batches, epoch_rng, eval_batches
from rnn_train.model.checkpoint import load_checkpoint, load_model
from rnn_train.config import build_config
from rnn_train.data.dataset import prepare_data
from rnn_train.prediction.generate import generate, next_char_distribution
from rnn_train.teaching.numpy_backend import NumpyLearner, clip_coefficient, global_norm
from rnn_train.runtime import set_seed
from rnn_train.training.learner import TorchLearner
from rnn_train.training.trainer import train
from tests.conftest import ROOT, shared_corpus

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one torch thread per test (conftest)

CLIP = 0.5  # below the typical pre-clip norm at lr 1 on these corpora, so clipping is active


def _raw(data: dict, **train_extra) -> dict:
    """A small float64 one-layer RNN with SGD, logging every step; `data` is the data section."""
    return {
        "data": {"batch_size": 8, "num_steps": 20, **data},
        "model": {"cell": "rnn", "hidden_size": 32, "dtype": "float64"},
        "train": {"optimizer": "sgd", "lr": 1.0, "clip_norm": CLIP, "max_steps": 50, "eval_every": 25,
                  "seed": 3, "device": "cpu", **train_extra},
        "log": {"log_every": 1, "sample_length": 12},
    }


def _timemachine(partition: str) -> dict:
    path = shared_corpus("timemachine/timemachine.txt")
    return {"kind": "text", "paths": [str(path)], "letters_only": True, "val_fraction": 0.05, "partition": partition}


def _pinyin(partition: str) -> dict:
    return {"kind": "pinyin", "val_fraction": 0.02, "partition": partition}


def _scalars(run_dir: Path, name: str) -> dict[int, float]:
    from rnn_train.training.events import read_series

    return dict(read_series(run_dir, name))


def _max_rel(a, b) -> float:
    """max |a - b| / |b| elementwise (b is the torch reference), over arrays or tensors."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


# ------------------------------------------------------------------------------------------------
# the headline: the same run through both backends


@pytest.mark.parametrize("corpus,partition", [
    ("timemachine", "random"),
    ("timemachine", "sequential"),
    ("pinyin", "sequential"),
])
def test_losses_and_weights_track_torch_backend(tmp_path, corpus, partition):
    data = (_timemachine if corpus == "timemachine" else _pinyin)(partition)
    runs = {}
    for backend in ("torch", "numpy"):
        cfg = build_config(_raw(data), [f"model.backend={backend}"])
        result = train(cfg, tmp_path / backend, cache_dir=tmp_path / "cache", quiet=True)
        assert result.step == 50 and result.stopped_by == "max_steps"
        runs[backend] = result

    loss = {b: _scalars(tmp_path / b, "train/loss") for b in runs}
    norm = {b: _scalars(tmp_path / b, "train/grad_norm") for b in runs}
    steps = list(range(1, 51))
    assert sorted(loss["torch"]) == sorted(loss["numpy"]) == steps  # log_every=1: one point per update
    assert sorted(norm["torch"]) == sorted(norm["numpy"]) == steps
    lt, ln = [loss["torch"][s] for s in steps], [loss["numpy"][s] for s in steps]
    nt, nn_ = [norm["torch"][s] for s in steps], [norm["numpy"][s] for s in steps]

    # The comparison means something only if the run trains and clips.
    vocab = len(load_checkpoint(tmp_path / "numpy" / "last.pt")["vocab"])
    assert abs(lt[0] - math.log(vocab)) < 0.2, "an untrained model's loss should be about ln(V)"
    assert np.mean(lt[-10:]) < lt[0] - 0.2, "50 SGD steps at lr 1 should lower the loss"
    assert any(n > CLIP for n in nt), "clipping never engaged; lower CLIP"
    assert runs["numpy"].clipped_fraction == pytest.approx(runs["torch"].clipped_fraction)
    assert runs["numpy"].clipped_fraction > 0

    assert _max_rel(ln, lt) < 1e-6
    assert _max_rel(nn_, nt) < 1e-6
    assert runs["numpy"].val_loss == pytest.approx(runs["torch"].val_loss, rel=1e-9)

    for name in ("best.pt", "last.pt"):
        wt, wn = _weights(tmp_path / "torch" / name), _weights(tmp_path / "numpy" / name)
        assert list(wn) == list(wt)  # same keys in the same order: an ordinary CharRNN state_dict
        for key in wt:
            assert wn[key].dtype == wt[key].dtype == torch.float64
            scale = wt[key].abs().max().item()
            assert (wn[key] - wt[key]).abs().max().item() <= 1e-8 * scale, key


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_cells_train_by_their_hand_written_bptt_as_torch_does(tmp_path, cell):
    """Every cell whose CellSpec has a "bptt" hook trains on the numpy backend: the GRU and the LSTM
    (its state a pair, carried between sequential batches) log torch's losses and norms to float64
    precision and end at torch's weights."""
    runs = {}
    for backend in ("torch", "numpy"):
        cfg = build_config(_raw(_pinyin("sequential"), max_steps=12, eval_every=6),
                           [f"model.backend={backend}", f"model.cell={cell}", "model.hidden_size=16"])
        runs[backend] = train(cfg, tmp_path / backend, cache_dir=tmp_path / "cache", quiet=True)
    loss = {b: _scalars(tmp_path / b, "train/loss") for b in runs}
    steps = list(range(1, 13))
    assert _max_rel([loss["numpy"][s] for s in steps], [loss["torch"][s] for s in steps]) < 1e-6
    assert runs["numpy"].val_loss == pytest.approx(runs["torch"].val_loss, rel=1e-9)
    wt, wn = _weights(tmp_path / "torch" / "last.pt"), _weights(tmp_path / "numpy" / "last.pt")
    for key in wt:
        assert (wn[key] - wt[key]).abs().max().item() <= 1e-8 * wt[key].abs().max().item(), key


def test_learner_steps_equal_torch_learner_in_float64(tmp_path):
    """The same comparison without TensorBoard's float32 scalars in between: 50 steps on real
    sequential batches, state carried, lr changing, every loss and norm to float64 precision."""
    cfg_t = build_config(_raw(_pinyin("sequential"), clip_norm=1.0))
    cfg_n = build_config(_raw(_pinyin("sequential"), clip_norm=1.0), ["model.backend=numpy"])
    data = prepare_data(cfg_t.data, tmp_path)
    set_seed(0)
    torch_l = TorchLearner(cfg_t, len(data.vocab), CPU)
    set_seed(0)
    numpy_l = NumpyLearner(cfg_n, len(data.vocab), CPU)
    for key, value in torch_l.state_dict()["model"].items():
        assert torch.equal(numpy_l.state_dict()["model"][key], value), "initial weights differ"

    s_t = s_n = None
    clipped = 0
    it = batches("sequential", data.train, 8, 20, epoch_rng(0, 0))
    for step, (x, y) in zip(range(50), it):
        lr = 1.5 if step < 25 else 0.3
        torch_l.set_lr(lr)
        numpy_l.set_lr(lr)
        l_t, n_t, s_t = torch_l.train_step(x, y, s_t)
        l_n, n_n, s_n = numpy_l.train_step(x, y, s_n)
        s_t = s_t.detach()
        clipped += float(n_t) > 1.0
        assert _max_rel(l_n, l_t) < 1e-12
        assert _max_rel(n_n, n_t) < 1e-12
        assert s_n.shape == s_t.shape and s_n.dtype == s_t.dtype
        assert (s_n - s_t).abs().max().item() < 1e-12
    assert 0 < clipped < 50, "both clipped and unclipped steps should occur"
    for key, value in torch_l.state_dict()["model"].items():
        assert (numpy_l.state_dict()["model"][key] - value).abs().max().item() < 1e-12
    val = list(eval_batches(data.val, 8, 20))
    assert numpy_l.evaluate(val) == pytest.approx(torch_l.evaluate(val), rel=1e-12)


def test_torch_model_follows_updates_and_float32_computes_in_float32():
    cfg = build_config(_raw(_pinyin("random")), ["model.backend=numpy", "model.dtype=float32"])
    set_seed(0)
    learner = NumpyLearner(cfg, 7, CPU)
    before = {k: v.clone() for k, v in learner.torch_model().state_dict().items()}
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 7, (3, 5)), rng.integers(0, 7, (3, 5))
    loss, norm, state = learner.train_step(x, y, None)
    assert state.shape == (1, 3, 32) and state.dtype == torch.float32
    assert loss.ndim == 0 and norm.ndim == 0 and math.isfinite(float(loss)) and float(norm) > 0
    after = learner.torch_model().state_dict()
    for key in before:
        assert after[key].dtype == torch.float32
        assert not torch.equal(after[key], before[key]), f"{key} did not move in torch_model()"
        assert torch.equal(after[key], learner.state_dict()["model"][key])
    # torch_model()'s own forward at the updated weights gives the loss the next step reports
    # (train_step's loss is the one before its update).
    with torch.no_grad():
        logits, _ = learner.torch_model()(torch.from_numpy(x))
    torch_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), torch.from_numpy(y).reshape(-1))
    next_loss, _, _ = learner.train_step(x, y, None)
    assert float(next_loss) == pytest.approx(float(torch_loss), rel=1e-5)
    assert float(next_loss) != pytest.approx(float(loss), rel=1e-5), "the first update changed nothing"


def test_clipping_and_norm_match_torch():
    rng = np.random.default_rng(1)
    for scale in (0.01, 10.0):  # one case inside the ball, one far outside
        grads = [rng.standard_normal(shape) * scale for shape in ((4, 3), (4,), (2, 4))]
        tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        torch_norm = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
        ours = global_norm(grads)
        assert ours == pytest.approx(float(torch_norm), rel=1e-14)
        coef = clip_coefficient(ours, 1.0)
        assert (coef < 1.0) == (scale > 1)
        for t, g in zip(tensors, grads):
            np.testing.assert_allclose(g * coef, t.grad.numpy(), rtol=1e-14, atol=0)
    assert math.isnan(clip_coefficient(float("nan"), 1.0))  # torch scales by NaN too


# ------------------------------------------------------------------------------------------------
# checkpoints: predict.py loads them, --resume continues them


def test_checkpoint_loads_for_prediction_and_generates(tmp_path):
    cfg = build_config(_raw(_pinyin("sequential"), max_steps=20, eval_every=10), ["model.backend=numpy"])
    train(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", quiet=True)
    model, vocab, cfg_back, ckpt = load_model(tmp_path / "run")
    assert cfg_back.model.backend == "numpy"
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key])
    text = generate(model, vocab, "zhong ", 30, temperature=0.8, seed=1)
    assert len(text) == 30 and all(c in vocab.itos for c in text)
    dist = next_char_distribution(model, vocab, "zhong g", top_n=5)
    assert len(dist) == 5 and 0 < sum(p for _, p in dist) <= 1 + 1e-6
    assert dist[0][1] > 1 / len(vocab), "a trained model should prefer some character after 'zhong g'"


def test_resume_of_numpy_run_ends_equal_to_uninterrupted(tmp_path):
    cfg = build_config(_raw(_pinyin("sequential"), max_steps=30, eval_every=10), ["model.backend=numpy"])
    whole = train(cfg, tmp_path / "whole", cache_dir=tmp_path / "cache", quiet=True)

    def interrupt_at_13(step: int) -> None:
        if step == 13:
            os.kill(os.getpid(), signal.SIGINT)

    cut = train(cfg, tmp_path / "cut", cache_dir=tmp_path / "cache", quiet=True, on_step=interrupt_at_13)
    assert cut.interrupted and cut.step == 13
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert ckpt["step"] == 13 and ckpt["hidden"] is not None  # sequential: the carried state is saved
    resumed = train(cfg, tmp_path / "cut", resume=ckpt, cache_dir=tmp_path / "cache", quiet=True)
    assert resumed.step == whole.step == 30 and not resumed.interrupted

    w_whole, w_resumed = _weights(tmp_path / "whole" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    w_cut = ckpt["model"]
    for key in w_whole:
        assert torch.equal(w_resumed[key], w_whole[key]), key
        assert not torch.equal(w_cut[key], w_whole[key]), "the interrupted run should not have finished"
    assert resumed.val_loss == whole.val_loss


# ------------------------------------------------------------------------------------------------
# the command line


def _train_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", "--config", "configs/debug.yaml", "--cache-dir", str(tmp_path / "cache"),
           "--quiet", f"log.dir={tmp_path}", "train.threads=1", "model.backend=numpy", "train.max_steps=20", "train.eval_every=10",
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_trains_with_numpy_backend_and_predicts(tmp_path):
    proc = _train_cli(tmp_path, "model.cell=rnn", "train.optimizer=sgd", "train.lr=0.5")
    assert proc.returncode == 0, proc.stderr
    assert "done: 20 steps" in proc.stdout
    best = tmp_path / "debug" / "best.pt"
    assert load_checkpoint(best)["config"]["model"]["backend"] == "numpy"
    pred = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(best), "--prefix", "zhong ", "-k", "15"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert pred.returncode == 0, pred.stderr
    assert pred.stdout.strip()


@pytest.mark.parametrize("overrides,mentions", [
    (("model.cell=gru", "model.num_layers=2", "train.optimizer=sgd"), "model.num_layers"),
    (("model.cell=rnn",), "train.optimizer=sgd"),  # debug.yaml says adam; numpy updates with SGD only
    (("model.cell=rnn", "train.optimizer=sgd", "model.kernel=fused"), "model.kernel must be auto with backend=numpy"),
])
def test_cli_rejects_what_numpy_backend_cannot_do(tmp_path, overrides, mentions):
    proc = _train_cli(tmp_path, *overrides)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and mentions in lines[0], proc.stderr
    assert not (tmp_path / "debug" / "last.pt").exists()
