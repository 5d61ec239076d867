"""Prediction: single-step distribution, K-step continuation with the state carried, clear errors."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnn_train.model.checkpoint import load_model
from rnn_train.errors import UserError
from rnn_train.prediction.generate import generate, next_char_distribution, predict
from rnn_train.training.trainer import train
from tests.helpers import ROOT, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    train(tiny_config(tmp, "train.max_steps=80", "model.cell=lstm"), tmp / "run", quiet=True, cache_dir=tmp / "c")
    model, vocab, _, _ = load_model(tmp / "run" / "best.pt")
    return tmp / "run", model, vocab


def test_single_step_gives_sorted_probabilities_of_real_characters(trained):
    _, model, vocab = trained
    top = next_char_distribution(model, vocab, "zhong guo", top_n=5)
    probs = [p for _, p in top]
    assert len(top) == 5 and probs == sorted(probs, reverse=True)
    assert 0 < sum(probs) <= 1 + 1e-6
    full = next_char_distribution(model, vocab, "zhong guo", top_n=len(vocab))
    assert len(full) == len(vocab) - 1 and "<unk>" not in [c for c, _ in full]  # real characters only
    assert sum(p for _, p in full) == pytest.approx(1.0, abs=1e-5)


def _module_calls(model, fn):
    """Time steps of every call of the recurrent module while `fn` runs."""
    seen = []
    handle = model.rnn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1]))
    try:
        result = fn()
    finally:
        handle.remove()
    return seen, result


def test_k_steps_carry_the_state_with_one_module_call_for_the_prefix(trained):
    _, model, vocab = trained
    seen, text = _module_calls(model, lambda: generate(model, vocab, "zhong guo", k=30))
    assert len(text) == 30
    assert seen == [len("zhong guo")]  # one pass over the prefix; the 30 steps run in NumPy, not the module


def test_predict_warms_the_state_up_once(trained):
    _, model, vocab = trained
    seen, p = _module_calls(model, lambda: predict(model, vocab, "zhong guo", k=20, top_n=3))
    assert seen == [len("zhong guo")]  # the top-n list and the continuation share one warm-up
    assert len(p.continuation) == 20 and len(p.next_chars) == 3
    assert p.next_chars == next_char_distribution(model, vocab, "zhong guo", top_n=3)
    assert p.continuation == generate(model, vocab, "zhong guo", k=20)


def test_greedy_continuation_equals_rereading_the_whole_text_each_time(trained):
    _, model, vocab = trained
    prefix, text = "ni hao", generate(model, vocab, "ni hao", k=15)
    naive = prefix
    for _ in range(15):  # the slow way: re-run everything for every character
        logits, _ = model(torch.as_tensor(vocab.encode(naive).astype("int64"))[None])
        logits[0, -1, 0] = float("-inf")
        naive += vocab.itos[int(logits[0, -1].argmax())]
    assert prefix + text == naive


def test_sampling_is_reproducible_with_a_seed_and_varies_without(trained):
    _, model, vocab = trained
    a = generate(model, vocab, "zhong", k=40, temperature=1.0, seed=3)
    b = generate(model, vocab, "zhong", k=40, temperature=1.0, seed=3)
    c = generate(model, vocab, "zhong", k=40, temperature=1.0, seed=4)
    assert a == b and a != c
    state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    generate(model, vocab, "zhong", k=10, temperature=1.0)
    assert torch.equal(state, torch.get_rng_state())  # the global RNGs are untouched
    assert (np_state == np.random.get_state()[1]).all()
    top1 = generate(model, vocab, "zhong", k=20, temperature=1.0, top_k=1, seed=9)
    assert top1 == generate(model, vocab, "zhong", k=20)  # top-k 1 is greedy


def test_unknown_prefix_characters_are_named_or_replaced(trained):
    _, model, vocab = trained
    with pytest.raises(UserError, match=r"'中', 'Q'"):
        generate(model, vocab, "zhong中Q", k=5)
    assert len(predict(model, vocab, "zhong中Q", k=5, unk="replace").continuation) == 5


def test_predict_cli_prints_both_predictions(trained):
    run_dir, _, _ = trained
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(run_dir), "--prefix", "zhong guo",
                          "-k", "25", "--top-n", "3"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "prefix: 'zhong guo'"
    assert lines[1] == "next character (top 3):" and len(lines) == 2 + 3 + 2
    assert lines[-1].startswith("zhong guo") and len(lines[-1]) == len("zhong guo") + 25


@pytest.mark.parametrize("args,needle", [
    (["--prefix", "zhong\u00e9"], "'é'"),
    (["--prefix", "a", "-k", "-3"], "-k must be >= 0, got -3"),
    (["--prefix", "a", "--top-n", "0"], "--top-n must be >= 1, got 0"),
    (["--prefix", "a", "--top-k", "-2"], "--top-k must be >= 0, got -2"),
    (["--prefix", "a", "--temperature", "nan"], "--temperature must be in [0, 100], got nan"),
    (["--prefix", "a", "--temperature", "1e39"], "--temperature must be in [0, 100], got 1e+39"),
    (["--prefix", "a", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--prefix", "a", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--prefix", "a", "--num-samples", "0"], "--num-samples must be >= 1"),
    (["--line-starts", "zhong,Xyz"], "'Xyz' cannot be spelled with the model's vocab (no 'X')"),
    (["--line-starts", ","], "--line-starts ',' has an empty entry (entries are separated by commas)"),
    (["--line-starts", "zhong,,guo"], "--line-starts 'zhong,,guo' has an empty entry"),
    # a line break inside an entry: the line ended there, and the rest of the entry was never forced
    (["--line-starts", "chun\nfeng,li"], "--line-starts entry 'chun\\nfeng ' holds a line break"),
    (["--line-starts", "春\n风,里"], "--line-starts entry 'chun\\nfeng ' holds a line break"),
    (["--prefix", "a", "--stop-at", "\u00e9"], "--stop-at"),
    # a byte that is not UTF-8 on the command line (a Latin-1 terminal's é): named as a byte, not a character
    (["--prefix", "caf\udce9", "--unk", "replace"], "prefix holds the byte 0xe9, which is not UTF-8, at character 3"),
    (["--prefix", "ni", "--stop-at", "\udce9"], "--stop-at holds the byte 0xe9, which is not UTF-8"),
    (["--line-starts", "a,\udce9"], "--line-starts holds the byte 0xe9, which is not UTF-8, at character 2"),
    (["--prefix", "a", "--seed", "-1", "--temperature", "1"], "--seed must be in [0, 2^63), got -1"),
    (["--prefix", "a", "--seed", str(2**64 + 1), "--temperature", "1"], "--seed must be in [0, 2^63)"),
])
def test_predict_cli_errors_are_one_line_with_status_2(trained, args, needle):
    run_dir, _, _ = trained
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(run_dir), *args], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr


def test_a_chinese_prefix_is_converted_to_pinyin_for_a_pinyin_model(trained):
    run_dir, _, _ = trained
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(run_dir), "--prefix", "中国",
                          "-k", "5"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "prefix: 'zhong guo '" in out.stdout and "converted to pinyin" in out.stdout


def test_chinese_line_starts_are_said_converted_as_a_chinese_prefix_is(trained):
    run_dir, _, _ = trained
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(run_dir), "--line-starts", "春,风",
                          "-k", "30", "--temperature", "1", "--seed", "1"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ("--line-starts in Chinese characters converted to pinyin like the corpus (none tones): 'chun ', 'feng '\n"
            in out.stdout)


def test_chinese_punctuation_alone_is_read_like_the_corpus_for_a_pinyin_model(trained):
    run_dir, _, _ = trained
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(run_dir), "--prefix", "ni hao\uff0c",
                          "-k", "5", "--unk", "replace"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # (this corpus of phrases has no "," either: --unk replace)
    assert "converted to pinyin like the corpus (none tones): 'ni hao,'" in out.stdout
    assert "prefix: 'ni hao,'" in out.stdout


def test_generation_runs_in_eval_mode_and_leaves_the_callers_mode_and_rng_alone(tmp_path):
    torch.manual_seed(0)
    from rnn_train.model.charrnn import CharRNN
    from rnn_train.data.vocab import Vocab

    vocab = Vocab.build("abcdefgh ")
    model = CharRNN(len(vocab), "gru", 16, num_layers=2, dropout=0.5).train()
    rng = torch.get_rng_state()
    first = generate(model, vocab, "abc", k=20, temperature=1.0, seed=1)
    assert model.training  # the trainer's model is still in training mode
    assert torch.equal(rng, torch.get_rng_state())  # dropout drew nothing from the global RNG
    assert generate(model, vocab, "abc", k=20, temperature=1.0, seed=1) == first  # no dropout noise


def test_non_finite_temperature_is_a_user_error(trained):
    _, model, vocab = trained
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(UserError, match="temperature"):
            generate(model, vocab, "zhong", k=3, temperature=bad)


@pytest.fixture(scope="module")
def letters_run(tmp_path_factory):
    """A model of a `data.letters_only` corpus: lowercase ASCII letters and spaces only."""
    tmp = tmp_path_factory.mktemp("letters")
    text = tmp / "text.txt"
    text.write_text("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite "
                    "matter to us. His grey eyes shone and twinkled, and his usually pale face was flushed.\n" * 40)
    train(tiny_config(tmp, "data.kind=text", f"data.paths={text}", "data.letters_only=true", "data.val_fraction=0.1",
                      "train.max_steps=20"), tmp / "run", quiet=True, cache_dir=tmp / "c")
    return tmp / "run"


@pytest.mark.parametrize("typed,read", [
    ("The Time-Traveller, ", "the time traveller "),
    ("HIS grey\neyes!", "his grey eyes "),
    ("  twinkled", " twinkled"),
    ("and", "and"),
])
def test_a_letters_only_model_reads_the_prefix_by_its_corpus_rule(letters_run, typed, read):
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(letters_run), "--prefix", typed, "-k", "5"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"prefix: {read!r}" in out.stdout and out.stdout.splitlines()[-1].startswith(read)
    assert ("reduced to lowercase letters and spaces" in out.stdout) == (typed != read)


def test_a_letters_only_model_reads_stop_at_by_the_same_rule(letters_run):
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(letters_run), "--prefix", "The Time",
                          "--stop-at", "Eyes.", "-k", "300", "--temperature", "1", "--seed", "3"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--stop-at reduced to lowercase letters and spaces like the corpus (data.letters_only): 'eyes '" in out.stdout
    assert "stop at 'eyes '" in out.stdout


def test_the_prefix_rule_is_the_corpus_rule_but_for_the_ends():
    from rnn_train.config import load_config
    from rnn_train.data.dataset import letters_only
    from rnn_train.prediction.textstream import letters_prefix

    cfg = load_config(None, ["data.letters_only=true", "train.max_steps=1"])
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ ,.!\n\t-'é中😀")
    for _ in range(500):
        text = "".join(rng.choice(alphabet, size=rng.integers(0, 12)))
        assert letters_prefix(text, cfg).strip() == letters_only(text), text
    plain = load_config(None, ["train.max_steps=1"])
    assert letters_prefix("The Time, ", plain) == "The Time, "  # only for a letters_only model



def test_a_chinese_prefix_keeps_the_newlines_at_its_ends_and_any_prefix_reads_newlines_like_the_corpus():
    """The converter drops a text's leading and trailing blank lines (a corpus's edges); a prefix's
    newline asks for what follows a line, so it stays. CRLF, a lone CR and a leading BOM read as
    the corpus reads them (corpus.file_chunks), for every kind of model."""
    from rnn_train.config import load_config
    from rnn_train.prediction.textstream import corpus_text

    cfg = load_config(None, ["data.kind=pinyin", "data.tones=none", "train.max_steps=1"])
    for typed, read in [("中国\n", "zhong guo\n"), ("\n中国", "\nzhong guo "), ("\n\n中国，\n\n", "\n\nzhong guo,\n\n"),
                        ("中国", "zhong guo "), ("中国\r\n人民\r", "zhong guo\nren min\n"), ("\ufeff中国", "zhong guo "),
                        ("zhong guo\r\n", "zhong guo\n")]:
        assert corpus_text(typed, cfg, "prefix")[0] == read, typed
    text = load_config(None, ["data.kind=text", "data.paths=any.txt", "train.max_steps=1"])
    assert corpus_text("\ufeffthe\r\nquick\rfox", text, "prefix") == ("the\nquick\nfox", [])


def test_weights_that_do_not_fit_their_config_are_one_line_naming_the_keys_and_shapes(trained, tmp_path):
    from rnn_train.model.checkpoint import load_checkpoint, save_checkpoint

    run, _, _ = trained
    ckpt = load_checkpoint(run / "best.pt")
    del ckpt["model"]["decoder.bias"]
    ckpt["model"]["decoder.weight"] = ckpt["model"]["decoder.weight"][:, :3].clone()
    save_checkpoint(tmp_path / "bad.pt", ckpt)
    with pytest.raises(UserError) as e:
        load_model(tmp_path / "bad.pt")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'bad.pt'}: weights do not fit the model its config")
    assert 'Missing key(s) in state_dict: "decoder.bias"' in message and "size mismatch for decoder.weight" in message


def test_load_model_names_a_missing_device_not_the_file_and_draws_nothing_from_the_global_generator(trained):
    run, _, _ = trained
    for device, message in [("cuda", "no CUDA device is available"), ("tpu", "'tpu' is not a device")]:
        if device == "cuda" and torch.cuda.is_available():
            continue  # a GPU machine loads it: nothing to refuse
        with pytest.raises(UserError, match=message):
            load_model(run, device=device)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    load_model(run)  # builds a model (initial weights drawn) and overwrites its weights
    assert torch.equal(torch.rand(4), expected)


def test_the_python_api_refuses_what_the_flags_refuse_in_one_line(trained):
    """A library caller's mistakes are the command line's messages, not errors from inside torch or C++."""
    _, model, vocab = trained
    for call, message in [
        (lambda: predict(model, vocab, "zhong", k=1.5), "-k must be an integer, got 1.5"),
        (lambda: predict(model, vocab, "zhong", k=-1), "-k must be >= 0, got -1"),
        (lambda: predict(model, vocab, "zhong", top_n=0), "--top-n must be an integer >= 1, got 0"),
        (lambda: next_char_distribution(model, vocab, "zhong", top_n=-1), "--top-n must be an integer >= 1"),
        (lambda: generate(model, vocab, "zhong", 5, unk="bogus"), "--unk must be error or replace, got 'bogus'"),
        (lambda: predict(model, vocab, "ni", k=5, temperature=1.0, top_k=2.5, seed=1), "--top-k must be an integer, "
                                                                                      "got 2.5"),
        # True counts as 1 in Python: refused alike by every integer argument (rnn_train.errors.integer)
        (lambda: predict(model, vocab, "ni", k=True), "-k must be an integer, got True"),
        (lambda: predict(model, vocab, "ni", k=5, temperature=1.0, top_k=True, seed=1), "--top-k must be an integer, "
                                                                                       "got True"),
        (lambda: predict(model, vocab, "ni", k=5, temperature=1.0, seed=True), "--seed must be an integer, got True"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            call()
    assert len(predict(model, vocab, "zhong", k=np.int64(5), top_n=np.int64(2)).continuation) == 5
    assert len(predict(model, vocab, "zhong", k=5, temperature=1.0, top_k=np.int64(3), seed=1).continuation) == 5


def test_a_vocab_from_another_run_is_refused_before_it_maps_characters_to_the_wrong_rows(trained):
    """Only sizes can be compared; both a smaller and a larger vocab than the model's are refused."""
    from rnn_train.data.vocab import Vocab
    from rnn_train.prediction.score import score_pieces

    _, model, vocab = trained
    letters = "".join(c for c in vocab.itos if len(c) == 1 and c.isalpha())
    for other in (Vocab.build(letters[:3] + "\n"), Vocab.build(letters + "\n" + "0123456789XYZ")):
        assert len(other) != len(vocab)
        for call in (lambda: predict(model, other, letters[:2], k=3),
                     lambda: generate(model, other, letters[:2], 3, temperature=1.0, seed=0),
                     lambda: next_char_distribution(model, other, letters[:2]),
                     lambda: score_pieces(model, other, [letters[:2] * 20])):
            with pytest.raises(UserError, match=f"the vocab has {len(other)} symbols but the model {len(vocab)}"):
                call()


def test_sampling_flags_with_the_greedy_default_are_noted(trained):
    """--top-k, --top-p and --seed shape sampling; at --temperature 0 (the default) they did nothing, silently."""
    run_dir, _, _ = trained
    base = [sys.executable, "predict.py", "--checkpoint", str(run_dir), "--prefix", "ni", "-k", "5"]
    out = subprocess.run(base + ["--top-k", "3", "--seed", "1"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ("note: --top-k, --seed only matter when sampling, and --temperature "
                                                  "0 is greedy: give a temperature > 0 to sample\n")
    sampled = subprocess.run(base + ["--top-k", "3", "--seed", "1", "--temperature", "0.8"], cwd=ROOT,
                             capture_output=True, text=True)
    assert sampled.returncode == 0 and sampled.stderr == ""
