"""`rnn-train explore`: the page equals the Python model, works offline, and every view renders.

Three tiny models trained here (a 1-layer one-hot GRU, a 2-layer learned-embedding LSTM, a tanh
RNN, seconds each on Tiny Shakespeare) are explored on text none of them read (The Time Machine),
and the page, run in Debian's Chromium, is held to the Python side: next-character probabilities
within 1e-4 of `predict`'s, greedy continuations of 200 characters identical, bits per character
within 1e-3 of `rnn-train score --exact`, every state and gate value within 1e-4 of
rnn_train.prediction.trace (itself held to the torch module).
"""
import contextlib
import io
import json
import math
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnn_train.config import build_config
from rnn_train.explore import cli as explore_cli
from rnn_train.model import cells
from rnn_train.model.checkpoint import load_model
from rnn_train.prediction.textstream import letters_prefix, pinyin_prefix
from rnn_train.prediction.generate import next_char_distribution, predict
from rnn_train.prediction.score import score_file
from rnn_train.prediction.trace import trace
from rnn_train.runfiles import EXPLORE_MARK
from rnn_train.training.trainer import train
from tests.browser import open_page
from tests.conftest import shared_corpus
from tests.helpers import ROOT, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = {  # name -> (cell, layers, embedding)
    "gru": ("gru", 1, "one_hot"),
    "lstm": ("lstm", 2, "learned"),
    "rnn": ("rnn", 1, "one_hot"),
}


def _text_config(tmp, name, cell, layers, embedding, corpus):
    raw = {"data": {"kind": "text", "paths": [str(corpus)], "val_fraction": 0.01, "batch_size": 16, "num_steps": 32},
           "model": {"cell": cell, "hidden_size": 32, "num_layers": layers, "embedding": embedding, "embed_dim": 16},
           "train": {"optimizer": "adam", "lr": 0.01, "max_steps": 120, "eval_every": 120, "threads": 1},
           "log": {"dir": str(tmp), "name": name, "log_every": 40, "sample_length": 0}}
    return build_config(raw, [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three models, and a text they never read (1,500 characters of The Time Machine)."""
    tmp = tmp_path_factory.mktemp("explore")
    corpus = shared_corpus("tinyshakespeare/input.txt")
    for name, (cell, layers, embedding) in MODELS.items():
        train(_text_config(tmp, name, cell, layers, embedding, corpus), tmp / name, quiet=True, cache_dir=tmp / "cache")
    unseen = shared_corpus("timemachine/timemachine.txt").read_text(encoding="utf-8")[20_000:21_500]
    text = tmp / "unseen.txt"
    text.write_text(unseen, encoding="utf-8")
    return tmp, text


def explore(*args, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """`rnn-train explore ARGS`: in this process through the dispatcher (torch is imported once), or
    as its own process."""
    argv = list(map(str, args))
    if subprocess_:
        return subprocess.run([sys.executable, "-m", "rnn_train", "explore", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
    from rnn_train.commands import run_command

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = run_command("explore", argv)
        except SystemExit as e:  # argparse's errors (ours print one line first)
            status = e.code
    return subprocess.CompletedProcess(["rnn-train", "explore", *argv], status, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def pages(runs):
    tmp, text = runs
    out = {}
    for name in MODELS:  # the GRU's through the real command line, in its own process
        job = explore("--checkpoint", tmp / name, text, "--out", tmp / f"{name}.html", subprocess_=name == "gru")
        assert job.returncode == 0 and job.stderr == "", job.stderr
        assert f"wrote {tmp / name}.html" in job.stdout and "1,500 characters analysed" in job.stdout
        out[name] = tmp / f"{name}.html"
    return out


def opened(browser, path):
    o = open_page(browser, path.as_uri())
    o.page.wait_for_selector("body[data-ready='1']", state="attached", timeout=120_000)
    return o


def assert_offline_and_clean(o, path):
    assert o.requests == [path.as_uri()], o.requests  # nothing but the page itself was asked for
    assert o.errors == []


def test_the_trace_is_what_the_torch_module_computes():
    for cell, layers, embedding in MODELS.values():
        torch.manual_seed(0)
        from rnn_train.model.charrnn import CharRNN

        model = CharRNN(11, cell, 6, layers, embedding=embedding, embed_dim=4).eval()
        ids = np.random.default_rng(0).integers(0, 11, 40)
        tr = trace(model, ids)
        with torch.no_grad():
            logits, state = model(torch.as_tensor(ids)[None])
        assert np.abs(tr.logits - logits[0].double().numpy()).max() < 1e-5
        for part, final in zip(model.spec.state, model.spec.unpack(state)):
            for layer in range(layers):
                assert np.abs(tr.layers[layer][part][-1] - final[layer, 0].double().numpy()).max() < 1e-5, (cell, part)
        assert set(tr.layers[0]) == {*model.spec.state, *model.spec.gates}


@pytest.mark.parametrize("name", list(MODELS))
def test_the_page_predicts_and_scores_as_python_does(browser, runs, pages, name):
    tmp, text = runs
    model, vocab, cfg, _ = load_model(tmp / name)
    o = opened(browser, pages[name])
    page, unseen = o.page, text.read_text(encoding="utf-8")
    prefixes = ["", unseen[:1], unseen[100:140], unseen[500:520], "The Time Traveller "]
    for prefix in prefixes:
        mine = page.evaluate("p => rnnExplore.next(p)", prefix)
        theirs = next_char_distribution(model, vocab, prefix, top_n=5)
        assert [c for c, _ in mine] == [c for c, _ in theirs], prefix
        assert [p for _, p in mine] == pytest.approx([p for _, p in theirs], abs=1e-4), prefix
        greedy = page.evaluate("p => rnnExplore.greedy(p, 200)", prefix)
        assert greedy == predict(model, vocab, prefix, k=200).continuation, prefix
    bpc = score_file(model, vocab, cfg.data, str(text), exact=True).loss / math.log(2)  # the page: one stream
    assert page.evaluate("t => rnnExplore.bitsPerChar(t)", unseen) == pytest.approx(bpc, abs=1e-3)
    assert page.evaluate("rnnExplore.analysed().bitsPerChar") == pytest.approx(bpc, abs=1e-3)
    shown = page.inner_text("#surprisal-summary")
    assert " bits per character" in shown and float(shown.split()[0]) == pytest.approx(bpc, abs=1e-3)
    # every state part and gate, every layer, against the Python reference
    tr = trace(model, vocab.encode(unseen).astype(np.int64))
    H = model.rnn.hidden_size
    for layer, values in enumerate(tr.layers):
        for part, expected in values.items():
            for unit in (0, H // 2, H - 1):
                got = np.array(page.evaluate("a => rnnExplore.activations(...a)", [layer, part, unit]))
                assert np.abs(got - expected[:, unit]).max() < 1e-4, (layer, part, unit)
    bits = np.array(page.evaluate("rnnExplore.bits()"), dtype=float)
    assert math.isnan(bits[0]) and np.abs(bits[1:] - tr.bits(vocab.encode(unseen).astype(np.int64))).max() < 1e-3
    assert_offline_and_clean(o, pages[name])
    o.page.close()


def test_each_view_renders_and_its_numbers_hold(browser, runs, pages, tmp_path):
    tmp, text = runs
    model, vocab, _, _ = load_model(tmp / "lstm")
    o = opened(browser, pages["lstm"])
    page, T, H = o.page, 1500, model.rnn.hidden_size
    for view in ("typeahead", "surprisal", "units", "saturation", "match", "gradflow"):
        page.click(f"#tabs button[data-view={view}]")
        assert page.is_visible(f"#view-{view}"), view
        page.screenshot(path=str(tmp_path / f"{view}.png"))
        assert (tmp_path / f"{view}.png").stat().st_size > 10_000  # something drawn (looked at by hand too)
    # sampling: the page's own seeded generator; a nucleus of one character is greedy
    sample = "(a) => rnnExplore.sample(...a)"
    one = page.evaluate(sample, ["The ", 120, {"temperature": 0.8, "topP": 0.9, "seed": 3}])
    assert len(one) == 120 and set(one) <= set(vocab.itos[1:])
    assert one == page.evaluate(sample, ["The ", 120, {"temperature": 0.8, "topP": 0.9, "seed": 3}])
    assert one != page.evaluate(sample, ["The ", 120, {"temperature": 0.8, "topP": 0.9, "seed": 4}])
    assert page.evaluate(sample, ["The ", 60, {"topP": 0.01, "seed": 5}]) == page.evaluate("rnnExplore.greedy('The ', 60)")
    page.click("#tabs button[data-view=typeahead]")
    page.click("input[name=mode][value=sample]")
    page.fill("#prefix", "The Time Tra")
    assert page.locator("#bars .bar").count() == 10
    assert len(page.inner_text("#continuation")) > 200
    assert page.locator("#surprisal-text span").count() == T
    assert page.locator("#units-ranked tr.pick").count() == 40
    assert page.locator("#saturation-plots svg").count() == 2  # one per layer
    assert page.locator("#saturation-plots svg[data-layer='0'] circle").count() == 3 * H + 3  # i, f, o + legend
    assert page.locator("#gradflow-plot polyline").count() == 1

    # units: the ranked list is Pearson's r against the page's signals, recomputed here from Python's trace
    tr = trace(model, vocab.encode(text.read_text(encoding="utf-8")).astype(np.int64))
    signals = page.evaluate("rnnExplore.signals()")
    for row in page.evaluate("rnnExplore.units()")[:5]:
        x, s = tr.layers[row["layer"]][row["value"]][:, row["unit"]], np.array(signals[row["signal"]])
        assert np.corrcoef(x, s)[0, 1] == pytest.approx(row["r"], abs=1e-3)
    # saturation: the fractions of steps below 0.1 / above 0.9 (a value at a threshold may round across it)
    sat = page.evaluate("rnnExplore.saturation(1)")
    for gate in ("i", "f", "o"):
        v = tr.layers[1][gate]
        assert np.abs(np.array(sat[gate]["left"]) - (v < 0.1).mean(axis=0)).max() <= 2 / T
        assert np.abs(np.array(sat[gate]["right"]) - (v > 0.9).mean(axis=0)).max() <= 2 / T
    # select and match: the units above the threshold over a span, and where they all are on again
    page.click("#tabs button[data-view=match]")
    page.evaluate("rnnExplore.select(200, 204)")
    res = page.evaluate("rnnExplore.match(200, 204, 0.3, 0, 'h')")
    h = tr.layers[0]["h"]
    units = [u for u in range(H) if (h[200:205, u] > 0.3).all()]
    assert res["units"] == units
    if units:
        assert 200 in res["positions"] and res["positions"] == [t for t in range(T) if (h[t, units] > 0.3).all()]
        assert f"{len(units)} units of layer 1 h stay above 0.3" in page.inner_text("#match-summary")
    assert page.locator("#match-text span.sel").count() == 5
    # the interface refuses an index past the end by name (it read other units' numbers), and a bad name
    from playwright.sync_api import Error as PageError

    for call, message in [(f"rnnExplore.activations(0, 'h', {H})", f"unit must be an integer in [0, {H - 1}], got {H}"),
                          ("rnnExplore.activations(0, 'q', 0)", "value must be one of "),
                          ("rnnExplore.saturation(7)", "layer must be an integer in [0, 1], got 7"),
                          ("rnnExplore.match(10, 5, 0.3, 0, 'h')", "end must be >= start, got start 10 and end 5"),
                          (f"rnnExplore.match(0, {T}, 0.3)", f"end must be an integer in [0, {T - 1}]"),
                          ("rnnExplore.guesses(-1)", "t must be an integer"),
                          ("rnnExplore.select(3, 1)", "end must be >= start")]:
        with pytest.raises(PageError, match=re.escape(message)):
            page.evaluate(call)
    assert page.locator("#match-text span.sel").count() == 5  # the refused select left the selection alone
    assert_offline_and_clean(o, pages["lstm"])
    page.close()


def test_typing_steps_only_the_new_characters_with_the_numbers_of_a_whole_run(browser, pages):
    """The type-ahead keeps the state after its last prefix and steps on from it where the new prefix
    extends it: the probabilities are those of running the whole prefix from a zero state."""
    o = opened(browser, pages["gru"])
    page, text = o.page, "The Time Traveller (for so it will be convenient to speak of him)"
    typed = page.evaluate("t => Array.from(t, (_, i) => rnnExplore.next(t.slice(0, i + 1)))", text)  # one key at a time
    fresh = page.evaluate("t => Array.from(t, (_, i) => (rnnExplore.next('zzz'), rnnExplore.next(t.slice(0, i + 1))))",
                          text)  # each from a zero state (an unrelated prefix in between)
    assert typed == fresh
    assert page.evaluate("t => rnnExplore.greedy(t, 80)", text) == page.evaluate(
        "t => (rnnExplore.next('zzz'), rnnExplore.greedy(t, 80))", text)
    page.fill("#prefix", "\ufeffThe Ti")  # pasted with a byte-order mark: dropped, as predict drops it
    assert "not in the vocab" not in page.inner_text("#prefix-note")
    assert o.errors == []


def test_the_typeahead_fields_raise_a_zero_to_their_least_value(browser, pages):
    """Temperature 0 and top-p 0 are below the fields' least values (0.05, 0.01): they are raised to
    them, as 0.01 is, not read as unset (which had meant 1, fully random)."""
    o = opened(browser, pages["lstm"])
    page = o.page
    page.click("input[name=mode][value=sample]")
    page.fill("#k", "60")
    page.fill("#prefix", "the ")

    def continuation(**fields):
        for name, value in fields.items():
            page.fill(f"#{name.replace('_', '-')}", value)
        return page.inner_text("#continuation")

    assert continuation(temperature="0") == continuation(temperature="0.05") != continuation(temperature="1")
    assert continuation(top_p="0") == continuation(top_p="0.01") != continuation(top_p="1")
    assert len(continuation(k="1e2")) == len("the ") + 100
    assert o.errors == []


def test_the_signals_units_are_correlated_with(browser, tmp_path, runs):
    tmp, _ = runs
    text = tmp_path / "signals.txt"
    text.write_text('a "bc(d)" e\n7 f', encoding="utf-8")
    job = explore("--checkpoint", tmp / "gru", text, "--out", tmp_path / "s.html")
    assert job.returncode == 0, job.stderr
    o = opened(browser, tmp_path / "s.html")
    s = o.page.evaluate("rnnExplore.signals()")
    #                                   a  ␣  "  b  c  (  d  )  "  ␣  e  ↵  7  ␣  f
    assert s["inside quotes"] == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert s["bracket depth"] == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert s["position in line"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2]
    assert s["start of a word or syllable"] == [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert s["vowel"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert s["digit"] == [0] * 12 + [1, 0, 0]
    assert s["after a newline"] == [0] * 12 + [1, 0, 0]
    o.page.close()


# ------------------------------------------------------------------------------------ pinyin input

CHINESE_CASES = [
    "中国", "中国 ", "你好，世界！", "我们去 NASA 的 DNA 实验室", "ＡＢＣ１２３全角", "他说：“好的……”", 'say "你好" ok',
    "'单引号' 和 '另一个'", "《红楼梦》第一回", "行长走进银行", "重庆重新开始", "长大了，长江很长", "〇", "𠀀𠀁",
    "第一行\n\n\n第二行\n", "中国\n", "\n中国", "\n\n中国，\n\n", "中a", "a中", "了", "一会儿", "不要——不要", "他们(笑)说", "乐观的音乐", "ｚｈｏｎｇ中",
    # no Han, but marks only Chinese text writes: converted as a Chinese line too; plain ASCII is not
    "，", "ni hao，", "“hello”", "ＡＢＣ", "……", "ni hao, shi jie", "a-b",
]


@pytest.fixture(scope="module")
def pinyin_pages(tmp_path_factory):
    """Tiny pinyin models (toneless and tone numbers) and their pages."""
    tmp = tmp_path_factory.mktemp("explore_pinyin")
    out = {}
    for tones in ("none", "numbers"):
        cfg = tiny_config(tmp, f"data.tones={tones}", "train.max_steps=20", "train.eval_every=20", name=tones)
        train(cfg, tmp / tones, quiet=True, cache_dir=tmp / "cache")
        job = explore("--checkpoint", tmp / tones, "--out", tmp / f"{tones}.html", "--cache-dir", tmp / "cache",
                      "--max-chars", 800)
        assert job.returncode == 0, job.stderr
        out[tones] = (cfg, tmp / f"{tones}.html")
    return out


@pytest.mark.parametrize("tones", ["none", "numbers"])
def test_chinese_typed_in_the_page_converts_as_predict_does(browser, pinyin_pages, tones):
    cfg, path = pinyin_pages[tones]
    novel = shared_corpus("hongloumeng/hongloumeng.zh.txt").read_text(encoding="utf-8")
    lines = [line for line in novel.splitlines() if line.strip()][100:400]
    cases = CHINESE_CASES + lines + ["\n".join(lines[:40])]
    o = opened(browser, path)
    got = o.page.evaluate("cases => cases.map(c => rnnExplore.toPinyin(c))", cases)
    for case, mine in zip(cases, got):
        assert mine == pinyin_prefix(case, cfg), case
    assert got[0] == ("zhong guo " if tones == "none" else "zhong1 guo2 ")  # a Han character last: a space follows
    o.page.fill("#prefix", "红楼")
    assert "converted to pinyin as predict does" in o.page.inner_text("#prefix-note")
    assert_offline_and_clean(o, path)
    o.page.close()


def test_a_letters_only_models_page_reads_a_typed_prefix_as_predict_does(browser, tmp_path):
    corpus = shared_corpus("timemachine/timemachine.txt")
    cfg = build_config({"data": {"kind": "text", "paths": [str(corpus)], "letters_only": True, "val_fraction": 0.01,
                                 "batch_size": 8, "num_steps": 16},
                        "model": {"cell": "gru", "hidden_size": 16},
                        "train": {"max_steps": 10, "eval_every": 10, "threads": 1},
                        "log": {"dir": str(tmp_path), "name": "letters", "sample_length": 0}}, [])
    train(cfg, tmp_path / "letters", quiet=True, cache_dir=tmp_path / "cache")
    job = explore("--checkpoint", tmp_path / "letters", "--out", tmp_path / "letters.html", "--cache-dir",
                  tmp_path / "cache", "--max-chars", 300)
    assert job.returncode == 0, job.stderr
    cases = ["The Time, ", "HIS grey\neyes!", "  twinkled", "and", "Déjà vu 😀 naïve", "", "...", "a-b_c1d"]
    o = opened(browser, tmp_path / "letters.html")
    assert o.page.evaluate("rnnExplore.info.lettersOnly") is True
    got = o.page.evaluate("cases => cases.map(c => rnnExplore.toLetters(c))", cases)
    assert got == [letters_prefix(c, cfg) for c in cases]
    o.page.fill("#prefix", "The Time, ")
    assert 'reduced to lowercase letters and spaces as predict does: "the time "' in o.page.inner_text("#prefix-note")
    assert "not in the vocab" not in o.page.inner_text("#prefix-note")
    ranked = o.page.evaluate("rnnExplore.units()")  # a text without lines: no unit tracks "position in line"
    assert ranked and all(row["signal"] != "position in line" for row in ranked)
    o.page.close()


def test_the_default_text_of_a_corpus_that_changed_since_training_is_noted(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, a text about things\n" * 300)
    cfg = tiny_config(tmp_path, "data.kind=text", f"data.paths={corpus}", "data.val_fraction=0.1",
                      "train.max_steps=10", "train.eval_every=10")
    train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "cache")
    job = explore("--checkpoint", tmp_path / "r", "--out", tmp_path / "a.html", "--cache-dir", tmp_path / "cache")
    assert job.returncode == 0 and "changed since" not in job.stderr, job.stderr
    corpus.write_text("other words, quite a different text\n" * 300)
    job = explore("--checkpoint", tmp_path / "r", "--out", tmp_path / "b.html", "--cache-dir", tmp_path / "cache")
    assert job.returncode == 0
    assert job.stderr == (f"note: the corpus ({corpus}) changed since {tmp_path / 'r' / 'best.pt'} was trained: its "
                          f"validation split is not the text the run saw\n")
    page_data = (tmp_path / "b.html").read_text(encoding="utf-8")  # and the page says it too (its #notes)
    assert json.dumps(job.stderr.removeprefix("note: ").strip()).replace("<", "\\u003c")[1:-1] in page_data
    assert "changed since" not in (tmp_path / "a.html").read_text(encoding="utf-8")


def test_the_default_text_is_the_start_of_the_validation_split(browser, pinyin_pages):
    cfg, path = pinyin_pages["none"]
    html = path.read_text(encoding="utf-8")
    assert "validation text of the built-in pinyin corpus" in html
    o = opened(browser, path)
    assert o.page.evaluate("rnnExplore.analysed().chars") == 800
    assert "analysed the first 800 of" in o.page.inner_text("#notes")  # the page says it cut
    o.page.close()


# ------------------------------------------------------------------------------------ the command


def test_a_page_is_one_self_contained_file(pages):
    html = pages["gru"].read_text(encoding="utf-8")
    assert "default-src 'none'" in html  # the page may request nothing, by its own policy
    for outside in ("src=\"http", "href=\"http", "<link", "@import", "url("):
        assert outside not in html


def test_a_page_says_who_wrote_it_where_a_run_directory_that_is_replaced_looks(pages):
    """RunDir.clear removes a page beside replaced checkpoints only if explore wrote it: by this mark,
    in the page's first 8 kB."""
    assert EXPLORE_MARK in pages["gru"].read_bytes()[:8192]


def test_characters_the_vocab_lacks_are_counted_and_shown(browser, runs, tmp_path):
    tmp, _ = runs
    text = tmp_path / "accents.txt"
    text.write_text("Déjà vu, naïve café ÉÉ.\u2028\U000E0067ΑΒΓΔΕΖΗΘΙΚΛ\n", encoding="utf-8")
    job = explore("--checkpoint", tmp / "rnn", text, "--out", tmp_path / "a.html")
    assert job.returncode == 0 and "19 of them not in the vocab (read as <unk>)" in job.stdout, job.stdout
    o = opened(browser, tmp_path / "a.html")
    # the 12 most frequent named (a line separator, a tag character past U+FFFF as what they are, not
    # blanks: the latter as its UTF-16 halves, since \u reads four digits), and the rest counted
    assert ('19 characters of the text are not in the model\'s vocab and are read as <unk>: "é" ×2, "É" ×2, "à" ×1, '
            '"ï" ×1, "\\u2028" ×1, "\\udb40\\udc67" ×1, "Α" ×1, "Β" ×1, "Γ" ×1, "Δ" ×1, "Ε" ×1, "Ζ" ×1, '
            'and 5 others') in o.page.inner_text("#notes")
    o.page.fill("#prefix", "café")
    assert 'not in the vocab, read as <unk>: "é"' in o.page.inner_text("#prefix-note")
    assert o.errors == []
    o.page.close()


def test_max_chars_cuts_and_the_page_says_so(runs, tmp_path):
    tmp, text = runs
    job = explore("--checkpoint", tmp / "gru", text, text, "--out", tmp_path / "c.html", "--max-chars", 2000)
    assert job.returncode == 0 and "2,000 characters analysed (cut from 3,000 by --max-chars)" in job.stdout


def test_gradient_flow_windows_stay_inside_one_text_and_the_page_names_it(browser, runs, tmp_path):
    """Every view reads each text from a zero state; the gradient flow's windows too: they are cut
    from the longest text alone, never across the end of one file into the next."""
    tmp, text = runs
    short = tmp_path / "short.txt"
    short.write_text("the time machine\n" * 3)
    page_path = tmp_path / "two.html"
    assert explore("--checkpoint", tmp / "gru", short, text, "--out", page_path).returncode == 0
    o = opened(browser, page_path)
    o.page.click("#tabs button[data-view=gradflow]")
    assert f"characters of {text} (zero state" in o.page.inner_text("#gradflow-text")
    assert o.errors == []


@pytest.mark.parametrize("problem", ["missing", "not_a_checkpoint", "empty_text", "missing_text", "max_chars"])
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, problem):
    tmp, text = runs
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "page.html"
    args = {"missing": ["--checkpoint", tmp_path / "nowhere.pt", text],
            "not_a_checkpoint": ["--checkpoint", bogus, text],
            "empty_text": ["--checkpoint", tmp / "gru", empty],
            "missing_text": ["--checkpoint", tmp / "gru", tmp_path / "absent.txt"],
            "max_chars": ["--checkpoint", tmp / "gru", text, "--max-chars", 0]}[problem]
    job = explore(*args, "--out", out)
    assert job.returncode == 2 and job.stdout == ""
    assert job.stderr.startswith("error: ") and job.stderr.count("\n") == 1, job.stderr
    assert {"missing": "does not exist", "not_a_checkpoint": "is not an rnn-train checkpoint",
            "empty_text": "is empty: nothing to explore", "missing_text": "absent.txt",
            "max_chars": "--max-chars must be >= 2"}[problem] in job.stderr
    assert not out.exists()


def test_the_page_replaces_only_an_earlier_page(runs, tmp_path):
    tmp, text = runs
    mine = tmp_path / "index.html"
    mine.write_text("<!doctype html><title>my own page</title>\n")
    copy = tmp_path / "text.txt"
    copy.write_text(text.read_text())
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    for out, needle in [(copy, "is a file this command reads"), (tmp / "gru" / "best.pt", "is a file this command reads"),
                        (mine, "exists and is not a page explore wrote"), ("", "an empty path"),
                        (fifo, "is a device, a pipe or a link, not a regular file")]:
        job = explore("--checkpoint", tmp / "gru", copy, "--out", out)
        assert job.returncode == 2 and job.stderr.startswith("error: ") and job.stderr.count("\n") == 1
        assert needle in job.stderr, job.stderr
    assert copy.read_text() == text.read_text() and mine.read_text() == "<!doctype html><title>my own page</title>\n"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    page = tmp_path / "page.html"
    for _ in range(2):
        assert explore("--checkpoint", tmp / "gru", copy, "--out", page, "--max-chars", 200).returncode == 0


def test_a_cell_without_a_javascript_step_says_so_in_one_line(tmp_path, capsys):
    spec = cells.register(cells.CellSpec("gru_without_js_test", "a GRU with no hooks (a test's own cell)",
                                         blocks=("r", "z", "n"), step=cells.gru_step))
    try:
        cfg = build_config(tiny_config(tmp_path).to_dict(), [f"model.cell={spec.name}", "train.max_steps=4",
                                                              "train.eval_every=4"])
        train(cfg, tmp_path / "run", quiet=True, cache_dir=tmp_path / "cache")
        text = tmp_path / "t.txt"
        text.write_text("zhong guo\n")
        from rnn_train.commands import run_command

        assert run_command("explore", ["--checkpoint", str(tmp_path / "run"), str(text)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "has no JavaScript step (CellSpec hook \"js\")" in err
        assert not (tmp_path / "run" / "explore.html").exists()
    finally:
        cells.unregister(spec.name)


def test_every_built_in_cell_has_a_javascript_step_with_its_specs_names():
    for name in cells.names():
        source = cells.get(name).hook("js")
        assert source is not None, name
        assert f"// {name}:" in source  # the file says which cell it is
    assert explore_cli.MAX_CHARS == 20_000


def test_without_a_text_file_a_corpus_that_is_gone_is_one_line(runs, tmp_path):
    tmp, text = runs
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text.read_text(encoding="utf-8") * 4, encoding="utf-8")
    cfg = build_config(_text_config(tmp_path, "gone", "gru", 1, "one_hot", corpus).to_dict(),
                       ["train.max_steps=4", "train.eval_every=4", "data.batch_size=4"])
    train(cfg, tmp_path / "gone", quiet=True, cache_dir=tmp_path / "cache")
    corpus.unlink()
    job = explore("--checkpoint", tmp_path / "gone", "--cache-dir", tmp_path / "nocache")
    assert job.returncode == 2 and job.stderr.count("\n") == 1, job.stderr
    assert "no TEXT_FILE given, and the validation text of" in job.stderr and "give a text file" in job.stderr
    assert not (tmp_path / "gone" / "explore.html").exists()
