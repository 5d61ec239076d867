"""Checkpoints written before the trainer was restructured (format version 1, tests/fixtures/v1)
still load, predict and resume exactly.

Each fixture is the `last.pt` the old code wrote after 12 updates, plus the weights the old code
reached after 24 uninterrupted updates (see tests/fixtures/v1/README.md for the command). Resumed
to step 24 by this code, the weights must equal, bit for bit, what this code reaches in one
uninterrupted 24-step run of the same config on this machine, and match the old code's to 1e-5
(another machine's floating point may differ in the last bits).
"""
import shutil
import subprocess
import sys

import pytest
import torch

from rnn_train.config import build_config
from rnn_train.kernels.fused import FusedPath
from rnn_train.model.checkpoint import load_checkpoint, load_model
from rnn_train.prediction.generate import predict
from rnn_train.training.trainer import train
from tests.helpers import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "v1"


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    """The fixtures' configs name their corpus relative to the project root (data.paths)."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def fixture_training_path(monkeypatch):
    """Train through the path that wrote the GRU fixture: the fused layer's Python time loop with
    BLAS GEMMs. `model.kernel: auto` picks the fastest path of the machine, and other paths round
    differently in the last bits, so an uninterrupted run through them would not pass through the
    fixture's step-12 weights exactly, and the bit-for-bit comparison would compare two trajectories."""
    import rnn_train.kernels as kernels

    monkeypatch.setattr(kernels, "resolve_kernel", lambda *args: FusedPath("python", "blas"))


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("kind", ["gru", "numpy"])
def test_v1_checkpoint_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, kind, fixture_training_path):
    old = FIXTURES / kind / "step12_last.pt"
    ckpt = load_checkpoint(old)
    assert ckpt["version"] == 1 and ckpt["step"] == 12
    cfg = build_config(ckpt["config"], ["train.max_steps=24"], source=str(old))

    straight = train(cfg, tmp_path / "straight", quiet=True, cache_dir=tmp_path / "cache")
    (tmp_path / "resumed").mkdir()
    shutil.copy(old, tmp_path / "resumed" / "last.pt")
    resumed = train(cfg, tmp_path / "resumed", quiet=True, cache_dir=tmp_path / "cache",
                    resume=load_checkpoint(tmp_path / "resumed" / "last.pt"))

    assert resumed.step == straight.step == 24 and resumed.stopped_by == "max_steps"
    assert resumed.kernel == straight.kernel == ("numpy" if kind == "numpy" else "fused-python(gemm=blas)")
    assert resumed.val_loss == straight.val_loss
    mine, again = _weights(tmp_path / "resumed" / "last.pt"), _weights(tmp_path / "straight" / "last.pt")
    reference = torch.load(FIXTURES / kind / "step24_weights.pt", weights_only=True)
    assert reference["step"] == 24
    assert list(mine) == list(again) == list(reference["model"])
    for key in mine:
        assert torch.equal(mine[key], again[key]), key  # (a) exact resume, with this code
        torch.testing.assert_close(mine[key], reference["model"][key], rtol=1e-5, atol=1e-5)  # (b) the old code's
        assert not torch.equal(mine[key], ckpt["model"][key]), f"{key} did not train after step 12"
    assert resumed.val_loss == pytest.approx(reference["val_loss"], rel=1e-5)


@pytest.mark.parametrize("kind", ["gru", "numpy"])
def test_v1_checkpoint_loads_for_prediction(kind):
    model, vocab, cfg, ckpt = load_model(FIXTURES / kind / "step12_last.pt")
    assert cfg.model.hidden_size == 12 and ckpt["step"] == 12 and not model.training
    p = predict(model, vocab, "the ", k=20)
    assert len(p.continuation) == 20 and all(c in vocab.itos for c in p.continuation)
    assert sum(prob for _, prob in p.next_chars) <= 1 + 1e-6 and p.next_chars[0][1] > 1 / len(vocab)


def test_v1_checkpoint_resumes_from_the_command_line(tmp_path):
    run_dir = tmp_path / "gru"
    run_dir.mkdir()
    shutil.copy(FIXTURES / "gru" / "step12_last.pt", run_dir / "last.pt")
    out = subprocess.run([sys.executable, "train.py", "--resume", str(run_dir), "--quiet", "train.max_steps=24",
                          "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("done: 24 steps")
    reference = torch.load(FIXTURES / "gru" / "step24_weights.pt", weights_only=True)["model"]
    for key, value in _weights(run_dir / "last.pt").items():
        torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-5)
