"""The cell registry (rnn_train/model/cells.py): one CellSpec per cell, read by every backend.

1. Every hook a registered cell declares computes its CellSpec's reference `step`: torch's own
   module, the fused Python and C++ loops, the NumPy stepper, the C++ generation step and the
   hand-written BPTT.
2. The registry is open: two cells defined in this file alone (a minimal gated unit, and an LSTM
   whose input gate is 1 - f, so its state is a pair) train, resume exactly, validate, predict,
   sample and score through the generic paths, without a line of package code knowing them.
3. An unknown cell is one `error:` line with a did-you-mean.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnn_train.config import build_config
from rnn_train.errors import UserError
from rnn_train.kernels import resolve_kernel
from rnn_train.kernels.build import extension
from rnn_train.kernels.fused import FusedPath, fused_rnn
from rnn_train.model import cells
from rnn_train.model.cells import CellSpec, blocks
from rnn_train.model.charrnn import CharRNN
from rnn_train.model.checkpoint import load_checkpoint, load_model
from rnn_train.model.recurrent import CellLayers
from rnn_train.prediction.choose import SamplingOptions
from rnn_train.prediction.generate import next_char_distribution, predict, samples
from rnn_train.prediction.score import score_pieces
from rnn_train.prediction.stepper import GenericStepper, make_stepper
from rnn_train.teaching import bptt
from rnn_train.training.trainer import train
from tests.helpers import ROOT, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUILT_IN = ("rnn", "gru", "lstm")


def _generic_twin(native: torch.nn.Module, spec: CellSpec) -> CellLayers:
    """CellLayers running `spec.step`, holding the same weights as `native`."""
    twin = CellLayers(spec, native.input_size, native.hidden_size, native.num_layers).double()
    twin.load_state_dict(native.state_dict())
    return twin


def _random_state(spec: CellSpec, layers: int, batch: int, hidden: int):
    return spec.pack(tuple(torch.randn(layers, batch, hidden, dtype=torch.float64) for _ in spec.state))


# ----------------------------------------------------------------------------------------------
# 1. every hook is its cell's reference step


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_reference_step_is_what_torch_computes_for_each_built_in_cell(name):
    spec = cells.get(name)
    torch.manual_seed(0)
    native = getattr(torch.nn, spec.hooks["native"])(5, 7, 2, batch_first=True).double()
    twin = _generic_twin(native, spec)
    x, state = torch.randn(3, 6, 5, dtype=torch.float64), _random_state(spec, 2, 3, 7)
    (out_n, s_n), (out_g, s_g) = native(x, state), twin(x, state)
    assert torch.allclose(out_n, out_g, atol=1e-12)
    for a, b in zip(spec.unpack(s_n), spec.unpack(s_g), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("name,loop", [(n, loop) for n in BUILT_IN for loop in ("python", "cpp")
                                       if f"{loop}_loop" in cells.get(n).hooks])
def test_every_fused_loop_gives_the_reference_steps_values_and_gradients(name, loop):
    if loop == "cpp" and extension() is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    spec = cells.get(name)
    torch.manual_seed(1)
    native = getattr(torch.nn, spec.hooks["native"])(4, 6, 2, batch_first=True).double()
    twin = _generic_twin(native, spec)
    x, state = torch.randn(3, 5, 4, dtype=torch.float64), _random_state(spec, 2, 3, 6)
    results = []
    for run in (lambda: fused_rnn(native, x, state, path=FusedPath(loop, "blas")), lambda: twin(x, state)):
        out, final = run()
        loss = (out ** 2).sum() + sum(part.sum() for part in spec.unpack(final))
        module = native if not results else twin
        results.append((out.detach(), torch.autograd.grad(loss, list(module.parameters()))))
    (out_f, grads_f), (out_r, grads_r) = results
    assert torch.allclose(out_f, out_r, atol=1e-10)
    for a, b in zip(grads_f, grads_r, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def _model_pair(name_or_spec, layers=2, embedding="one_hot"):
    torch.manual_seed(2)
    name = name_or_spec if isinstance(name_or_spec, str) else name_or_spec.name
    return CharRNN(9, name, 8, num_layers=layers, embedding=embedding, embed_dim=5).double().eval()


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("embedding", ["one_hot", "learned"])
def test_each_cells_tuned_stepper_steps_as_the_reference_step_does(name, embedding):
    model = _model_pair(name, embedding=embedding)
    tuned, generic = make_stepper(model, 3, rows=3, kernel="numpy"), GenericStepper(model, 3, 3)
    assert type(tuned) is model.spec.hook("stepper") and type(tuned) is not GenericStepper
    ids = np.array([1, 4, 7])
    for _ in range(12):
        a, b = tuned.step(ids).copy(), generic.step(ids).copy()
        assert np.allclose(a, b, atol=1e-10)
        ids = np.argmax(a, axis=1)
    for x, y in zip(model.spec.unpack(tuned.state()), model.spec.unpack(generic.state()), strict=True):
        assert torch.allclose(x, y, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in BUILT_IN if "decode" in cells.get(n).hooks])
@pytest.mark.parametrize("embedding", ["one_hot", "learned"])
def test_each_cells_cpp_generation_step_steps_as_the_reference_step_does(name, embedding):
    if extension() is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    model = _model_pair(name, embedding=embedding)
    fast, generic = make_stepper(model, 3, kernel="cpp"), GenericStepper(model, 3, 3)
    ids = np.array([1, 4, 7])
    for _ in range(12):
        a, b = fast.step(ids).copy(), generic.step(ids).copy()
        assert np.allclose(a, b, atol=1e-10)
        ids = np.argmax(a, axis=1)
    for x, y in zip(model.spec.unpack(fast.state()), model.spec.unpack(generic.state()), strict=True):
        assert torch.allclose(x, y, atol=1e-10)


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_hand_written_bptt_runs_the_reference_step_and_gets_autograds_gradients(name):
    spec = cells.get(name)
    rng = np.random.default_rng(3)
    params = bptt.init_params(name, 4, 5, rng)
    x = rng.standard_normal((6, 2, 4))
    h0, dhs = rng.standard_normal((2, 5)), rng.standard_normal((6, 2, 5))
    c0 = rng.standard_normal((2, 5)) if len(spec.state) == 2 else None
    fwd = bptt.forward(name, x, h0, params, c0=c0)
    grads = bptt.backward(dhs, fwd.cache)

    twin = CellLayers(spec, 4, 5).double()
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in bptt.params_to_torch(params).items()})
    parts = (h0,) if c0 is None else (h0, c0)
    out, _ = twin(torch.from_numpy(x).transpose(0, 1), spec.pack(tuple(torch.from_numpy(p[None]) for p in parts)))
    assert np.allclose(fwd.hs, out.transpose(0, 1).detach().numpy(), atol=1e-12)
    (out * torch.from_numpy(dhs).transpose(0, 1)).sum().backward()
    theirs = bptt.params_from_torch({k: p.grad.numpy() for k, p in twin.named_parameters()})
    for key, value in grads.params.items():
        assert np.allclose(value, theirs[key], atol=1e-10), key


# ----------------------------------------------------------------------------------------------
# 2. a cell defined here


def mgu_step(ops, gi, gh, state):
    """Minimal gated unit: f = sigmoid(.); n = tanh(gi_n + f * gh_n); h = (1 - f) h + f n."""
    (h,) = state
    i_f, i_n = blocks(gi, 2)
    h_f, h_n = blocks(gh, 2)
    f = ops.sigmoid(i_f + h_f)
    n = ops.tanh(i_n + f * h_n)
    return ((1 - f) * h + f * n,), {"f": f, "n": n}


def cifg_step(ops, gi, gh, state):
    """LSTM with coupled input and forget gates (i = 1 - f): c = f c + (1 - f) g; h = o tanh(c)."""
    _, c = state
    a_f, a_g, a_o = (x + y for x, y in zip(blocks(gi, 3), blocks(gh, 3)))
    f, g, o = ops.sigmoid(a_f), ops.tanh(a_g), ops.sigmoid(a_o)
    c = f * c + (1 - f) * g
    return (o * ops.tanh(c), c), {"f": f, "g": g, "o": o}


NEW_CELLS = (CellSpec("mgu_test", "minimal gated unit (a test's own cell)", blocks=("f", "n"), step=mgu_step,
                      keep_gate="f"),
             CellSpec("cifg_test", "coupled-gate LSTM (a test's own cell)", blocks=("f", "g", "o"), step=cifg_step,
                      state=("h", "c"), keep_gate="f"))


@pytest.fixture(params=NEW_CELLS, ids=lambda spec: spec.name)
def new_cell(request):
    spec = cells.register(request.param)
    yield spec
    cells.unregister(spec.name)


def test_a_registered_cell_trains_resumes_exactly_validates_predicts_samples_and_scores(tmp_path, new_cell):
    name = new_cell.name
    overrides = [f"model.cell={name}", "model.num_layers=2", "data.partition=sequential", "train.max_steps=16",
                 "train.eval_every=8", "train.lr=0.02"]
    cfg = build_config(tiny_config(tmp_path).to_dict(), overrides)

    straight = train(cfg, tmp_path / "straight", quiet=True, cache_dir=tmp_path / "cache")
    assert straight.kernel == "native" and straight.step == 16  # no fused loop: the cell's CellLayers
    half = build_config(cfg.to_dict(), ["train.max_steps=8"])
    train(half, tmp_path / "resumed", quiet=True, cache_dir=tmp_path / "cache")
    hidden = load_checkpoint(tmp_path / "resumed" / "last.pt")["hidden"]
    assert len(new_cell.unpack(hidden)) == len(new_cell.state)  # the carried state, every part of it
    resumed = train(cfg, tmp_path / "resumed", quiet=True, cache_dir=tmp_path / "cache",
                    resume=load_checkpoint(tmp_path / "resumed" / "last.pt"))
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key  # same machine, same code: bit for bit
    assert resumed.val_loss == straight.val_loss

    model, vocab, _, _ = load_model(tmp_path / "straight")
    assert isinstance(model.rnn, CellLayers) and model.spec is new_cell
    assert straight.val_loss < np.log(len(vocab)) - 0.3  # it learned something

    prefix = "zhong guo\n"
    ids = torch.as_tensor(vocab.encode(prefix).astype("int64"))[None]
    with torch.no_grad():
        logits, state = model(ids)
    probs = torch.softmax(logits[0, -1, 1:].double(), -1)  # <unk> excluded, as predict does
    top = next_char_distribution(model, vocab, prefix, top_n=3)
    assert [c for c, _ in top] == [vocab.itos[int(i) + 1] for i in torch.topk(probs, 3).indices]
    assert [p for _, p in top] == pytest.approx(torch.topk(probs, 3).values.tolist(), abs=1e-6)

    # greedy: the generic NumPy stepper's text is the module's, stepped one character at a time
    text = predict(model, vocab, prefix, k=30).continuation
    expected, last = [], logits[0, -1]
    with torch.no_grad():
        for _ in range(30):
            nxt = int(torch.argmax(last[1:])) + 1
            expected.append(vocab.itos[nxt])
            out, state = model(torch.tensor([[nxt]]), state)
            last = out[0, -1]
    assert text == "".join(expected)

    seeded = samples(model, vocab, prefix, 40, SamplingOptions(temperature=0.9, seed=5), num_samples=3)
    assert seeded == samples(model, vocab, prefix, 40, SamplingOptions(temperature=0.9, seed=5), num_samples=3)
    assert len(set(seeded)) > 1 and all(len(s) == 40 for s in seeded)

    piece = "ni hao\nzhong guo ren\n" * 3
    scored = score_pieces(model, vocab, [piece])
    x = torch.as_tensor(vocab.encode(piece).astype("int64"))[None]
    with torch.no_grad():
        out, _ = model(x[:, :-1])
    assert scored.loss == pytest.approx(F.cross_entropy(out[0], x[0, 1:]).item(), rel=1e-6)


def test_a_cell_without_fused_loops_or_bptt_says_so_in_one_line(tmp_path, new_cell):
    model = CharRNN(7, new_cell.name, 8)
    assert resolve_kernel("auto", model.rnn, 4, 5, True) is None
    with pytest.raises(UserError, match=f"cannot train the {new_cell.name} cell.*no fused loop"):
        resolve_kernel("fused", model.rnn, 4, 5, True)
    with pytest.raises(UserError, match=f"hand-written BPTT .* got {new_cell.name}"):
        build_config(tiny_config(tmp_path).to_dict(), [f"model.cell={new_cell.name}", "model.backend=numpy",
                                                       "train.optimizer=sgd"])


# ----------------------------------------------------------------------------------------------
# 3. unknown cells


def test_an_unknown_cell_is_one_line_with_a_did_you_mean(tmp_path):
    with pytest.raises(UserError, match=r"model.cell must be one of rnn \| gru \| lstm, got 'gur' \(did you mean gru\?\)"):
        build_config({}, ["model.cell=gur", "train.max_steps=1"])
    proc = subprocess.run([sys.executable, "train.py", "--config", "configs/debug.yaml", "model.cell=lstn",
                           f"log.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "did you mean lstm?" in line
    assert not any(tmp_path.iterdir())


def test_registering_a_taken_name_or_a_keep_gate_it_lacks_is_refused():
    with pytest.raises(ValueError, match="registered already"):
        cells.register(CellSpec("gru", "again", blocks=("r",), step=mgu_step))
    with pytest.raises(ValueError, match="keep_gate"):
        CellSpec("x", "x", blocks=("a",), step=mgu_step, keep_gate="f")
