"""Checkpoints written before the trainer was restructured (format version 1, tests/fixtures/v1)
still load, predict and resume exactly.

Each fixture is the `last.pt` the old code wrote after 12 updates, plus the weights the old code
reached after 24 uninterrupted updates (see tests/fixtures/v1/README.md for the command), on
another CPU than the one running the tests. CPUs round differently in the last bits (MKL, oneDNN
and OpenBLAS take other code paths per vendor and ISA), so the suite holds two kinds of claims:

- bit for bit, only between runs made here, in the test: the old file, carrying this machine's own
  step-12 numbers, resumes to exactly the weights of this machine's uninterrupted 24-step run;
- within a measured tolerance, against what the fixture's CPU computed: this machine's first 12
  updates are the old code's, and the old file itself, resumed here, reaches the old code's
  step-24 weights.
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

RESUMED_TOL = 1e-5
"""The old file resumed here against the old code's step-24 weights. Measured on an Intel AMX Xeon
under 7 ISA / MKL settings (AVX2, AVX-512 without AMX, MKL_CBWR, SSE4.2), through the Python and
the C++ loop: at most 1.5e-7 apart. A resume that lost a piece of its state lands 6e-3 (NumPy:
carried state) to 0.13 (GRU: Adam's moments) away, so 1e-5 tells the two apart on any CPU."""

FRESH_TOL = 1e-4
"""This machine's first 12 updates against the old code's. Wider than RESUMED_TOL because Adam's
first updates divide each gradient by its own magnitude, which magnifies rounding in the smallest
gradients: measured at most 1.2e-5 apart under the same settings (AVX2: 5e-6). Other training maths
lands far away: a learning rate 10% higher 3e-2, another batch size 0.13, another seed 0.7."""

CPU_DEPENDENT = ("model", "optimizer", "hidden", "val_loss", "best_val_loss", "plateau", "train_seconds")
"""The fields of a checkpoint whose values depend on the machine that computed them (floating point,
timing); the rest (layout, config, vocab, counters, RNG states) are the same on every machine."""


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    """The fixtures' configs name their corpus relative to the project root (data.paths)."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def fixture_training_path(monkeypatch):
    """Train through the path that wrote the GRU fixture: the fused layer's Python time loop with
    BLAS GEMMs. `model.kernel: auto` picks the fastest path of the machine, and other paths round
    differently in the last bits; pinning the old path keeps the comparisons with the fixture's
    numbers about the CPU alone. (The one place that pins it: the learner asks
    rnn_train.kernels.resolve_kernel for the path, once, when it builds the model.)"""
    import rnn_train.kernels as kernels

    monkeypatch.setattr(kernels, "resolve_kernel", lambda *args: FusedPath("python", "blas"))


def _weights(path):
    return load_checkpoint(path)["model"]


def _train(cfg, run_dir, **kwargs):
    return train(cfg, run_dir, quiet=True, cache_dir=run_dir.parent / "cache", **kwargs)


def _resume(cfg, run_dir, checkpoint: dict):
    """Resume `checkpoint`, written as the `last.pt` of a fresh `run_dir`, to cfg's max_steps."""
    run_dir.mkdir()
    torch.save(checkpoint, run_dir / "last.pt")
    return _train(cfg, run_dir, resume=load_checkpoint(run_dir / "last.pt"))


@pytest.mark.parametrize("kind", ["gru", "numpy"])
def test_v1_checkpoint_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, kind, fixture_training_path):
    old = load_checkpoint(FIXTURES / kind / "step12_last.pt")
    assert old["version"] == 1 and old["step"] == 12
    cfg = build_config(old["config"], ["train.max_steps=24"], source=str(FIXTURES / kind / "step12_last.pt"))
    kernel = "numpy" if kind == "numpy" else "fused-python(gemm=blas)"

    # This machine, 24 updates straight, and 12 updates of the same run.
    straight = _train(cfg, tmp_path / "straight")
    _train(build_config(old["config"], ["train.max_steps=12"]), tmp_path / "first12")
    mine12 = load_checkpoint(tmp_path / "first12" / "last.pt")
    for key, value in old["model"].items():  # the old code trained the same way, to rounding
        torch.testing.assert_close(mine12["model"][key], value, rtol=FRESH_TOL, atol=FRESH_TOL, msg=key)

    # (a) Exact, here: the old file with this machine's step-12 numbers in place of its CPU's.
    ours = {**old, **{field: mine12[field] for field in CPU_DEPENDENT}}
    resumed = _resume(cfg, tmp_path / "resumed", ours)
    assert resumed.step == straight.step == 24 and resumed.stopped_by == "max_steps"
    assert resumed.kernel == straight.kernel == kernel
    assert resumed.val_loss == straight.val_loss
    mine, again = _weights(tmp_path / "resumed" / "last.pt"), _weights(tmp_path / "straight" / "last.pt")
    assert list(mine) == list(again) == list(old["model"])
    for key in mine:
        assert torch.equal(mine[key], again[key]), key
        assert not torch.equal(mine[key], ours["model"][key]), f"{key} did not train after step 12"

    # (b) The old file as its CPU wrote it, resumed here: the old code's uninterrupted weights.
    as_written = _resume(cfg, tmp_path / "as_written", old)
    assert as_written.step == 24 and as_written.kernel == kernel
    reference = torch.load(FIXTURES / kind / "step24_weights.pt", weights_only=True)
    assert reference["step"] == 24 and list(reference["model"]) == list(old["model"])
    for key, value in _weights(tmp_path / "as_written" / "last.pt").items():
        torch.testing.assert_close(value, reference["model"][key], rtol=RESUMED_TOL, atol=RESUMED_TOL, msg=key)
    assert as_written.val_loss == pytest.approx(reference["val_loss"], rel=RESUMED_TOL)


@pytest.mark.parametrize("kind", ["gru", "numpy"])
def test_v1_checkpoint_loads_for_prediction(kind):
    model, vocab, cfg, ckpt = load_model(FIXTURES / kind / "step12_last.pt")
    assert cfg.model.hidden_size == 12 and ckpt["step"] == 12 and not model.training
    p = predict(model, vocab, "the ", k=20)
    assert len(p.continuation) == 20 and all(c in vocab.itos for c in p.continuation)
    assert sum(prob for _, prob in p.next_chars) <= 1 + 1e-6 and p.next_chars[0][1] > 1 / len(vocab)


def test_v1_checkpoint_resumes_from_the_command_line(tmp_path):
    """Through the machine's own training path (model.kernel: auto), to RESUMED_TOL: the C++ loop
    was measured at most 1.2e-7 from the fixture's step-24 weights under the same settings."""
    run_dir = tmp_path / "gru"
    run_dir.mkdir()
    shutil.copy(FIXTURES / "gru" / "step12_last.pt", run_dir / "last.pt")
    out = subprocess.run([sys.executable, "train.py", "--resume", str(run_dir), "--quiet", "train.max_steps=24",
                          "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("done: 24 steps")
    reference = torch.load(FIXTURES / "gru" / "step24_weights.pt", weights_only=True)["model"]
    for key, value in _weights(run_dir / "last.pt").items():
        torch.testing.assert_close(value, reference[key], rtol=RESUMED_TOL, atol=RESUMED_TOL)
