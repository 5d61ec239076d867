"""Gradient-flow report (rnn_train/teaching/gradflow.py): per-step norms ||dL/dh_t|| and ||dL_T/dh_t||.

Specification:
1. On hand-set RNNs the norms equal values worked out by hand: W_hh = a·I with a ReLU kept in
   its linear range gives exactly a^(T-t); a one-unit tanh RNN gives the product of w·(1 - h_s²).
2. The unrolled measurement is the model the trainer trains: same logits, same parameter gradient;
   and it is the *total* derivative (the fused op's output gradient is only the decoder's share).
3. A CharRNN with large recurrent weights shows growth, with small weights decay.
4. Clipping: the clipped columns are the unclipped ones times clip_grad_norm_'s own coefficient,
   so the ratios do not change.
5. The CLI on a checkpoint from a quick train.py run: the table, --json, --compare, --untrained,
   TensorBoard events read back, and one-line errors with exit status 2.
"""
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn_train.teaching import gradflow
from rnn_train.model.charrnn import CharRNN

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one torch thread per test (conftest)


def hand_set_rnn(H, a, nonlinearity):
    """One-layer RNN with input size 1: W_hh = a·I, W_ih = 1, b = 0.1 (all positive: ReLU stays linear)."""
    rnn = nn.RNN(1, H, nonlinearity=nonlinearity, batch_first=True).double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(a * torch.eye(H, dtype=torch.float64))
        rnn.weight_ih_l0.fill_(1.0)
        rnn.bias_ih_l0.fill_(0.05)
        rnn.bias_hh_l0.fill_(0.05)
    return rnn


def tiny_problem(B=3, T=12, V=4, H=2, a=0.5, nonlinearity="relu", seed=0):
    g = torch.Generator().manual_seed(seed)
    rnn = hand_set_rnn(H, a, nonlinearity)
    dec = nn.Linear(H, V).double()
    with torch.no_grad():
        dec.weight.copy_(torch.randn(V, H, generator=g, dtype=torch.float64))
        dec.bias.zero_()
    x = 0.1 + torch.rand(B, T, 1, generator=g, dtype=torch.float64)  # positive inputs
    y = torch.randint(0, V, (B, T), generator=g)
    h0 = torch.zeros(1, B, H, dtype=torch.float64)
    return rnn, dec, x, y, h0


def direct_grads(rnn, dec, x, y, h0, last_only):
    """Per-step gradient reaching h_t through the decoder alone (no recurrence): (p - onehot)/N @ W_dec."""
    with torch.no_grad():
        hs, _ = rnn(x, h0)  # [B, T, H]
        p = torch.softmax(dec(hs), dim=-1)
        d = p - F.one_hot(y, p.shape[-1]).double()  # [B, T, V]
        B, T = y.shape
        if last_only:
            d[:, :-1] = 0
            d = d / B
        else:
            d = d / (B * T)
        return d @ dec.weight  # [B, T, H]


# ----------------------------------------------------------------------------- 1. analytical values


@pytest.mark.parametrize("a", [0.5, 0.9, 1.2])
def test_linear_rnn_last_step_gradient_decays_as_a_power(a):
    rnn, dec, x, y, h0 = tiny_problem(a=a)
    r = gradflow.measure(rnn, dec, x, y, h0, list(rnn.parameters()) + list(dec.parameters()))
    T = r.steps
    g_T = direct_grads(rnn, dec, x, y, h0, last_only=True)[:, -1]  # dL_T/dh_T by hand
    assert r.dLT_dh[-1] == pytest.approx(float(g_T.norm()), rel=1e-12)
    for t in range(1, T + 1):
        assert r.ratio[t - 1] == pytest.approx(a ** (T - t), rel=1e-10)
        assert r.dLT_dh[t - 1] == pytest.approx(a ** (T - t) * float(g_T.norm()), rel=1e-10)
    assert r.per_step_factor == pytest.approx(a, rel=1e-10)
    expected = next((k for k in range(T) if a ** k < 0.1), None)  # 0.5: 4 steps back; 0.9 and 1.2: never in 11
    assert r.steps_below["0.1"] == expected


def test_linear_rnn_full_loss_gradient_is_the_discounted_sum_of_later_steps():
    a = 0.7
    rnn, dec, x, y, h0 = tiny_problem(a=a, T=9)
    r = gradflow.measure(rnn, dec, x, y, h0, list(rnn.parameters()))
    g = direct_grads(rnn, dec, x, y, h0, last_only=False)  # [B, T, H]
    T = r.steps
    for t in range(T):  # dL/dh_t = sum_{s >= t} a^(s-t) g_s, since every Jacobian is a·I
        expected = sum(a ** (s - t) * g[:, s] for s in range(t, T))
        assert r.dL_dh[t] == pytest.approx(float(expected.norm()), rel=1e-10)


def test_one_unit_tanh_rnn_matches_the_product_of_jacobians():
    w, u, b = 0.9, 0.8, 0.1
    rnn = nn.RNN(1, 1, batch_first=True, bias=True).double()
    with torch.no_grad():
        rnn.weight_hh_l0.fill_(w), rnn.weight_ih_l0.fill_(u), rnn.bias_ih_l0.fill_(b), rnn.bias_hh_l0.zero_()
    dec = nn.Linear(1, 3).double()
    xs = [0.3, -1.0, 0.5, 2.0, -0.2, 0.7, 1.1, -0.4]
    x = torch.tensor(xs, dtype=torch.float64).view(1, -1, 1)
    y = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]])
    r = gradflow.measure(rnn, dec, x, y, torch.zeros(1, 1, 1, dtype=torch.float64), list(rnn.parameters()))
    hs, h = [], 0.0  # the recurrence by hand
    for xt in xs:
        h = math.tanh(w * h + u * xt + b)
        hs.append(h)
    T = len(xs)
    for t in range(T):  # dh_{s}/dh_{s-1} = w (1 - h_s²)
        expected = math.prod(w * (1 - hs[s] ** 2) for s in range(t + 1, T))
        assert r.ratio[t] == pytest.approx(expected, rel=1e-10)


# ----------------------------------------------------------------------------- 2. faithful to training


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_unrolled_model_is_the_trained_model(cell):
    torch.manual_seed(0)
    model = CharRNN(7, cell, 6, num_layers=2).double().eval()
    x, y = torch.randint(0, 7, (3, 10)), torch.randint(0, 7, (3, 10))
    state = model.begin_state(3)
    hs = gradflow.unrolled_outputs(model.rnn, model.encode_input(x), state)
    logits_ref, _ = model(x)
    assert torch.allclose(model.decoder(torch.stack(hs, 1)), logits_ref, atol=1e-12)
    # the global parameter gradient norm is the one the trainer clips
    loss = F.cross_entropy(logits_ref.reshape(-1, 7), y.reshape(-1))
    loss.backward()
    ref_norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    model.train()  # measured in eval mode (no dropout), and handed back in the caller's mode
    r = gradflow.measure_char_rnn(model, x, y)
    assert model.training and r.grad_norm == pytest.approx(ref_norm, rel=1e-10)
    assert r.loss == pytest.approx(loss.item(), rel=1e-12)
    assert r.dL_dh[-1] * r.steps == pytest.approx(r.dLT_dh[-1], rel=1e-10)  # at t=T only step T's loss counts


def test_fused_output_gradient_misses_the_recurrent_route():
    """Why gradflow steps the core by hand: out.retain_grad() on the fused nn.RNN sees only dhs[t]."""
    torch.manual_seed(0)
    model = CharRNN(5, "rnn", 4).double().eval()
    x, y = torch.randint(0, 5, (2, 6)), torch.randint(0, 5, (2, 6))
    out, _ = model.rnn(model.encode_input(x), model.begin_state(2))
    out.retain_grad()
    F.cross_entropy(model.decoder(out)[:, -1], y[:, -1]).backward()
    assert float(out.grad[:, :-1].abs().max()) == 0.0  # fused: nothing before T
    r = gradflow.measure_char_rnn(model, x, y)
    assert min(r.dLT_dh) > 0  # total derivative: every step gets some


# ----------------------------------------------------------------------------- 3. growth and decay


@pytest.mark.parametrize("scale, grows", [(3.0, True), (0.1, False)])
def test_char_rnn_recurrent_scale_decides_growth_or_decay(scale, grows):
    torch.manual_seed(1)
    model = CharRNN(12, "rnn", 32).double()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))
        model.rnn.weight_hh_l0.copy_(scale * q)  # every eigenvalue has modulus `scale`
    x, y = torch.randint(0, 12, (4, 40)), torch.randint(0, 12, (4, 40))
    r = gradflow.measure_char_rnn(model, x, y)
    assert gradflow.recurrent_spectral_radius(model.rnn) == pytest.approx(scale, rel=1e-9)
    if grows:
        assert r.ratio[0] > 100 and r.per_step_factor > 1
    else:
        assert r.ratio[0] < 1e-20 and r.per_step_factor < 0.2
        assert r.steps_below["0.001"] is not None and r.steps_below["0.001"] <= 4


# ----------------------------------------------------------------------------- 4. clipping


def test_clipped_columns_are_the_unclipped_times_torchs_coefficient():
    torch.manual_seed(2)
    model = CharRNN(9, "rnn", 16).double()
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(4.0)  # an explosion, so that clipping bites
    x, y = torch.randint(0, 9, (4, 30)), torch.randint(0, 9, (4, 30))
    clip = 0.5
    r = gradflow.measure_char_rnn(model, x, y, clip=clip)
    # torch's own clip_grad_norm_ on the training gradient: the same coefficient
    logits, _ = model(x)
    F.cross_entropy(logits.reshape(-1, 9), y.reshape(-1)).backward()
    before = [p.grad.clone() for p in model.parameters()]
    pre = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    torch_coef = float(model.rnn.weight_hh_l0.grad.norm() / before[1].norm())
    assert pre == pytest.approx(r.grad_norm, rel=1e-10)
    assert r.clip_coef == pytest.approx(torch_coef, rel=1e-9) and r.clip_coef < 1
    assert r.clip_coef_last < 1
    assert r.dL_dh_clipped == pytest.approx([v * r.clip_coef for v in r.dL_dh], rel=1e-12)
    assert r.dLT_dh_clipped == pytest.approx([v * r.clip_coef_last for v in r.dLT_dh], rel=1e-12)
    # a uniform factor: the clipped ratios are the unclipped ones
    clipped_ratio = [v / r.dLT_dh_clipped[-1] for v in r.dLT_dh_clipped]
    assert clipped_ratio == pytest.approx(r.ratio, rel=1e-12)
    # and no clipping means a coefficient of 1
    assert gradflow.measure_char_rnn(model, x, y, clip=0).clip_coef == 1.0


def test_small_helpers():
    assert gradflow.clip_coefficient(10.0, 1.0) == pytest.approx(1 / (10 + 1e-6))
    assert gradflow.clip_coefficient(0.5, 1.0) == 1.0
    assert gradflow.steps_back_below([1e-4, 1e-2, 0.5, 1.0], 1e-1) == 2
    assert gradflow.steps_back_below([0.5, 1.0], 1e-3) is None
    assert gradflow.table_rows(100) == [100, 99, 98, 95, 90, 80, 50, 1]
    assert gradflow.table_rows(5, all_rows=True) == [5, 4, 3, 2, 1]
    x, y = gradflow.sample_windows(np.arange(50, dtype=np.uint8), 4, 10, seed=3)
    assert x.shape == y.shape == (4, 10) and x.dtype == np.int64
    assert (y == x + 1).all() and x.max() < 49


# ----------------------------------------------------------------------------- 5. the CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gf")
    subprocess.run([sys.executable, "train.py", "--config", "configs/debug.yaml", f"log.dir={tmp}", "log.name=dbg",
                    "train.threads=1", "train.max_steps=20", "log.sample_length=0", "--cache-dir", str(tmp), "--quiet"],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return tmp / "dbg"


def printed_rows(out):
    """The table's data rows: lines that start with two integers (t, T-t) followed by numbers."""
    rows = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0].isdigit() and f[1].isdigit() and "e" in f[2]:
            rows.append(f)
    return rows


def cli(*args, cache):
    return gradflow.main([*args, "--threads", "1", "--cache-dir", str(cache)])


def test_cli_table_json_and_tensorboard(run_dir, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert cli("--checkpoint", str(run_dir), "--steps", "30", "--batch", "4", cache=run_dir.parent) == 0
    out = capsys.readouterr().out
    assert "||dL/dh_t||" in out and "ratio to t=T" in out and "summary:" in out
    assert [int(r[0]) for r in printed_rows(out)] == [30, 29, 28, 25, 20, 10, 1]
    logdir = run_dir / "gradflow" / "best_T30_B4"
    assert str(logdir) in out

    assert cli("--checkpoint", str(run_dir / "best.pt"), "--steps", "30", "--batch", "4", "--json",
               "--no-tensorboard", cache=run_dir.parent) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["cell"] == "gru" and doc["meta"]["trained_steps"] == 20 and doc["clip"] == 1.0
    assert len(doc["dL_dh"]) == len(doc["dLT_dh"]) == 30 and doc["ratio"][-1] == 1.0

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in gradflow.TAGS:
        assert f"gradflow/{tag}" in tags
    events = acc.Scalars("gradflow/dLT_dh")
    assert [e.step for e in events] == list(range(1, 31))
    assert [e.value for e in events] == pytest.approx(doc["dLT_dh"], rel=1e-5)  # float32 in the event file
    clipped = acc.Scalars("gradflow/dLT_dh_clipped")
    assert [e.value for e in clipped] == pytest.approx([v * doc["clip_coef_last"] for v in doc["dLT_dh"]], rel=1e-5)


def test_cli_untrained_clip_all_and_compare(run_dir, capsys, tmp_path):
    assert cli("--checkpoint", str(run_dir), "--steps", "12", "--batch", "2", "--untrained", "--seed", "4",
               "--clip", "0", "--all", "--logdir", str(tmp_path), cache=run_dir.parent) == 0
    out = capsys.readouterr().out
    assert "untrained (seed 4)" in out and "no clipping" in out
    assert [int(r[0]) for r in printed_rows(out)] == list(range(12, 0, -1))
    assert list((tmp_path / "untrained_seed4_T12_B2_clip0").glob("events.out.tfevents.*"))

    assert cli("--compare", str(run_dir), str(run_dir), "--steps", "12", "--batch", "2", "--json",
               "--no-tensorboard", cache=run_dir.parent) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["results"]) == 2 and doc["results"][0]["dLT_dh"] == doc["results"][1]["dLT_dh"]
    assert cli("--compare", str(run_dir), str(run_dir / "last.pt"), "--steps", "12", "--batch", "2",
               "--no-tensorboard", cache=run_dir.parent) == 0
    out = capsys.readouterr().out
    assert "LT ratio" in out and "1e-3 reached" in out
    # two checkpoints of one run are told apart by their files' names
    assert f"  {run_dir.name}/best (gru): {run_dir / 'best.pt'}" in out
    assert f"  {run_dir.name}/last (gru): {run_dir / 'last.pt'}" in out


def test_compared_runs_of_the_same_name_keep_their_curves_apart_under_one_logdir(run_dir, tmp_path, capsys):
    """sweeps/a/run0 and sweeps/b/run0: named by the directory alone, the second run's curves replaced the first's."""
    for side in "ab":
        (tmp_path / side / "m").mkdir(parents=True)
        shutil.copy(run_dir / "best.pt", tmp_path / side / "m" / "best.pt")
    assert cli("--compare", str(tmp_path / "a" / "m"), str(tmp_path / "b" / "m"), str(run_dir), "--steps", "4",
               "--batch", "2", "--logdir", str(tmp_path / "curves"), cache=run_dir.parent) == 0
    out = capsys.readouterr().out
    names = ["a/m", "b/m", f"{run_dir.parent.name}/{run_dir.name}"]
    for name in names:
        folder = tmp_path / "curves" / name / "best_T4_B2"
        assert f"tensorboard: {folder}  " in out and len(list(folder.glob("events.out.tfevents.*"))) == 1
        assert f"  {name} (gru): " in out  # the table names them so too
    assert gradflow.run_folders([tmp_path / "a" / "m", tmp_path / "a" / "m"]) == ["m", "m"]  # one run twice: one
    for link, run in (("latest", "a"), ("prev", "b")):  # runs given by links are named by the links, as they were
        (tmp_path / link).symlink_to(tmp_path / run / "m")
    assert gradflow.run_folders([tmp_path / "latest", tmp_path / "prev"]) == ["latest", "prev"]


def test_cli_user_errors_are_one_line_with_status_2(run_dir, tmp_path, capsys):
    from rnn_train.cli import run

    # the real entry point once, in a subprocess
    p = subprocess.run([sys.executable, "-m", "rnn_train", "gradflow", "--checkpoint", str(tmp_path / "missing.pt")],
                       cwd=ROOT, capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.startswith("error: ") and "missing.pt" in p.stderr and len(p.stderr.splitlines()) == 1
    # the rest in process, through the same rnn_train.cli.run
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_text("hello")
    cases = (["--checkpoint", str(bad)], ["--checkpoint", str(tmp_path)],
             ["--checkpoint", str(run_dir), "--steps", "100000"], ["--checkpoint", str(run_dir), "--steps", "0"],
             ["--checkpoint", str(run_dir), "--batch", "0"], ["--checkpoint", str(run_dir), "--clip", "-1"],
             ["--steps", "5"], ["--checkpoint", str(run_dir), "--steps", "5", "--whh-scale", "1e308"],
             ["--checkpoint", str(run_dir), "--steps", "5", "--split", "test"])
    for args in cases:
        try:
            status = run(gradflow.main, [*args, "--no-tensorboard", "--cache-dir", str(run_dir.parent)])
        except SystemExit as e:  # argparse's errors exit from inside ArgumentParser.error
            status = e.code
        captured = capsys.readouterr()
        assert status == 2, (args, captured.err)
        assert captured.err.startswith("error: ") and len(captured.err.splitlines()) == 1, captured.err
        assert captured.out == ""
        for flag in ("--steps", "--batch"):  # a bad count is named alone, with its value
            if args[-2:] == [flag, "0"]:
                assert f"{flag} must be >= 1, got 0" in captured.err
        if "test" in args:  # no --steps could help a split that is not there
            assert "run has no test split (data.test_fraction 0.0): use --split train or val\n" in captured.err
        if "--whh-scale" in args:  # a GRU's gates overflow: NaN, said rather than tabulated
            assert "the measurement is not finite" in captured.err and "--whh-scale 1e+308" in captured.err
    # --compare finds every checkpoint before it measures (and writes curves for) the first
    assert run(gradflow.main, ["--compare", str(run_dir), str(tmp_path / "missing.pt"), "--steps", "5",
                               "--logdir", str(tmp_path / "curves"), "--cache-dir", str(run_dir.parent)]) == 2
    assert "missing.pt" in capsys.readouterr().err and not (tmp_path / "curves").exists()


def test_summary_says_vanished_when_the_gradient_underflows():
    from rnn_train.teaching.gradflow import FlowResult, summary_line

    r = FlowResult(steps=3, batch=1, loss=1.0, loss_last=1.0, dL_dh=[0.0, 1e-300, 1.0], dLT_dh=[0.0, 1e-300, 1.0],
                   grad_norm=1.0, grad_norm_last=1.0, clip=0.0, clip_coef=1.0, clip_coef_last=1.0)
    line = summary_line(r)
    assert "vanished" in line and "grows" not in line and "nan" not in line


def test_the_header_says_whose_w_hh_it_measured_in_a_deeper_rnn():
    from rnn_train.teaching.gradflow import FlowResult, describe

    def header(layers):
        meta = {"cell": "rnn", "hidden_size": 8, "num_layers": layers, "trained_steps": 5, "spectral_radius": 0.5,
                "singular_value": 0.7}
        return describe(FlowResult(steps=3, batch=1, loss=1.0, loss_last=1.0, dL_dh=[1.0] * 3, dLT_dh=[1.0] * 3,
                                   grad_norm=1.0, grad_norm_last=1.0, clip=0.0, clip_coef=1.0, clip_coef_last=1.0,
                                   meta=meta))

    assert ", W_hh spectral radius 0.500, largest singular value 0.700" in header(1)
    assert ", the top layer's W_hh spectral radius 0.500" in header(2)  # --whh-scale scales every layer's


def test_a_corpus_that_changed_since_training_is_noted(tmp_path, capsys):
    """gradflow reads windows of the run's own corpus; if that text changed, the run never saw them."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, a text about things\n" * 300)
    subprocess.run([sys.executable, "train.py", "--config", "configs/debug.yaml", f"log.dir={tmp_path}", "log.name=r",
                    "data.kind=text", f"data.paths={corpus}", "train.threads=1", "train.max_steps=10",
                    "log.sample_length=0", "--cache-dir", str(tmp_path), "--quiet"],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    assert cli("--checkpoint", str(tmp_path / "r"), "--steps", "12", "--batch", "2", "--no-tensorboard",
               cache=tmp_path) == 0
    assert "changed since" not in capsys.readouterr().err
    corpus.write_text("other words, quite a different text\n" * 300)
    assert cli("--checkpoint", str(tmp_path / "r"), "--steps", "12", "--batch", "2", "--no-tensorboard",
               cache=tmp_path) == 0
    assert f"note: the corpus ({corpus}) changed since {tmp_path / 'r' / 'best.pt'} was trained: its val split" \
        in capsys.readouterr().err
    # shrunk below one of the run's training batches: said so, not told to lower data.batch_size (no key of gradflow's)
    from rnn_train.errors import UserError

    corpus.write_text("short now\n" * 10)  # 98 characters to train on: one batch of the run takes 144
    with pytest.raises(UserError, match=r"the val split of .* has 2 characters, fewer than --steps \+ 1 = 13"):
        cli("--checkpoint", str(tmp_path / "r"), "--steps", "12", "--batch", "2", "--no-tensorboard", cache=tmp_path)
    assert "changed since" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "--steps must be >= 1, got 0"), ("batch", 2.5, "--batch must be an integer, got 2.5"),
    ("whh_scale", "x", "--whh-scale must be a number, got 'x'"),
    ("split", "bogus", "--split must be one of train, val, test, got 'bogus'"),
    ("dtype", "float16", "--dtype must be one of float64, float32, got 'float16'"),
    ("clip", -1.0, "--clip must be >= 0"), ("whh_scale", math.inf, "--whh-scale and --keep-bias must be finite"),
])
def test_a_probe_built_from_python_is_checked_as_the_flags_are(field, value, message):
    from rnn_train.errors import UserError

    with pytest.raises(UserError, match=re.escape(message)):
        gradflow.Probe("any.pt", **{field: value})



def test_a_probe_takes_numpy_numbers_as_the_numbers_they_stand_for():
    p = gradflow.Probe("any.pt", steps=np.int64(5), batch=np.int32(2), clip=np.float32(0.5))
    assert (p.steps, p.batch, p.clip) == (5, 2, 0.5) and type(p.steps) is int


def test_each_measurement_has_its_own_folder_and_a_setting_at_its_default_leaves_the_name_alone():
    """The windows, the clip and the dtype change the curves, so they name the folder (a --batch or
    --dtype of their own replaced another measurement's curves); the device does not."""
    ckpt = Path("runs/x/best.pt")
    names = {gradflow.variant_name(gradflow.Probe("c", **kw), ckpt) for kw in
             [{}, {"batch": 4}, {"clip": 1.0}, {"dtype": "float32"}, {"seed": 1}, {"split": "train"}]}
    assert names == {"best_T100", "best_T100_B4", "best_T100_clip1", "best_T100_float32", "best_T100_seed1",
                     "best_T100_train"}
    assert gradflow.variant_name(gradflow.Probe("c", device="cuda"), ckpt) == "best_T100"
