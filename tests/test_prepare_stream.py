"""The pieces the streamed preparation is made of agree with their whole-string definitions:
pinyin conversion in line-aligned pieces (also in worker processes), letters_only across chunks,
character counting and encoding of code point arrays."""
import random

import numpy as np
import pytest

from rnn_train.data import conversion, pinyin
from rnn_train.data.corpus import read_text
from rnn_train.data.dataset import letters_only
from rnn_train.data.stream import CodePointCounts, LettersOnly, code_points
from rnn_train.data.vocab import Vocab
from tests.conftest import shared_corpus

CHINESE = (
    "\n\n  《红楼梦》\n\n\n第一回　甄士隐梦幻识通灵\n——\n\n"
    '众人问"到底说的什么？"宝玉道：‘DNA２０２４好’\n'
    "  \n她说：“女儿，绿色的策略好！”他笑了……\n'一'二'三'\n\n\n\n好（坏）\n——\n\n"
)


def random_cuts(text: str, rng: random.Random, pieces: int) -> list[str]:
    """`text` cut at random line ends into pieces (the newline at each cut dropped, as line_aligned does)."""
    lines = text.split("\n")
    cuts = sorted(rng.sample(range(1, len(lines)), min(pieces, len(lines) - 1)))
    return ["\n".join(lines[a:b]) for a, b in zip([0] + cuts, cuts + [len(lines)])]


@pytest.mark.parametrize("tones", ["none", "numbers"])
def test_pieces_converted_separately_join_to_the_whole_conversion(tones):
    rng = random.Random(0)
    for text in (CHINESE, CHINESE * 3, CHINESE.strip(), "\n" + CHINESE + "中", "——\n\n——", ""):
        whole = pinyin.hanzi_to_pinyin(text, tones)
        for n in range(1, 12):
            joiner = pinyin.PieceJoiner()
            joined = "".join(joiner.add(pinyin.convert_piece(p, tones)) for p in random_cuts(text, rng, n))
            assert joined + joiner.finish() == whole, (text, n)


def test_line_aligned_pieces_keep_every_line_and_end_at_line_ends():
    rng = random.Random(1)
    text = "".join(rng.choice(["ab", "中", "\n", "\n\n", "xyz "]) for _ in range(3000))
    chunks = [text[i:i + 37] for i in range(0, len(text), 37)]
    pieces = list(conversion.line_aligned(chunks, size=100))
    assert "\n".join(pieces) == text
    assert len(pieces) > 10 and all(len(p) < 100 + 37 for p in pieces)


def test_worker_processes_give_the_bytes_of_one_call_in_order():
    text = CHINESE * 40
    for tones in ("none", "numbers"):
        parallel = "".join(conversion.converted_pieces(iter([text[:999], text[999:]]), tones, workers=2,
                                                       piece_chars=300))
        assert parallel == pinyin.hanzi_to_pinyin(text, tones)


def test_hongloumeng_in_worker_processes_is_byte_identical_to_one_call():
    # (the whole novel, toneless, goes through the workers in test_prepare.py)
    chinese = read_text(shared_corpus("hongloumeng/hongloumeng.zh.txt"))
    opening = chinese[: chinese.index("\n", 60_000)]
    parallel = "".join(conversion.converted_pieces(iter([opening]), "numbers", workers=2, piece_chars=8_000))
    assert parallel == pinyin.hanzi_to_pinyin(opening, "numbers")


@pytest.mark.parametrize("seed", range(6))
def test_letters_only_across_chunks_is_the_whole_string_rule(seed):
    rng = random.Random(seed)
    alphabet = ["a", "Z", "q", " ", "\n", "--", "7", "é", "中", "A", "...", "\t"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randrange(0, 40))))
    chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    keep = LettersOnly()
    streamed = b"".join(keep(code_points(chunk)).tobytes() for chunk in chunks)
    assert streamed.decode("ascii") == letters_only(text)


@pytest.mark.parametrize("text", ["", "a", "abc", "hello, world\n" * 99 + "!", "中文 ab 😀" * 7])
def test_chunked_counts_and_encoding_match_the_whole_string(text):
    counts = CodePointCounts()
    for i in range(0, len(text), 5):
        counts.add(code_points(text[i:i + 5]))
    whole = np.bincount(np.frombuffer(text.encode("utf-32-le"), np.uint32)) if text else np.zeros(0, np.int64)
    assert counts.total == len(text)
    assert np.array_equal(counts.counts[:len(whole)], whole) and not counts.counts[len(whole):].any()
    vocab = Vocab.from_counts(counts.counts)
    assert vocab == Vocab.build(text)
    assert np.array_equal(np.concatenate([vocab.encode_code_points(code_points(text[i:i + 5]))
                                          for i in range(0, len(text), 5)] or [np.zeros(0, vocab.dtype)]),
                          vocab.encode(text))


def test_a_stop_while_worker_processes_convert_is_the_one_line_of_any_stop(tmp_path):
    """The conversion's workers inherited the command's handlers: each printed a KeyboardInterrupt
    traceback ("Process ForkPoolWorker-1:") before the `error: interrupted` line."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    corpus = shared_corpus("hongloumeng/hongloumeng.zh.txt")
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "train.py", "--config", "debug", f"data.paths={corpus}",
                             f"log.dir={tmp_path}", "--cache-dir", str(cache)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(cache.glob(".pinyin-*.tmp")):  # the conversion under way
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)  # the workers at work
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "error: interrupted\n", err
    assert not list(cache.glob(".pinyin-*.tmp")) and not list(cache.glob("pinyin-*"))  # nothing half written
