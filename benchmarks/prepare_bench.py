"""Speed of the prepare step (rnn_train.data.prepare) against the in-memory path it replaced.

    python benchmarks/prepare_bench.py                       # 96 MB of Tiny Shakespeare, made in /tmp
    python benchmarks/prepare_bench.py --corpus big.txt --repeats 7
    python benchmarks/prepare_bench.py --pinyin              # also: Hongloumeng -> pinyin, 1 vs N processes

Prints one line per figure (medians of `--repeats` runs, measured alternately in this process, so
that a busy machine slows both sides alike):
    prepare     MB/s of the source, from nothing to a usable cache entry: hashing, the counting
                (vocab) pass, the encoding pass, fsync and metadata
    in-memory   the old path: read the whole file, decode, normalise, Vocab.build, vocab.encode
    reuse       seconds to open the prepared entry again (the start-up cost of a run)
    pinyin      seconds to convert Hongloumeng (882 k characters): one hanzi_to_pinyin call
                against line-aligned pieces in worker processes (byte-identical output)
The source file is read from the page cache (it is read once before timing).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rnn_train.config import DataConfig  # noqa: E402
from rnn_train.data.prepare import prepare_corpus  # noqa: E402
from rnn_train.data.vocab import Vocab  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare" / "input.txt"
HONGLOUMENG = ROOT.parent / "shared" / "corpora" / "hongloumeng" / "hongloumeng.zh.txt"


def make_corpus(path: Path, megabytes: float, source: Path = SHAKESPEARE) -> Path:
    """`path` as copies of `source` up to at least `megabytes` MB (kept if already that big)."""
    target = int(megabytes * 1e6)
    if path.exists() and path.stat().st_size >= target:
        return path
    data = source.read_bytes()
    with open(path, "wb") as f:
        for _ in range(-(-target // len(data))):
            f.write(data)
    return path


def in_memory(path: Path) -> int:
    """The replaced path, for the ratio: the whole corpus as one string, counted and encoded."""
    text = path.read_bytes().decode("utf-8")
    text = text[1:] if text.startswith("\ufeff") else text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return len(Vocab.build(text).encode(text))


def time_prepare(cfg: DataConfig, cache: Path) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    prepared = prepare_corpus(cfg, cache, progress=False)
    seconds = time.perf_counter() - start
    assert not prepared.reused
    return seconds


def time_reuse(cfg: DataConfig, cache: Path) -> float:
    start = time.perf_counter()
    prepared = prepare_corpus(cfg, cache, progress=False)
    seconds = time.perf_counter() - start
    assert prepared.reused
    return seconds


def pinyin_figures(repeats: int) -> None:
    from rnn_train.data import conversion
    from rnn_train.data.corpus import read_text
    from rnn_train.data.pinyin import hanzi_to_pinyin
    from rnn_train.runtime import available_cores

    text = read_text(HONGLOUMENG)
    workers = available_cores()
    one, many = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        whole = hanzi_to_pinyin(text)
        one.append(time.perf_counter() - start)
        start = time.perf_counter()
        pieces = "".join(conversion.converted_pieces(iter([text]), "none", workers))
        many.append(time.perf_counter() - start)
        assert pieces == whole
    a, b = statistics.median(one), statistics.median(many)
    print(f"pinyin      Hongloumeng {len(text):,} chars: one call {a:.2f} s, {workers} worker processes {b:.2f} s "
          f"(x{a / b:.2f}), byte-identical")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "big96.txt",
                    help="plain-text corpus (made from Tiny Shakespeare copies if missing)")
    ap.add_argument("--megabytes", type=float, default=95.9, help="size of the corpus made when missing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pinyin", action="store_true", help="also time the Hongloumeng pinyin conversion")
    args = ap.parse_args()
    corpus = make_corpus(args.corpus, args.megabytes)
    size = corpus.stat().st_size
    in_memory(corpus)  # warm the page cache
    cfg = DataConfig(paths=[str(corpus)], kind="text")
    cache = Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    try:
        prepare, old, reuse = [], [], []
        for _ in range(args.repeats):
            prepare.append(time_prepare(cfg, cache / "cache"))
            reuse.append(time_reuse(cfg, cache / "cache"))
            start = time.perf_counter()
            in_memory(corpus)
            old.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    p, o = statistics.median(prepare), statistics.median(old)
    print(f"corpus      {corpus} ({size / 1e6:,.1f} MB); {os.cpu_count()} CPUs; median of {args.repeats}")
    print(f"prepare     {size / p / 1e6:,.0f} MB/s ({p:.2f} s, vocab pass included)")
    print(f"in-memory   {size / o / 1e6:,.0f} MB/s ({o:.2f} s; prepare is x{o / p:.2f} as fast)")
    print(f"reuse       {statistics.median(reuse) * 1000:.0f} ms")
    if args.pinyin:
        pinyin_figures(max(1, args.repeats // 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
