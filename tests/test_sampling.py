"""The NumPy sampler: equal to the torch model (greedy text, probabilities), exact sampling, seeds,
batches, stopping rules and forced line starts, and the CLI streaming its output."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError
from rnn_train.model.charrnn import CharRNN
from rnn_train.model.checkpoint import load_model
from rnn_train.prediction import choose as choose_module
from rnn_train.prediction import cli
from rnn_train.prediction.choose import (Chooser, SamplingOptions, gumbel_noise, nucleus_filter, row_keys, softmax,
                                         uniforms)
from rnn_train.prediction.generate import encode_prefix, generate, samples
from rnn_train.prediction.sampler import CHUNK, RuleState, StopRules
from rnn_train.kernels import autotune
from rnn_train.kernels.build import extension
from rnn_train.kernels.precision import fused_bf16_available
from rnn_train.prediction import kernel_stepper
from rnn_train.prediction import stepper as stepper_module
from rnn_train.prediction.stepper import gemm_rows, make_stepper, sampling_key
from rnn_train.training.trainer import train
from tests.helpers import ROOT, tiny_config

STARTS = ("chun", "feng", "shi", "li")  # the syllables of 春,风,十,里
MODELS = {  # trained briefly on the built-in pinyin corpus: real weights, every cell and input kind
    "gru": ["model.hidden_size=24"],
    "lstm2_learned": ["model.cell=lstm", "model.num_layers=2", "model.embedding=learned", "model.embed_dim=8"],
    "rnn2": ["model.cell=rnn", "model.num_layers=2"],
    "gru_float64": ["model.dtype=float64", "model.num_layers=2"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sampling")
    for name, overrides in MODELS.items():
        train(tiny_config(tmp, "train.max_steps=60", *overrides, name=name), tmp / name, quiet=True,
              cache_dir=tmp / "cache")
    return tmp


def _load(runs, name):
    model, vocab, cfg, _ = load_model(runs / name / "best.pt")
    return model, vocab, cfg


@torch.no_grad()
def _torch_greedy(model, vocab, prefix, k):
    """The reference: the torch module called once per character, <unk> masked, argmax."""
    logits, state = model(encode_prefix(vocab, prefix))
    out = []
    for _ in range(k):
        step = logits[0, -1].clone()
        step[0] = float("-inf")
        out.append(int(step.argmax()))
        logits, state = model(torch.tensor([[out[-1]]]), state)
    return vocab.decode(out)


@pytest.fixture(params=["cpp", "numpy"])
def kernel(request, monkeypatch):
    """Generation on the C++ steps, or on the NumPy stepper (where the C++ kernels cannot be built)."""
    if request.param == "cpp" and extension() is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    if request.param == "numpy":
        monkeypatch.setattr(kernel_stepper, "supports", lambda model: False)
    return request.param


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_text_equals_the_torch_module_step_by_step(runs, name, kernel):
    model, vocab, _ = _load(runs, name)
    for prefix in ("zhong guo", "ni hao ", ""):
        assert generate(model, vocab, prefix, 300) == _torch_greedy(model, vocab, prefix, 300)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kernel,rows", [("cpp", None), ("numpy", 1), ("numpy", 2), ("numpy", 5)])  # NumPy GEMMs in
def test_next_character_probabilities_equal_torch_softmax(runs, name, kernel, rows):  # blocks of 1, 2, 5
    model, vocab, _ = _load(runs, name)
    ids = encode_prefix(vocab, "ni hao\nzhong guo ren min\nshi jie he ping\n" * 4)  # [1, P], teacher-forced
    with torch.no_grad():
        logits, _ = model(ids)  # [1, P, V]
    logits[..., 0] = float("-inf")
    expected = torch.softmax(logits[0].double(), dim=-1).numpy()  # [P, V]
    stepper = make_stepper(model, batch=5, rows=rows, kernel=kernel)  # 5 identical rows
    assert stepper.kernel == kernel
    got = np.stack([softmax(stepper.step(np.repeat(i, 5)).astype(np.float64)) for i in ids[0].tolist()])  # [P, 5, V]
    for row in range(5):
        np.testing.assert_allclose(got[:, row], expected, rtol=0, atol=1e-5)
    assert (got[..., 0] == 0).all()  # <unk> has probability 0


@pytest.fixture
def decisions(tmp_path, monkeypatch):
    """The decisions file in a temporary cache, and the process's memory of decisions reset around the test."""
    monkeypatch.setenv("RNN_TRAIN_CACHE", str(tmp_path / "cache"))
    saved = dict(autotune._MEMORY)
    autotune._MEMORY.clear()
    yield tmp_path / "cache" / "autotune.json"
    autotune._MEMORY.clear()
    autotune._MEMORY.update(saved)


def test_the_block_size_is_measured_once_per_shape_and_batch_and_then_read(runs, decisions, monkeypatch):
    model, _, _ = _load(runs, "lstm2_learned")
    rows = gemm_rows(model, 6)
    [(key, entry)] = json.loads(decisions.read_text()).items()
    assert key == sampling_key(model, 6) and key.endswith("-B6") and entry["rows"] == rows
    assert set(entry["us_per_step"]) == {"2", "4", "6"}  # the candidates below the batch, and the batch
    assert min(entry["us_per_step"], key=entry["us_per_step"].get) == str(rows)
    autotune._MEMORY.clear()  # a new process: the file answers
    monkeypatch.setattr(stepper_module, "measure_gemm_rows", lambda *a: pytest.fail("measured again"))
    assert gemm_rows(model, 6) == rows and make_stepper(model, 6, kernel="numpy").gemm_rows == rows
    assert gemm_rows(model, 1) == gemm_rows(model, 2) == stepper_module.GEMM_ROWS  # one call: nothing to measure
    decisions.write_text(json.dumps({key: {"rows": 3}}))  # a stored decision is what the stepper takes
    autotune._MEMORY.clear()
    assert make_stepper(model, 6, kernel="numpy").gemm_rows == 3


def test_gumbel_choice_samples_the_softmax_and_the_filters_keep_the_right_characters():
    logits = np.log(np.array([[1e-9, 0.05, 0.1, 0.15, 0.3, 0.4]], np.float32))  # [1, V]
    probs = softmax(logits.astype(np.float64))[0]
    n = 40000

    def frequencies(**opts):
        chooser = Chooser(SamplingOptions(temperature=1.0, seed=5, **opts), 1, 6, np.dtype(np.float32))
        chooser.refill(0, n)
        out, counts = np.empty(1, np.int64), np.zeros(6)
        for step in range(n):
            chooser.choose(logits.copy(), step, out)
            counts[out[0]] += 1
        return counts / n

    np.testing.assert_allclose(frequencies(), probs, atol=0.01)
    top2 = frequencies(top_k=2)
    assert top2[:4].sum() == 0 and top2[4] == pytest.approx(0.3 / 0.7, abs=0.01)
    nucleus = frequencies(top_p=0.6)  # 0.4 + 0.3 reach 0.6: the two most likely only
    assert nucleus[:4].sum() == 0 and nucleus[5] == pytest.approx(0.4 / 0.7, abs=0.01)


def test_top_p_at_a_temperature_near_float32s_smallest_keeps_the_top_and_says_nothing():
    """At such a temperature all but the most likely (and its ties) are infinitely less likely: the
    nucleus is the top, whatever top_p, with no overflow or 0/0 warning on the way."""
    import warnings

    logits = np.array([[0.5, 2.0, 2.0, -1.0, -np.inf]], np.float32)
    for temperature in (1.0, 1e-39, 1e-50, 5e-324):
        kept = logits.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            nucleus_filter(kept, 0.9, temperature)
        expected = [True, True, True, False, False] if temperature == 1.0 else [False, True, True, False, False]
        assert (kept[0] > -np.inf).tolist() == expected, temperature


def test_each_row_has_its_own_counter_based_stream():
    keys = row_keys(7, 3)
    u = uniforms(keys, 0, 4, 5)  # [B, steps, V]
    assert u.shape == (3, 4, 5) and ((0 < u) & (u < 1)).all() and len(np.unique(u)) == u.size
    assert np.array_equal(uniforms(row_keys(7, 6)[:3], 0, 4, 5), u)  # row i's key does not depend on the batch
    assert np.array_equal(uniforms(keys, 2, 2, 5), u[:, 2:])  # a position's numbers: wherever the chunk starts
    assert np.array_equal(uniforms(keys, np.array([0, 2, 1]), 1, 5)[:, 0], u[[0, 1, 2], [0, 2, 1]])  # per row
    assert not np.array_equal(uniforms(row_keys(8, 3), 0, 4, 5), u)  # another seed, other numbers
    g = gumbel_noise(row_keys(3, 1), 0, 20000, 10)
    assert abs(g.mean() - 0.5772) < 0.01 and abs(g.var() - np.pi ** 2 / 6) < 0.05  # Gumbel(0, 1)


def test_the_noise_is_the_formula_and_the_temperature_scales_it(monkeypatch):
    keys = row_keys(5, 3)
    g = gumbel_noise(keys, np.array([0, 7, 3]), 6, 11, np.array([1.0, 0.5, 2.0]))  # the C++ function, if built
    u = np.stack([uniforms(keys[i:i + 1], p, 6, 11)[0] for i, p in enumerate([0, 7, 3])]).astype(np.float64)
    plain = -np.log(-np.log(u))
    np.testing.assert_allclose(g, plain * np.array([1.0, 0.5, 2.0])[:, None, None], rtol=2e-6, atol=2e-6)
    monkeypatch.setattr(choose_module, "_noise_op", lambda: None)  # NumPy's own
    assert np.array_equal(gumbel_noise(keys, 0, 6, 11, 0.5), np.float32(0.5) * gumbel_noise(keys, 0, 6, 11))


def test_nucleus_keeps_the_fewest_most_likely_characters_that_reach_p():
    logits = np.log(np.array([[0.1, 0.5, 0.15, 0.25], [0.97, 0.01, 0.01, 0.01]]))
    kept = lambda p: np.isfinite(_filtered(logits, p))  # noqa: E731
    assert kept(0.5).tolist() == [[False, True, False, False], [True, False, False, False]]
    assert kept(0.6).tolist() == [[False, True, False, True], [True, False, False, False]]
    assert kept(0.85).tolist() == [[False, True, True, True], [True, False, False, False]]
    assert kept(1.0).all()


def test_nucleus_keeps_the_most_likely_character_however_small_p_is():
    # float32 logits: a p below float32's smallest number compares as 0, which nothing is below
    logits = np.log(np.array([[0.1, 0.5, 0.15, 0.25], [0.2, 0.2, 0.3, 0.3]], np.float32))
    for p in (1e-300, 1e-45, 1e-7):
        assert np.isfinite(_filtered(logits, p)).tolist() == [[False, True, False, False], [False, False, True, False]]


def _filtered(logits, p):
    out = logits.copy()
    nucleus_filter(out, p)
    return out


def test_seeded_samples_are_reproducible_independent_of_the_batch_and_of_k(runs, kernel):
    model, vocab, _ = _load(runs, "gru")
    opts = SamplingOptions(temperature=1.0, top_k=10, seed=11)
    one = samples(model, vocab, "ni", 200, opts, num_samples=1)
    four = samples(model, vocab, "ni", 200, opts, num_samples=4)
    assert four[0] == one[0]  # sample i draws from its own stream (seed, i)
    assert len(set(four)) == 4  # and the streams differ
    assert samples(model, vocab, "ni", 200, opts, num_samples=3) == four[:3]
    assert samples(model, vocab, "ni", 200, opts, num_samples=6)[:4] == four  # GEMMs in blocks of rows too
    assert samples(model, vocab, "ni", 90, opts, num_samples=4) == [s[:90] for s in four]  # prefix of a longer run
    other = samples(model, vocab, "ni", 200, SamplingOptions(temperature=1.0, top_k=10, seed=12))
    assert other[0] != one[0]
    numpy_seed = SamplingOptions(temperature=1.0, top_k=10, seed=np.int64(11))  # np.random's seeds are NumPy ints
    assert samples(model, vocab, "ni", 200, numpy_seed, num_samples=1) == one
    with pytest.raises(UserError, match=r"--seed must be an integer, got 11\.0"):
        SamplingOptions(temperature=1.0, seed=11.0)


def test_on_the_cpp_steps_sample_i_is_the_same_whatever_the_batch_bit_for_bit(runs, kernel):
    if kernel != "cpp":
        return  # the NumPy stepper's rows round with the rows per GEMM call (see test above)
    model, vocab, _ = _load(runs, "lstm2_learned")
    opts = SamplingOptions(temperature=1.0, seed=2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # rows split over threads, tiles of every size
    try:
        alone = samples(model, vocab, "ni", 3000, opts, num_samples=1)[0]
        for n in (3, 11, 19):
            assert samples(model, vocab, "ni", 3000, opts, num_samples=n)[0] == alone
    finally:
        torch.set_num_threads(before)


def test_a_chunk_sampled_in_cpp_is_what_the_python_loop_draws_step_by_step(runs, monkeypatch):
    if extension() is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    model, vocab, _ = _load(runs, "gru")
    opts = SamplingOptions(temperature=0.9, seed=4)
    in_cpp = samples(model, vocab, "ni", 1000, opts, num_samples=3)
    monkeypatch.setattr(Chooser, "plain", property(lambda self: False))  # choose + step in Python
    assert samples(model, vocab, "ni", 1000, opts, num_samples=3) == in_cpp


def test_a_greedy_choice_in_cpp_breaks_ties_as_numpy_argmax_does(runs):
    if extension() is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    model, vocab, _ = _load(runs, "gru")
    s = kernel_stepper.KernelStepper(model, 5)
    V = s.vocab_size
    assert V > 20  # more than one vector of logits (8 or 16 wide) and a part past the last whole one
    rng = np.random.default_rng(0)
    s.logits[:] = rng.standard_normal((5, V)).astype(np.float32)
    s.logits[0, [3, 19]] = 9.0  # a tie between two vectors
    s.logits[1, [V - 2, V - 1]] = 9.0  # a tie at the end
    s.logits[2] = 1.5  # all equal
    s.logits[3, [17, V - 1]] = 9.0  # a tie far apart
    s.logits[4, 0] = -0.0
    s.logits[4, 1:] = -1.0
    s.logits[4, 5] = 0.0  # -0.0 and 0.0 are equal: the first wins
    want = s.logits.argmax(axis=1)
    out = np.empty((1, 5), np.int64)
    s.sample(1, 0, np.arange(5, dtype=np.uint64), 0, out, 0.0)
    assert out[0].tolist() == want.tolist() == [3, V - 2, 0, 17, 0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_model_with_a_weight_that_is_not_finite_is_refused_with_a_user_error(runs, kernel, bad):
    model, vocab, _ = _load(runs, "gru")
    with torch.no_grad():
        model.rnn.weight_hh_l0[3, 5] = bad
    with pytest.raises(UserError, match="not finite"):
        make_stepper(model, 2)


def test_a_row_takes_its_own_state(runs, kernel):
    model, vocab, _ = _load(runs, "lstm2_learned")
    with torch.no_grad():
        _, state = model(encode_prefix(vocab, "zhong guo"))
    s = make_stepper(model, 3)
    ids = np.array([5, 5, 5])
    s.step(ids)
    s.load_state(state, rows=[1])  # one row from a warmed-up state, the others go on
    want, others = make_stepper(model, 1), make_stepper(model, 1)
    want.load_state(state)
    others.step(ids[:1])
    got = s.step(ids)
    np.testing.assert_allclose(got[1], want.step(ids[:1])[0], rtol=1e-5)
    np.testing.assert_allclose(got[[0, 2]], np.repeat(others.step(ids[:1]), 2, axis=0), rtol=1e-5)


def test_bf16_steps_stay_close_to_the_module_and_batch_invariant_where_amx_runs(runs, capsys, monkeypatch):
    monkeypatch.setattr(stepper_module, "_NOTES", set())
    model, vocab, _ = _load(runs, "lstm2_learned")
    stepper = make_stepper(model, 5, precision="bf16")
    if not fused_bf16_available():  # an AVX2 or AVX-512 machine without AMX: said once, float32 used
        assert stepper.precision == "fp32" and "sampling in float32" in capsys.readouterr().err
        return
    assert stepper.precision == "bf16"
    ids = encode_prefix(vocab, "ni hao\nzhong guo ren min\nshi jie he ping\n" * 4)
    with torch.no_grad():
        logits, _ = model(ids)
    logits[..., 0] = float("-inf")
    expected = torch.softmax(logits[0].double(), dim=-1).numpy()  # [P, V]
    alone = make_stepper(model, 1, precision="bf16")
    for t, i in enumerate(ids[0].tolist()):
        got = stepper.step(np.repeat(i, 5))
        assert all(np.array_equal(got[r], got[0]) for r in range(5))  # rows alike, bit for bit
        assert np.array_equal(alone.step(np.array([i]))[0], got[0])  # and as at batch 1
        probs = softmax(got[:1].astype(np.float64))[0]
        assert np.abs(probs - expected[t]).max() < 0.03  # bf16 products: ~1e-3 typical (docs/prediction.md)
    float64 = CharRNN(len(vocab), "gru", 8).double()
    assert make_stepper(float64, 2, precision="bf16").precision == "fp32"
    assert "sampling in float32" in capsys.readouterr().err


def test_cli_precision_bf16_says_what_ran(runs):
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(runs / "gru"), "--prefix", "ni", "-k", "80",
                          "--temperature", "0.8", "--seed", "1", "--precision", "bf16"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if fused_bf16_available():
        assert "bf16 steps" in out.stdout and out.stderr == ""
    else:
        assert "sampling in float32" in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert "bf16 steps" not in out.stdout


def test_cli_precision_bf16_on_a_float64_model_says_float32_ran(runs):
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(runs / "gru_float64"), "--prefix", "ni",
                          "-k", "20", "--precision", "bf16"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "sampling in float32" in out.stderr and "continuation (greedy, 20 chars):" in out.stdout


def test_unk_is_never_generated_even_when_the_model_prefers_it():
    torch.manual_seed(0)
    vocab = Vocab.build("abc d\n")
    model = CharRNN(len(vocab), "gru", 8).eval()
    with torch.no_grad():
        model.decoder.bias[0] = 50.0  # <unk> would win every step
    for opts in (SamplingOptions(), SamplingOptions(temperature=2.0, seed=1),
                 SamplingOptions(temperature=1.0, top_k=1, seed=1), SamplingOptions(temperature=1.0, top_p=0.1, seed=1)):
        texts = samples(model, vocab, "ab", 300, opts, num_samples=3)
        assert all(len(t) == 300 and "<unk>" not in t for t in texts)


def test_stop_at_and_max_lines_end_each_sample_where_asked(runs):
    model, vocab, _ = _load(runs, "gru")
    opts = SamplingOptions(temperature=1.0, seed=3)
    for text in samples(model, vocab, "ni", 2000, opts, StopRules(stop_at="an"), num_samples=5):
        assert text.endswith("an") and text.find("an") == len(text) - 2
    texts = samples(model, vocab, "ni", 2000, opts, StopRules(max_lines=3), num_samples=5)
    assert all(t.count("\n") == 3 and t.endswith("\n") for t in texts)
    assert len(set(map(len, texts))) > 1  # each sample stopped on its own
    capped = samples(model, vocab, "ni", 10, opts, StopRules(max_lines=1000), num_samples=2)
    assert [len(t) for t in capped] == [10, 10]  # -k still bounds


def test_line_starts_force_the_start_of_every_line_and_carry_the_state(runs):
    model, vocab, _ = _load(runs, "gru")
    starts = STARTS
    opts = SamplingOptions(temperature=0.8, seed=1)
    for text in samples(model, vocab, "", 2000, opts, StopRules(line_starts=starts), num_samples=4):
        lines = text.split("\n")
        assert lines[-1] == "" and len(lines) == 5  # four lines, each ended by its newline
        assert all(line.startswith(s) for line, s in zip(lines, starts))
    # the forced characters are fed to the model: the greedy text after them is the model's own continuation
    forced = samples(model, vocab, "", 2000, SamplingOptions(), StopRules(line_starts=("chun",)))[0]
    assert forced == "chun" + generate(model, vocab, "\nchun", len(forced) - 4)
    # a prefix in the middle of a line: the line is finished first, then the starts apply
    mid = samples(model, vocab, "ni h", 2000, opts, StopRules(line_starts=("feng",)))[0]
    assert mid.count("\n") == 2 and mid.split("\n")[1].startswith("feng")


def test_line_starts_the_vocab_cannot_spell_are_named(runs):
    model, vocab, _ = _load(runs, "gru")
    with pytest.raises(UserError, match=r"'zh\u00fcng' cannot be spelled .*\(no '\u00fc'\)"):
        samples(model, vocab, "", 100, rules=StopRules(line_starts=("chun", "zh\u00fcng")))


def test_cli_line_starts_take_chinese_characters_for_a_pinyin_model(runs):
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(runs / "gru"), "--line-starts",
                          "春,风,十,里", "--temperature", "0.8", "--seed", "1", "--num-samples", "2"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    body = out.stdout.split("2 samples:\n", 1)[1]
    parts = body.split("--- sample ")[1:]
    assert [p.split("\n", 1)[0] for p in parts] == ["1", "2"]
    for part in parts:
        lines = part.split("\n")[1:-1]  # after the header line, before the final newline
        # each line starts with the whole syllable: the space after it is forced too (li cannot become liu)
        assert len(lines) == 4 and [line[:len(s) + 1] for line, s in zip(lines, STARTS)] == [s + " " for s in STARTS]


def test_one_sample_is_written_chunk_by_chunk(runs, monkeypatch):
    model, vocab, _ = _load(runs, "gru")

    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.flushed = []

        def flush(self):
            self.flushed.append(self.getvalue())

    out = Recorder()
    from rnn_train.prediction.generate import stream

    chunks = stream(model, vocab, "ni", 5 * CHUNK + 3, SamplingOptions(temperature=1.0, seed=2))
    cli._write_samples("ni", chunks, 1, out)
    assert len(out.flushed) == 6  # text reached the stream every CHUNK characters, not only at the end
    assert [len(s) for s in out.flushed] == [2 + CHUNK * i for i in range(1, 6)] + [2 + 5 * CHUNK + 3]
    assert out.getvalue().rstrip("\n") == "ni" + generate(model, vocab, "ni", 5 * CHUNK + 3, temperature=1.0, seed=2)


def test_cli_output_on_a_terminal_is_the_piped_text(runs):
    import pty

    args = [sys.executable, "predict.py", "--checkpoint", str(runs / "gru"), "--prefix", "ni", "-k", "300",
            "--temperature", "0.9", "--seed", "4"]
    piped = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert piped.returncode == 0, piped.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    received = b""
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the terminal closed: the program has exited
            break
        if not data:
            break
        received += data
    os.close(leader)
    assert proc.wait() == 0
    assert received.decode().replace("\r\n", "\n") == piped.stdout  # the terminal shows LF as CRLF


def _stopped(text: str, stop: str, syllables: bool, before: str = "") -> str | None:
    """Feed `text` to a RuleState one character a step: what the sample keeps, None if no stop."""
    vocab = Vocab.build("abcdefghijklmnopqrstuvwxyz \n,.2")
    state = RuleState(StopRules(stop_at=stop, syllables=syllables), vocab, 1, len(text), before)
    for t, ch in enumerate(text):
        if state.apply(np.array([vocab.stoi[ch]]), t):
            return text[:state.end[0]]
    return None


def test_a_stop_converted_from_chinese_matches_whole_syllables_and_any_syllable_end():
    # 国 reads as 'guo ': the corpus has it ending a line and before a mark too
    assert _stopped("zhong guo\nren min ", "guo ", True) == "zhong guo\n"
    assert _stopped("zhong guo. ren ", "guo ", True) == "zhong guo."
    assert _stopped("guo2 guo ", "guo ", True) == "guo2 guo "  # another tone's syllable goes on
    # 安 reads as 'an ': never the end of another syllable, whatever came before the sample
    assert _stopped("nan dang an ", "an ", True) == "nan dang an "
    assert _stopped("an ", "an ", True, before="n") is None
    assert _stopped("an ", "an ", True, before=" ") == "an "
    assert _stopped("an\n", "an ", True) == "an\n"  # no prefix: a sample starts as a line does
    # typed as pinyin, a stop matches as written
    assert _stopped("zhong guo\nren guo ", "guo ", False) == "zhong guo\nren guo "
    assert _stopped("nan ", "an ", False) == "nan "


def test_predict_says_a_chinese_stop_matches_whole_syllables(runs):
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(runs / "gru" / "best.pt"), "--prefix",
                          "你", "--stop-at", "安", "-k", "5"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "up to 5 chars, stop at whole syllables 'an ')" in out.stdout


def test_the_line_above_a_continuation_counts_one_char_and_one_line_in_the_singular(runs):
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(runs / "gru" / "best.pt"), "--prefix",
                          "ni", "--max-lines", "1", "-k", "1"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "(greedy, up to 1 char, 1 line):" in out.stdout


def test_a_chinese_stop_of_marks_alone_has_no_syllable_to_match_whole():
    from rnn_train.config import build_config
    from rnn_train.prediction.textstream import is_converted_stop

    cfg = build_config({"data": {"kind": "pinyin"}, "train": {"max_steps": 1}})
    assert is_converted_stop("安", cfg) and is_converted_stop("中国。你", cfg)
    assert not is_converted_stop("。", cfg) and not is_converted_stop("an ", cfg)
