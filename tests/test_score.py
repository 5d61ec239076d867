"""`rnn-train score`: the loss of a text under a model, streamed: one stream with --exact, else
segments scored as one batch, each after a warm-up."""
import csv
import io
import json
import math
import re
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnn_train.cli import run as cli_run
from rnn_train.config import build_config
from rnn_train.data.dataset import prepare_data
from rnn_train.data.pinyin import hanzi_to_pinyin
from rnn_train.errors import UserError
from rnn_train.model.checkpoint import load_model
from rnn_train.kernels.build import extension
from rnn_train.prediction import kernel_stepper
from rnn_train.prediction import score as score_mod
from rnn_train.prediction.score import score_file, score_pieces
from rnn_train.prediction.textstream import model_text
from rnn_train.training.trainer import train
from tests.conftest import shared_corpus
from tests.helpers import ROOT, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run whose validation reads the split as one stream (batch 1), as score reads a file."""
    tmp = tmp_path_factory.mktemp("score")
    cfg = tiny_config(tmp, "data.batch_size=1", "train.max_steps=60", "train.eval_every=30", "data.val_fraction=0.005")
    train(cfg, tmp / "run", quiet=True, cache_dir=tmp / "cache")
    data = prepare_data(cfg.data, tmp / "cache")
    val_text = tmp / "val.txt"
    val_text.write_text(data.vocab.decode(data.val), encoding="utf-8")
    return tmp, cfg, val_text


def _score_cli(*args):
    return subprocess.run([sys.executable, "-m", "rnn_train", "score", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def test_the_validation_text_scores_the_validation_loss(run):
    tmp, _, val_text = run
    best = json.loads((tmp / "run" / "metrics.json").read_text())["best_val_loss"]
    model, vocab, cfg, _ = load_model(tmp / "run" / "best.pt")
    result = score_file(model, vocab, cfg.data, val_text, exact=True)
    assert result.loss == pytest.approx(best, rel=1e-6)
    assert result.scored == result.chars - 1 and result.unk == 0
    # shorter than a segment: the default scores it as one row from its start, to rounding the same
    assert score_file(model, vocab, cfg.data, val_text).loss == pytest.approx(best, rel=1e-6)
    for flags in (["--exact"], []):
        out = _score_cli("--checkpoint", tmp / "run", val_text, *flags)
        assert out.returncode == 0, out.stderr
        assert f"loss {best:.4f} | ppl {math.exp(best):.3f} | {best / math.log(2):.3f} bits/char" in out.stdout


def test_exact_is_the_modules_one_stream_bit_for_bit(run):
    tmp, _, val_text = run
    model, vocab, _, _ = load_model(tmp / "run" / "best.pt")
    text = val_text.read_text()[:3000]  # one module call (score.WINDOW characters)
    x = torch.as_tensor(vocab.encode(text).astype("int64"))[None]
    with torch.no_grad():
        logits, _ = model(x[:, :-1])
    nats = float(F.cross_entropy(logits[0], x[0, 1:], reduction="none").double().sum())
    assert score_pieces(model, vocab, [text], exact=True).nats == nats
    for pieces in ([], [""], ["z"]):  # nothing to predict: a loss of NaN and a line, not a ZeroDivisionError
        for exact in (True, False):
            nothing = score_pieces(model, vocab, pieces, exact=exact)
            assert nothing.scored == 0 and math.isnan(nothing.loss) and "loss nan" in nothing.line("t")


@pytest.fixture(params=["cpp", "torch"])
def segment_runner(request, monkeypatch):
    """Batched scoring on the C++ generation steps, or on the torch module where those are missing."""
    if request.param == "cpp" and extension() is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    if request.param == "torch":
        monkeypatch.setattr(kernel_stepper, "supports", lambda model: False)
    return request.param


def test_segments_whose_warm_up_reaches_the_start_score_as_the_one_stream(run, segment_runner):
    tmp, _, val_text = run
    model, vocab, _, _ = load_model(tmp / "run" / "best.pt")
    text = val_text.read_text()
    exact = score_pieces(model, vocab, [text], exact=True)
    rows = []
    got = score_pieces(model, vocab, [text[:777], text[777:]], lambda c, b: rows.extend(zip(c, b.tolist())),
                       segment=100, warm_up=10 ** 9, batch=3)  # every row reads the text from its start
    assert (got.chars, got.scored, got.unk) == (exact.chars, exact.scored, exact.unk)
    assert got.nats == pytest.approx(exact.nats, rel=1e-6)
    assert "".join(c for c, _ in rows) == text and math.isnan(rows[0][1])  # every character, in order
    assert sum(b for _, b in rows[1:]) == pytest.approx(got.nats / math.log(2), rel=1e-9)


def test_a_short_warm_up_changes_the_loss_a_little_and_only_at_segment_starts(run, segment_runner):
    tmp, _, val_text = run
    model, vocab, _, _ = load_model(tmp / "run" / "best.pt")
    text = val_text.read_text()

    def bits(**kw):
        rows = []
        score_pieces(model, vocab, [text], lambda c, b: rows.extend(b.tolist()), **kw)
        return np.array(rows[1:])

    exact, cut = bits(exact=True), bits(segment=200, warm_up=2, batch=4)  # (this tiny model forgets fast)
    differs = np.flatnonzero(np.abs(cut - exact) > 1e-4) + 1  # text positions
    assert len(differs) and (differs > 200).all() and ((differs - 1) % 200 < 40).all()  # segment starts but the first
    assert abs(cut.mean() - exact.mean()) < 0.01


def test_a_segments_surprisal_does_not_depend_on_the_batch_on_the_cpp_steps(run):
    if extension() is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    tmp, _, val_text = run
    model, vocab, _, _ = load_model(tmp / "run" / "best.pt")
    text = val_text.read_text()
    runs = []
    for batch in (1, 3, 8):
        rows = []
        score_pieces(model, vocab, [text], lambda c, b: rows.extend(b.tolist()), segment=150, warm_up=40, batch=batch)
        runs.append(np.array(rows))
    assert np.array_equal(runs[0], runs[1], equal_nan=True) and np.array_equal(runs[0], runs[2], equal_nan=True)


def test_streaming_in_small_pieces_and_windows_changes_nothing(run, monkeypatch):
    tmp, _, val_text = run
    model, vocab, cfg, _ = load_model(tmp / "run" / "best.pt")
    whole = score_pieces(model, vocab, [val_text.read_text()])
    monkeypatch.setattr(score_mod, "WINDOW", 7)
    rows = []
    pieces = score_pieces(model, vocab, model_text(val_text, cfg.data, chunk_bytes=13),
                          lambda chars, bits: rows.extend(zip(chars, bits.tolist())))
    assert (pieces.chars, pieces.scored) == (whole.chars, whole.scored)
    assert pieces.loss == pytest.approx(whole.loss, rel=1e-6)
    assert "".join(c for c, _ in rows) == val_text.read_text()  # every character, in order
    assert math.isnan(rows[0][1])  # the first is context only
    assert sum(b for _, b in rows[1:]) == pytest.approx(whole.nats / math.log(2), rel=1e-6)


def test_per_char_file_lists_every_character_with_its_surprisal(run, tmp_path):
    tmp, _, _ = run
    text = tmp_path / "t.txt"
    text.write_text("ni hao\nzhong guo\tQ\n", encoding="utf-8")
    out = _score_cli("--checkpoint", tmp / "run", text, "--per-char", tmp_path / "bits.tsv")
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "bits.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "file\tindex\tchar\tbits"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[2] for r in rows] == list("ni hao") + ["\\n"] + list("zhong guo") + ["\\t", "Q", "\\n"]
    assert rows[0][3] == "" and all(float(r[3]) >= 0 for r in rows[1:])
    # 'Q' and the tab are outside this model's vocab: scored as <unk>, and counted
    assert "19 chars (18 scored, 10.53% <unk>)" in out.stdout  # 2 of 19
    loss = float(out.stdout.split("| loss ")[1].split(" ")[0])
    assert sum(float(r[3]) for r in rows[1:]) / 18 == pytest.approx(loss / math.log(2), abs=1e-3)


def test_per_char_rows_stay_one_line_for_every_reader(run, tmp_path):
    """Characters that str.splitlines and some TSV tools break lines at are written as escapes."""
    tmp, _, _ = run
    breaks = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    text = tmp_path / "t.txt"
    text.write_text(f"ni{breaks}hao\n\"ni\" hao\n", encoding="utf-8")
    out = _score_cli("--checkpoint", tmp / "run", text, "--per-char", tmp_path / "bits.tsv")
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "bits.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(f"ni{breaks}hao\n\"ni\" hao\n")
    with open(tmp_path / "bits.tsv", encoding="utf-8", newline="") as f:  # as docs/prediction.md says to read it
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == len(lines) and [r[2] for r in rows[-9:-7]] == ['"', "n"]
    assert [line.split("\t")[2] for line in lines[3:11]] == ["\\x0b", "\\x0c", "\\x1c", "\\x1d", "\\x1e", "\\x85",
                                                             "\\u2028", "\\u2029"]
    named = tmp_path / "a\tb\nc.txt"  # and the file name, in the first column
    named.write_text("ni hao\n", encoding="utf-8")
    assert _score_cli("--checkpoint", tmp / "run", named, "--per-char", tmp_path / "bits.tsv").returncode == 0
    rows = (tmp_path / "bits.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(rows) == 7 and {r.split("\t")[0] for r in rows} == {str(tmp_path / "a\\tb\\nc.txt")}


def test_per_char_names_a_file_whose_name_is_not_utf8_by_its_bytes(run, tmp_path):
    tmp, _, _ = run
    text = tmp_path / os.fsdecode(b"bad\xffname.txt")
    text.write_text("ni hao\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "rnn_train", "score", "--checkpoint", tmp / "run", text, "--per-char",
                          tmp_path / "bits.tsv"], cwd=ROOT, capture_output=True)  # its output names the file in bytes
    assert out.returncode == 0, out.stderr
    rows = (tmp_path / "bits.tsv").read_bytes().splitlines()[1:]
    assert len(rows) == 7 and all(r.split(b"\t")[0] == os.fsencode(text) for r in rows)


def test_crlf_text_scores_as_its_lf_text_wherever_the_chunks_are_cut(run, tmp_path):
    tmp, _, _ = run
    model, vocab, cfg, _ = load_model(tmp / "run" / "best.pt")
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes(b"ni hao\nzhong guo\nshi jie\n")
    crlf.write_bytes(b"\xef\xbb\xbfni hao\r\nzhong guo\r\nshi jie\r\n")  # with a BOM
    expected = score_file(model, vocab, cfg.data, lf)
    for size in (1, 2, 3, 7, 8):  # cuts between \r and \n among them
        got = score_pieces(model, vocab, model_text(crlf, cfg.data, chunk_bytes=size))
        assert (got.chars, got.nats) == (expected.chars, pytest.approx(expected.nats, rel=1e-6))


def test_a_chinese_file_scores_as_its_pinyin_for_a_pinyin_model(run, tmp_path):
    tmp, _, _ = run
    source = shared_corpus("hongloumeng/hongloumeng.zh.txt")
    model, vocab, cfg, _ = load_model(tmp / "run" / "best.pt")
    zh = tmp_path / "zh.txt"
    zh.write_text(source.read_text(encoding="utf-8")[:4000], encoding="utf-8")
    converted = tmp_path / "py.txt"
    converted.write_text(hanzi_to_pinyin(zh.read_text(encoding="utf-8")), encoding="utf-8")
    a = score_pieces(model, vocab, model_text(zh, cfg.data, chunk_bytes=300))  # conversion in pieces
    b = score_file(model, vocab, cfg.data, converted)
    assert a.chars == b.chars > 3000 and a.loss == pytest.approx(b.loss, rel=1e-6)


def test_letters_only_models_score_the_letters_only_text(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The Time--Machine,\n by H. G. Wells!! 1895 ", encoding="utf-8")
    cfg = build_config({"data": {"kind": "text", "letters_only": True, "paths": [str(text)]}, "train": {"max_steps": 1}})
    assert "".join(model_text(text, cfg.data, chunk_bytes=3)) == "the time machine by h g wells"
    from rnn_train.data.vocab import Vocab
    from rnn_train.model.charrnn import CharRNN

    letters = Vocab.build("abcdefghijklmnopqrstuvwxyz ")
    symbols = tmp_path / "symbols.txt"  # not empty, but nothing the model reads: said so, not "empty"
    symbols.write_text("~~~@@@###%%%^^^\n", encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(f"{symbols} holds no letter, and the model reads letters and "
                                                  f"spaces only (data.letters_only): nothing to score")):
        score_file(CharRNN(len(letters), "gru", 8), letters, cfg.data, str(symbols))
    one = tmp_path / "one.txt"  # two characters in the file, one once the letters are kept
    one.write_text("!a", encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(f"{one} has a single character as the model reads it (letters only")):
        score_file(CharRNN(len(letters), "gru", 8), letters, cfg.data, str(one))


@pytest.mark.parametrize("content,needle", [
    (b"", "is empty: nothing to score"),
    (b"n", "single character"),
    (b"ni \xff hao", "byte 0xff at offset 3 is not valid utf-8 (set --encoding, e.g. cp1252 (Western), gbk, "
                   "big5, shift_jis, euc-kr or cp1251)"),
    ("ni hao".encode("utf-16"), "byte 0xff at offset 0 is not valid utf-8 (set --encoding, e.g. utf-16)"),  # its BOM
    (b"ni\0hao", "looks like a binary file, not text: NUL character at character 2 (text files only)"),  # not data.paths
    (None, "error: text file not found: "),  # no such file: not called a corpus, which score does not read
    ("dir", "bad.txt is a directory, not a text file"),
])
def test_bad_files_are_one_line_errors_and_leave_the_output_alone(run, tmp_path, content, needle):
    tmp, _, _ = run
    bad, tsv = tmp_path / "bad.txt", tmp_path / "bits.tsv"
    if content == "dir":
        bad.mkdir()
    elif content is not None:
        bad.write_bytes(content)
    earlier = "file\tindex\tchar\tbits\nan earlier table\n"
    tsv.write_text(earlier)
    out = _score_cli("--checkpoint", tmp / "run", bad, "--per-char", tsv)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr
    assert tsv.read_text() == earlier


def test_per_char_never_replaces_an_input_or_a_file_that_is_not_a_table(run, tmp_path):
    tmp, _, val_text = run
    text, notes = tmp_path / "text.txt", tmp_path / "notes.txt"
    text.write_text("the time machine")
    notes.write_text("my notes\n")
    checkpoint = (tmp / "run" / "best.pt").read_bytes()
    fifo, link = tmp_path / "pipe", tmp_path / "link.tsv"
    os.mkfifo(fifo)  # a rename over it would replace the pipe (a device node: the same)
    link.symlink_to(tmp_path / "bits-elsewhere.tsv")
    not_plain = "is a device, a pipe or a link, not a regular file"
    for target, needle in [(text, "is a file this command reads"), (tmp / "run" / "best.pt", "is a file this command reads"),
                           (notes, "exists and is not an earlier --per-char table"), ("", "an empty path"),
                           ("-", "'-' (standard output): give a file or directory name"), (fifo, not_plain), (link, not_plain)]:
        out = _score_cli("--checkpoint", tmp / "run", text, "--per-char", target)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
        assert needle in out.stderr, out.stderr
    assert text.read_text() == "the time machine" and notes.read_text() == "my notes\n"
    assert (tmp / "run" / "best.pt").read_bytes() == checkpoint
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink() and not link.exists()
    table = tmp_path / "bits.tsv"
    for _ in range(2):  # an earlier table is replaced
        assert _score_cli("--checkpoint", tmp / "run", text, "--per-char", table).returncode == 0
    assert table.read_text().startswith("file\tindex\tchar\tbits\n")


def test_several_files_and_a_total(run, tmp_path):
    tmp, _, _ = run
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("ni hao\n")
    b.write_text("zhong guo ren\n")
    out = _score_cli("--checkpoint", tmp / "run", a, b)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(a), str(b), "total"]
    assert "total: 21 chars (19 scored" in lines[2]  # 7 + 14 characters, the first of each is context
    model, vocab, cfg, _ = load_model(tmp / "run" / "best.pt")
    ra, rb = score_file(model, vocab, cfg.data, a), score_file(model, vocab, cfg.data, b)
    total = float(lines[2].split("| loss ")[1].split(" ")[0])
    assert total == pytest.approx((ra.nats + rb.nats) / 19, abs=1e-4)


def test_dash_is_standard_input_scored_as_the_same_text_in_a_file(run, tmp_path, monkeypatch, capsys):
    """`some-command | rnn-train score -`: standard input is scored as its text in a file would be (a
    pinyin model converts Chinese from it too), named "-" in the results and the --per-char rows."""
    tmp, _, _ = run
    a = tmp_path / "a.txt"
    a.write_text("ni hao\nzhong guo ren\n")
    from_file = _score_cli("--checkpoint", tmp / "run", a, "--per-char", tmp_path / "file.tsv")
    piped = subprocess.run([sys.executable, "-m", "rnn_train", "score", "--checkpoint", str(tmp / "run"), "-", str(a),
                            "--per-char", str(tmp_path / "piped.tsv")], cwd=ROOT, capture_output=True, text=True,
                           stdin=a.open("rb"))  # a real pipe or file as standard input
    assert from_file.returncode == piped.returncode == 0, piped.stderr
    file_line, (pipe_line, again, total) = from_file.stdout.strip(), piped.stdout.splitlines()
    assert pipe_line == file_line.replace(str(a), "-", 1) and again == file_line and total.startswith("total: ")
    rows = (tmp_path / "piped.tsv").read_text().splitlines()
    assert rows[1:22] == [row.replace(str(a), "-", 1) for row in (tmp_path / "file.tsv").read_text().splitlines()[1:]]

    spool = tmp_path / "tmp"  # where the copies of standard input go
    spool.mkdir()
    monkeypatch.setattr(score_mod.tempfile, "tempdir", str(spool))

    def score_stdin(data: bytes, *args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        status = cli_run(score_mod.main, ["--checkpoint", str(tmp / "run"), *args])
        return (status, *capsys.readouterr())

    status, out, _ = score_stdin("中国人\n".encode(), "-")  # read twice: whether it is Chinese, then its text
    assert status == 0 and out.startswith("-: 14 chars (13 scored")  # zhong guo ren\n
    for data, args, needle in [(b"", ["-"], "error: standard input is empty: nothing to score\n"),
                               (b"ni \xff", ["-"], "error: standard input: byte 0xff at offset 3"),
                               (b"ni hao", ["-", "-"], "error: - (standard input) is given 2 times: it can be read once\n")]:
        status, out, err = score_stdin(data, *args)
        assert status == 2 and out == "" and err.startswith(needle), err
    assert not list(spool.iterdir())  # the copies are removed


def test_standard_input_on_a_terminal_ends_at_one_ctrl_d_and_a_signal_leaves_no_copy(run, tmp_path):
    """As `cat`: the first end of input (Ctrl-D on a terminal) ends the text. SIGTERM or SIGHUP (the
    terminal closed) while the text is still coming removes the temporary copy, as Ctrl-C does."""
    import pty

    tmp, _, _ = run
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = {**os.environ, "TMPDIR": str(spool)}
    command = [sys.executable, "-m", "rnn_train", "score", "--checkpoint", str(tmp / "run"), "-"]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, cwd=ROOT, stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    os.close(follower)
    os.write(leader, b"ni hao ma\n")
    os.write(leader, b"\x04")  # one Ctrl-D, at the start of a line
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # (a score still waiting for a second Ctrl-D is not left behind)
        os.close(leader)
    assert proc.returncode == 0 and out.startswith("-: 10 chars"), err
    for sig in (signal.SIGTERM, signal.SIGHUP):
        proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        proc.stdin.write(b"zhong guo\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while not list(spool.iterdir()) and time.monotonic() < deadline:  # the copy is being written
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig and not list(spool.iterdir()), sig


def test_a_full_temporary_directory_is_named_not_standard_output(run, monkeypatch, capsys):
    tmp, _, _ = run

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ni hao " * 100)))
    monkeypatch.setattr(score_mod.os, "fdopen", lambda fd, mode: (os.close(fd), Full())[1])
    assert cli_run(score_mod.main, ["--checkpoint", str(tmp / "run"), "-"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot copy standard input to a temporary file in ") and "set TMPDIR" in err


def test_files_may_come_after_options_too(run, tmp_path):
    """`score --checkpoint M a.txt --exact b.txt` scores both (argparse stopped taking FILEs at the flag)."""
    tmp, _, _ = run
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    for path in (a, b):
        path.write_text("ni hao zhong guo\n")
    out = _score_cli("--checkpoint", tmp / "run" / "best.pt", a, "--exact", b)
    assert out.returncode == 0, out.stderr
    assert f"{a}: 17 chars" in out.stdout and f"{b}: 17 chars" in out.stdout and "total: 34 chars" in out.stdout


def test_an_empty_encoding_is_refused_not_taken_as_the_models(run, tmp_path):
    tmp, _, val_text = run
    out = _score_cli("--checkpoint", tmp / "run" / "best.pt", val_text, "--encoding", "")
    assert out.returncode == 2 and out.stderr.startswith("error: argument --encoding: empty: give a value")
