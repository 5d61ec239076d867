"""`rnn-train export --format onnx`: one step of the model as an ONNX graph, run by onnxruntime.

For every cell (a cell registered only in this test included), one-hot and learned input, one and
two layers, float32 and float64: over 1,000 steps of held-out text (Hong Lou Meng's pinyin)
onnxruntime's logits are the model's within 1e-5, its greedy text is predict's, the batch axis is
free, and the vocab and description travel with the graph. The CLI writes the files; the README's example samples from them with onnxruntime and NumPy
alone; a model the exporter cannot trace is one line and writes nothing."""
import contextlib
import io
import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rnn_train.commands import run_command
from rnn_train.config import build_config
from rnn_train.export import OPSET, export_onnx, names
from rnn_train.model import cells
from rnn_train.model.cells import CellSpec
from rnn_train.model.charrnn import CharRNN
from rnn_train.model.checkpoint import describe, load_model, save_checkpoint
from rnn_train.prediction.generate import generate
from tests.conftest import shared_corpus
from tests.helpers import ROOT, tiny_config
from tests.test_cells import NEW_CELLS

TEST_CELL = NEW_CELLS[1]  # coupled-gate LSTM: a state of (h, c), equations only in tests/test_cells.py
MODELS = {
    "gru": ["model.hidden_size=32"],
    "lstm2_learned": ["model.cell=lstm", "model.num_layers=2", "model.embedding=learned", "model.embed_dim=8"],
    "rnn2_float64": ["model.cell=rnn", "model.num_layers=2", "model.dtype=float64"],
    TEST_CELL.name: [f"model.cell={TEST_CELL.name}", "model.num_layers=2"],
}
STEPS = 1000
VOCAB = ["<unk>", *" \nabcdefghijklmnopqrstuvwxyz"]  # the pinyin models' characters


def checkpoint(path, overrides: list[str]):
    """A checkpoint of an untrained model (exporting is about shapes and equations, not skill): torch's
    initialisation, scaled up so that its text is not one letter repeated."""
    cfg = build_config(tiny_config(path.parent).to_dict(), overrides)
    torch.manual_seed(0)
    model = CharRNN.from_config(len(VOCAB), cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict(), "vocab": VOCAB, "step": 0})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cells.register(TEST_CELL)
    try:
        for name, overrides in MODELS.items():
            checkpoint(tmp / f"{name}.pt", overrides)
        yield tmp
    finally:
        cells.unregister(TEST_CELL.name)


@pytest.fixture(scope="module")
def held_out():
    """The first characters of Hong Lou Meng in toneless pinyin: text none of the models saw."""
    return shared_corpus("hongloumeng/hongloumeng.pinyin.txt").read_text(encoding="utf-8")[:4 * STEPS]


@pytest.fixture(scope="module")
def cli_export(runs, tmp_path_factory):
    """`rnn-train export` of the GRU (in this process: the exporter's first import costs seconds)."""
    out = tmp_path_factory.mktemp("cli") / "model.onnx"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = run_command("export", ["--checkpoint", str(runs / "gru.pt"), "--format", "onnx", "--out", str(out)])
    assert status == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


def _session(model, tmp_path, name):
    """`export_onnx` of a model (the CLI's file for the GRU, which the CLI test made)."""
    out = tmp_path / f"{name}.onnx"
    model_, vocab, cfg, ckpt = model
    export_onnx(model_, describe(model_, vocab, cfg, ckpt), out)
    return out


def _teacher_forced(session, model, ids: np.ndarray) -> np.ndarray:
    """onnxruntime's logits [T, V] for ids [T], one step at a time from a zero state."""
    inputs, _ = names(model)
    state = dict(zip(inputs[1:], (p.numpy() for p in model.spec.unpack(model.begin_state(1)))))
    out = []
    for i in ids:
        logits, *parts = session.run(None, {"ids": np.array([i], np.int64), **state})
        state = dict(zip(inputs[1:], parts))
        out.append(logits[0])
    return np.stack(out)


def _greedy(session, model, vocab, prefix: str, k: int) -> str:
    """k characters after `prefix`, each the argmax of onnxruntime's logits (<unk> excluded)."""
    inputs, _ = names(model)
    state = dict(zip(inputs[1:], (p.numpy() for p in model.spec.unpack(model.begin_state(1)))))

    def step(i: int) -> np.ndarray:
        nonlocal state
        logits, *parts = session.run(None, {"ids": np.array([i], np.int64), **state})
        state = dict(zip(inputs[1:], parts))
        return logits[0]

    for i in vocab.encode(prefix):
        logits = step(int(i))
    out = []
    for _ in range(k):
        logits[0] = -np.inf
        out.append(int(logits.argmax()))
        logits = step(out[-1])
    return vocab.decode(out)


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_steps_as_the_model_does_over_held_out_text(runs, held_out, cli_export, tmp_path, name):
    # (the test cell stays registered while this module runs: the `runs` fixture)
    loaded = load_model(runs / f"{name}.pt")
    model, vocab, cfg, ckpt = loaded
    path = cli_export[0] if name == "gru" else _session(loaded, tmp_path, name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    text = "".join(c for c in held_out if c in vocab)[:STEPS + 1]
    ids = vocab.encode(text).astype(np.int64)
    with torch.no_grad():
        expected, _ = model(torch.as_tensor(ids[:STEPS])[None])  # [1, T, V]: the module, one call
    got = _teacher_forced(session, model, ids[:STEPS])
    assert got.dtype == np.dtype(cfg.model.dtype)
    assert np.abs(got - expected[0].numpy()).max() <= 1e-5
    assert _greedy(session, model, vocab, "zhong guo ", STEPS) == generate(model, vocab, "zhong guo ", STEPS)

    # the batch axis: three rows at once give each row's own logits
    inputs, outputs = names(model)
    assert [i.name for i in session.get_inputs()] == inputs and [o.name for o in session.get_outputs()] == outputs
    state = {n: p.numpy() for n, p in zip(inputs[1:], model.spec.unpack(model.begin_state(3)))}
    batch = session.run(None, {"ids": ids[:3], **state})[0]
    rows = [session.run(None, {"ids": ids[i:i + 1], **{n: s[:, :1] for n, s in state.items()}})[0][0] for i in range(3)]
    np.testing.assert_allclose(batch, np.stack(rows), rtol=0, atol=1e-6)

    meta = session.get_modelmeta().custom_metadata_map
    info = describe(model, vocab, cfg, ckpt)
    assert json.loads(meta["vocab"]) == list(vocab.itos) and json.loads(meta["model"])["state"] == list(model.spec.state)
    beside = json.loads(path.with_suffix(".json").read_text())
    assert beside["vocab"] == list(vocab.itos) and beside["cell"] == cfg.model.cell == info["cell"]
    assert beside["inputs"] == inputs and beside["unk_id"] == 0 and beside["steps"] == ckpt["step"]


def test_the_cli_says_what_it_wrote_and_how_it_checked_it(cli_export):
    out, stdout, stderr = cli_export
    assert stderr == ""
    lines = stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"wrote {out} (") and "(ids, h) -> (logits, h_next)" in lines[0]
    assert re.match(r"checked with onnxruntime: 200 steps, batch 2, largest logit difference [0-9.e-]+$", lines[1])
    import onnx

    assert [(o.domain, o.version) for o in onnx.load(str(out)).opset_import] == [("", OPSET)]  # as serve.md says


def test_the_readme_example_samples_with_onnxruntime_and_numpy_alone(cli_export):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    [example] = [b for b in blocks if "import onnxruntime" in b]
    assert len(example.strip().splitlines()) <= 25
    check = example + "\nimport sys\nassert 'torch' not in sys.modules, 'the example needs torch'\n"
    done = subprocess.run([sys.executable, "-c", check], cwd=cli_export[0].parent, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout[:-1]  # print's newline (the text itself may end in one)
    assert text.startswith("zhong guo ") and len(text) == len("zhong guo ") + 60


def branching_step(ops, gi, gh, state):
    """An RNN that picks its equation with a Python `if` on a value: fine in eager torch, not traceable."""
    a = gi + gh
    return ((ops.tanh(a) if float(a.sum()) > 0 else ops.tanh(-a)),), {}


def test_a_model_the_exporter_cannot_trace_is_one_line_and_writes_nothing(tmp_path, capsys):
    spec = cells.register(CellSpec("branchy_test", "a Python branch on a value", blocks=("a",), step=branching_step))
    try:
        cfg = build_config(tiny_config(tmp_path).to_dict(), ["model.cell=branchy_test", "model.hidden_size=8"])
        vocab = list("\nabc ")
        model = CharRNN.from_config(len(vocab) + 1, cfg.model)
        save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": cfg.to_dict(),
                                            "vocab": ["<unk>", *vocab], "step": 0})
        out = tmp_path / "m.onnx"
        assert run_command("export", ["--checkpoint", str(tmp_path / "m.pt"), "--format", "onnx", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: cannot export the branchy_test model to ONNX (")
        assert "data-dependent" in err and not out.exists() and not out.with_suffix(".json").exists()
        assert run_command("export", ["--checkpoint", str(tmp_path / "m.pt"), "--format", "onnx",
                                      "--out", str(tmp_path / "m.json")]) == 2
        assert "ends in .onnx" in capsys.readouterr().err
    finally:
        cells.unregister(spec.name)


def test_a_ctrl_c_the_exporter_wraps_in_its_own_error_is_an_interruption_not_a_failure(runs, tmp_path, capsys,
                                                                                        monkeypatch):
    """torch's exporter catches what its trace raises, Ctrl-C too, and raises its own error from it:
    that was `error: cannot export ... (KeyboardInterrupt)`, exit status 2, as if the model could not be."""
    def interrupted_inside(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Failed to export the model with torch.export") from e

    monkeypatch.setattr(torch.onnx, "export", interrupted_inside)
    out = tmp_path / "m.onnx"
    assert run_command("export", ["--checkpoint", str(runs / "gru.pt"), "--format", "onnx",
                                  "--out", str(out)]) == 130
    assert capsys.readouterr().err == "error: interrupted\n" and not out.exists()


def test_export_replaces_only_an_earlier_export(runs, cli_export, tmp_path, capsys):
    ckpt = tmp_path / "gru.pt"
    ckpt.write_bytes((runs / "gru.pt").read_bytes())
    (tmp_path / "metrics.json").write_text('{"loss": 1.5}\n')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    plain = lambda: {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.is_symlink()}  # noqa: E731
    export = lambda out: run_command("export", ["--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)])  # noqa: E731
    os.mkfifo(tmp_path / "pipe.onnx")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    for out, needle in [(ckpt, "ends in .onnx"), (tmp_path / "notes.txt", "ends in .onnx"),
                        (tmp_path / ".onnx", "give the graph a name before .onnx"),
                        (tmp_path / "metrics.onnx", "metrics.json exists and is not an earlier export's metadata"),
                        (tmp_path / "pipe.onnx", "is a device, a pipe or a link"),
                        (tmp_path / "link.onnx", "is a device, a pipe or a link")]:
        assert export(out) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert plain() == before and (tmp_path / "link.onnx").is_symlink() and stat.S_ISFIFO((tmp_path / "pipe.onnx").lstat().st_mode)
    (tmp_path / "other.onnx").write_bytes(b"another tool's graph")  # no metadata of ours names it
    assert export(tmp_path / "other.onnx") == 2
    assert capsys.readouterr().err == (f"error: --out {tmp_path / 'other.onnx'} exists and is not an earlier "
                                       f"export's graph (no metadata .json beside it names it); nothing written "
                                       f"(remove it or choose another name)\n")
    assert (tmp_path / "other.onnx").read_bytes() == b"another tool's graph"
    (tmp_path / "m.json").mkdir()  # the pair cannot be written: said before the model is traced
    assert export(tmp_path / "m.onnx") == 2
    assert capsys.readouterr().err == (f"error: --out's metadata file {tmp_path / 'm.json'} is a directory; "
                                       "nothing written (remove it or choose another name)\n")
    assert not (tmp_path / "m.onnx").exists()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "d.onnx").mkdir()
    for out, why in [(tmp_path / "notes.txt" / "x.onnx", f"{tmp_path / 'notes.txt'} is a file, not a directory"),
                     (tmp_path / "d.onnx", "is a directory; nothing written (remove it or choose another name)")]:
        assert export(out) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out}") and why in err and err.count("\n") == 1, err
    graph, _, _ = cli_export  # and an earlier export is replaced
    assert run_command("export", ["--checkpoint", str(ckpt), "--format", "onnx", "--out", str(graph)]) == 0


def test_a_model_cast_after_loading_exports_with_its_own_dtype_and_keeps_its_mode(runs, tmp_path):
    """As a library user calls it: a float32 checkpoint's model cast to float64, in training mode, and
    a plain string for the file. The metadata names the model's dtype (what the state must be
    built in), and the model is handed back in the mode it came in."""
    model, vocab, cfg, ckpt = load_model(runs / "gru.pt")
    model = model.double().train()
    out = str(tmp_path / "gru64.onnx")
    export_onnx(model, describe(model, vocab, cfg, ckpt), out)
    assert model.training and cfg.model.dtype == "float32"
    meta = json.loads((tmp_path / "gru64.json").read_text())
    assert meta["dtype"] == "float64"
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    inputs, _ = names(model)
    state = {n: np.zeros(s.shape, meta["dtype"]) for n, s in zip(inputs[1:], model.spec.unpack(model.begin_state(1)))}
    assert session.run(None, {"ids": np.array([1]), **state})[0].dtype == np.float64


def test_the_check_holds_the_logits_to_their_own_scale(runs):
    """Rounding grows with the numbers rounded: a model whose logits run to the thousands (weights
    scaled up) was refused at 1e-7 of them by an absolute 1e-4. A graph of other weights is still
    refused, with the limit it broke."""
    from rnn_train.export import check, to_onnx
    from rnn_train.errors import UserError

    model, _, _, _ = load_model(runs / "gru.pt")
    with torch.no_grad():
        model.decoder.weight.mul_(3000)
        model.decoder.bias.mul_(3000)
    graph = to_onnx(model)
    worst = check(model, graph)
    assert worst > 1e-4  # float32 rounding at this scale (the old, absolute limit)...
    other, _, _, _ = load_model(runs / "gru.pt")
    with pytest.raises(UserError, match=r"logits differ from the model's by .* \(> .*: 0.0001 of the largest "
                                        r"\|logit\|, .*\); nothing written"):
        check(other, graph)  # ...but the other model's logits are nowhere near
    # a huge <unk> logit (never sampled) sets no scale: the characters' own logits are compared
    unk_far, _, _, _ = load_model(runs / "gru.pt")
    with torch.no_grad():
        unk_far.decoder.bias[0] = -20000.0
    graph = to_onnx(unk_far)
    with torch.no_grad():
        unk_far.decoder.bias[1:] += 0.5
    with pytest.raises(UserError, match=r"logits differ from the model's by 0.5"):
        check(unk_far, graph)
