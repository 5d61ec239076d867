"""The cache of prepared corpora: reuse at once, re-prepare on any change, never use a damaged or
half-written entry; bad input stays a one-line error."""
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnn_train.config import DataConfig
from rnn_train.data import prepare
from rnn_train.data.prepare import prepare_corpus
from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError
from tests.conftest import ROOT

HOUR_AGO = 3600


def corpus_file(tmp_path: Path, text: str = "hello world, hello cache\n" * 40, name: str = "a.txt") -> Path:
    """A corpus whose mtime is an hour old, so the stat shortcut may be written for it."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    old = path.stat().st_mtime_ns - HOUR_AGO * 10**9
    os.utime(path, ns=(old, old))
    return path


def count_builds(monkeypatch) -> list:
    calls = []
    real = prepare._build

    def recording(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare, "_build", recording)
    return calls


def count_hashes(monkeypatch) -> list:
    calls = []
    real = prepare.content_hash

    def recording(path, on_bytes=None):
        calls.append(Path(path).name)
        return real(path, on_bytes)

    monkeypatch.setattr(prepare, "content_hash", recording)
    return calls


def notes() -> tuple[list, callable]:
    said: list = []
    return said, said.append


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "prepared").iterdir() if p.name != "by-stat")


def test_same_inputs_reuse_the_entry_without_reading_the_corpus(tmp_path, monkeypatch):
    builds, hashes = count_builds(monkeypatch), count_hashes(monkeypatch)
    cfg = DataConfig(paths=[str(corpus_file(tmp_path))], kind="text")
    first = prepare_corpus(cfg, tmp_path / "cache", progress=False)
    second = prepare_corpus(cfg, tmp_path / "cache", progress=False)
    assert not first.reused and second.reused and first.directory == second.directory
    assert np.array_equal(first.tokens, second.tokens) and first.vocab == second.vocab
    assert builds == [1] and hashes == ["a.txt"]  # hashed once, found by the stat shortcut after
    meta = json.loads((first.directory / "meta.json").read_text())
    assert meta["sources"][0]["size"] == Path(cfg.paths[0]).stat().st_size
    assert meta["settings"]["kind"] == "text" and meta["n_tokens"] == len(first.tokens)


@pytest.mark.parametrize("entry", ["data", "data/**", "data/*/*"])
def test_a_cache_inside_a_corpus_directory_is_never_read_as_corpus(tmp_path, monkeypatch, entry):
    """The default cache, data/cache, sits in data/, where the corpora go: data.paths=data read the
    cache's token files and pinyin conversions as text, a larger corpus each run. The cache is
    tagged (CACHEDIR.TAG) and directories and globs leave it out."""
    from rnn_train.data.sources import CACHE_SIGNATURE, resolve_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "books").mkdir(parents=True)
    corpus_file(tmp_path / "data" / "books", name="book.txt")
    cfg = DataConfig(paths=[entry], kind="text")
    runs = [prepare_corpus(cfg, Path("data/cache"), progress=False) for _ in range(3)]
    assert len({len(r.tokens) for r in runs}) == 1 and len(runs[0].tokens) == 25 * 40
    assert (tmp_path / "data" / "cache" / "CACHEDIR.TAG").read_bytes().startswith(CACHE_SIGNATURE)
    assert [f.path.name for f in resolve_paths([entry])] == ["book.txt"]
    # a tag above the entry, where the user keeps corpora on purpose, leaves them in
    (tmp_path / "data" / "CACHEDIR.TAG").write_bytes(CACHE_SIGNATURE + b"\n")
    assert [f.path.name for f in resolve_paths(["data/books"])] == ["book.txt"]
    for cache in ("data/cache", "data/cache/**"):  # the cache itself named: its ids are no text
        with pytest.raises(UserError, match=r"data.paths: data/cache(/\*\*)? (is|starts in) a cache directory "
                                            r"\(data/cache/CACHEDIR.TAG marks it"):
            resolve_paths([cache])


def test_a_cache_given_where_the_corpus_lies_is_one_error_after_its_first_run(tmp_path, monkeypatch):
    """--cache-dir . with data.paths=*.txt: untagged, the cache's pinyin conversion (a .txt) was read
    as corpus, a larger one each run. Tagged, the entry is refused in one line naming the tag."""
    monkeypatch.chdir(tmp_path)
    corpus_file(tmp_path, "中国人民\n" * 200, name="zh.txt")
    cfg = DataConfig(paths=["*.txt"], kind="pinyin")
    prepare_corpus(cfg, Path("."), progress=False)  # the first: the cache did not exist when listed
    assert list(tmp_path.glob("pinyin-*.txt"))  # the conversion, a .txt, beside the corpus
    with pytest.raises(UserError) as e:
        prepare_corpus(cfg, Path("."), progress=False)
    assert str(e.value) == ("data.paths: *.txt starts in a cache directory (CACHEDIR.TAG marks it: --cache-dir writes "
                            "one): keep the corpus out of the cache (another --cache-dir), or delete that file if "
                            "the directory is no cache")


def test_a_cache_from_before_the_tag_is_left_out_from_the_first_run_on(tmp_path, monkeypatch):
    """The tag is written before data.paths is listed: a cache made before caches were tagged (or
    by another process of the same job) is not read once more on the way."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    corpus_file(tmp_path / "data", name="book.txt")
    cfg = DataConfig(paths=["data"], kind="text")
    first = prepare_corpus(cfg, Path("data/cache"), progress=False)
    (tmp_path / "data" / "cache" / "CACHEDIR.TAG").unlink()  # as an older version left it
    again = prepare_corpus(cfg, Path("data/cache"), progress=False)
    assert len(again.tokens) == len(first.tokens) and again.reused


def test_an_entry_has_the_umasks_permissions_not_owner_only(tmp_path):
    """mkdtemp makes 0700 directories: a cache shared by several users could not read another's entry."""
    umask = os.umask(0)
    os.umask(umask)
    entry = prepare_corpus(DataConfig(paths=[str(corpus_file(tmp_path))], kind="text"), tmp_path / "cache",
                           progress=False).directory
    assert entry.stat().st_mode & 0o777 == 0o777 & ~umask  # mkdtemp alone: 0o700
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in entry.iterdir())


def test_a_touched_but_identical_file_is_rehashed_and_reused(tmp_path, monkeypatch):
    path = corpus_file(tmp_path)
    cfg = DataConfig(paths=[str(path)], kind="text")
    first = prepare_corpus(cfg, tmp_path / "cache", progress=False)
    builds, hashes = count_builds(monkeypatch), count_hashes(monkeypatch)
    os.utime(path)  # now
    again = prepare_corpus(cfg, tmp_path / "cache", progress=False)
    assert again.reused and again.directory == first.directory and builds == [] and hashes == ["a.txt"]


@pytest.mark.parametrize("change", [
    {"min_freq": 2}, {"max_size": 5}, {"letters_only": True}, {"encoding": "latin-1"}, {"kind": "pinyin"},
])
def test_a_changed_setting_prepares_a_new_entry(tmp_path, change):
    cfg = DataConfig(paths=[str(corpus_file(tmp_path, "Hello world, hello Cache, ok\n" * 40))], kind="text")
    base = prepare_corpus(cfg, tmp_path / "cache", progress=False)
    changed = prepare_corpus(DataConfig(**{**vars(cfg), **change}), tmp_path / "cache", progress=False)
    assert not changed.reused and changed.directory != base.directory
    assert len(entries(tmp_path / "cache")) == 2


def test_changed_content_prepares_again_with_the_new_text(tmp_path):
    path = corpus_file(tmp_path, "aaaa bbb\n" * 20)
    cfg = DataConfig(paths=[str(path)], kind="text")
    before = prepare_corpus(cfg, tmp_path / "cache", progress=False)
    path.write_text("zzzz yyy\n" * 20)  # same size
    after = prepare_corpus(cfg, tmp_path / "cache", progress=False)
    assert not after.reused and after.vocab.itos[1] == "z" and before.vocab.itos[1] == "a"


def test_without_a_cache_the_ids_are_the_same_and_nothing_is_left(tmp_path):
    import tempfile

    cfg = DataConfig(paths=[str(corpus_file(tmp_path))], kind="text")
    cached = prepare_corpus(cfg, tmp_path / "cache", progress=False)
    before = set(Path(tempfile.gettempdir()).glob("rnn-train-prepare-*"))
    uncached = prepare_corpus(cfg, None, progress=False)
    assert uncached.directory is None and uncached.vocab == cached.vocab
    assert np.array_equal(uncached.tokens, cached.tokens)
    assert set(Path(tempfile.gettempdir()).glob("rnn-train-prepare-*")) == before


@pytest.mark.parametrize("damage", ["truncate", "swap", "vocab", "meta", "meta-no-unk", "meta-sources"])
def test_a_damaged_entry_is_noted_and_prepared_again(tmp_path, damage):
    cache = tmp_path / "cache"
    cfg = DataConfig(paths=[str(corpus_file(tmp_path, "abcabc abc\n" * 30))], kind="text")
    good = prepare_corpus(cfg, cache, progress=False)
    expected = np.array(good.tokens)
    entry = good.directory
    del good
    tokens = entry / "tokens.bin"
    if damage == "truncate":
        tokens.write_bytes(tokens.read_bytes()[:-7])
    elif damage == "swap":  # a token file of the same length from a different vocab
        other = DataConfig(paths=[str(corpus_file(tmp_path, "aabbcc cba\n" * 30, "b.txt"))], kind="text")
        tokens.write_bytes((prepare_corpus(other, cache, progress=False).directory / "tokens.bin").read_bytes())
    elif damage == "vocab":
        (entry / "vocab.json").write_text(json.dumps(["<unk>", "c", "b", "a", " ", "\n"]))
    elif damage == "meta":
        (entry / "meta.json").write_text("{not json")
    else:  # still JSON, but without what the dataset reads (it was a KeyError or a wrong digest later)
        meta = json.loads((entry / "meta.json").read_text())
        meta.pop("unk_fraction") if damage == "meta-no-unk" else meta.update(sources=5)
        (entry / "meta.json").write_text(json.dumps(meta))
    said, note = notes()
    again = prepare_corpus(cfg, cache, progress=False, note=note)
    assert not again.reused and np.array_equal(again.tokens, expected)
    assert len(said) == 1 and "damaged" in said[0] and str(entry) in said[0] and "\n" not in said[0]


def test_given_vocab_reuses_the_entry_of_the_same_vocab_else_encodes_with_it(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = DataConfig(paths=[str(corpus_file(tmp_path, "abcd abc ab a\n" * 30))], kind="text")
    own = prepare_corpus(cfg, cache, progress=False)
    builds = count_builds(monkeypatch)
    resumed = prepare_corpus(cfg, cache, Vocab(own.vocab.itos), progress=False)
    assert resumed.directory == own.directory and builds == []
    narrow = Vocab(["<unk>", "b", "a", " "])
    encoded = prepare_corpus(cfg, cache, narrow, progress=False)
    assert builds == [1] and encoded.directory != own.directory and encoded.vocab == narrow
    text = Path(cfg.paths[0]).read_text()
    assert np.array_equal(encoded.tokens, narrow.encode(text))
    assert encoded.meta["unk_fraction"] == pytest.approx(float(np.mean(narrow.encode(text) == 0)))
    assert prepare_corpus(cfg, cache, narrow, progress=False).directory == encoded.directory and builds == [1]


def test_an_interrupted_preparation_leaves_no_entry(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = DataConfig(paths=[str(corpus_file(tmp_path))], kind="text")

    def interrupted(*args, **kwargs):
        (args[3] / "tokens.bin").write_bytes(b"\x01\x02")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(cfg, cache, progress=False)
    assert entries(cache) == []  # neither an entry nor a temporary directory
    monkeypatch.undo()
    assert not prepare_corpus(cfg, cache, progress=False).reused


def test_a_full_disk_is_one_line_and_leaves_no_entry(tmp_path):
    """A real write failure: the file size limit (RLIMIT_FSIZE) fails writes like a full disk."""
    cache = tmp_path / "cache"
    path = corpus_file(tmp_path, "plenty of text to encode\n" * 20_000)  # 500 kB of ids

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    run = subprocess.run([sys.executable, "-m", "rnn_train", "prepare", "--config", "debug", "--cache-dir", str(cache),
                          f"data.paths={path}", "data.kind=text"], cwd=ROOT, capture_output=True, text=True,
                         preexec_fn=limit, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith(f"error: cannot write the prepared corpus in {cache / 'prepared'} (File too large)")
    assert run.stderr.count("\n") == 1
    assert entries(cache) == []
    assert not prepare_corpus(DataConfig(paths=[str(path)], kind="text"), cache, progress=False).reused


def test_a_file_changed_while_preparing_is_an_error(tmp_path, monkeypatch):
    path = corpus_file(tmp_path)
    real = prepare._encode

    def meddling(*args, **kwargs):
        result = real(*args, **kwargs)
        path.write_text("changed meanwhile\n" * 50)
        return result

    monkeypatch.setattr(prepare, "_encode", meddling)
    with pytest.raises(UserError, match=f"{path} changed while it was being prepared"):
        prepare_corpus(DataConfig(paths=[str(path)], kind="text"), tmp_path / "cache", progress=False)
    assert entries(tmp_path / "cache") == []


def test_prepare_command_prepares_then_reuses_and_reports(tmp_path, capsys):
    from rnn_train.commands import run_command

    path = corpus_file(tmp_path, "to be or not to be\n" * 500)
    args = ["--config", "debug", "--cache-dir", str(tmp_path / "cache"), f"data.paths={path}", "data.kind=text",
            "data.val_fraction=0.1"]
    assert run_command("prepare", args) == 0
    first = capsys.readouterr().out.splitlines()
    assert first[0].startswith("prepared in ") and "-> 9,500 tokens (uint8), vocab 9; train 8,550, val 950" in first[0]
    assert run_command("prepare", args) == 0
    second = capsys.readouterr().out.splitlines()
    assert second[0].startswith("already prepared: 1 file") and second[1] == first[1]
    assert Path(first[1].split(": ", 1)[1], "tokens.bin").stat().st_size == 9_500
    assert run_command("prepare", args[:4] + [f"data.paths={tmp_path / 'none*.txt'}", "data.kind=text"]) == 2
    assert capsys.readouterr().err == (f"error: data.paths: {tmp_path / 'none*.txt'} matches no file (hidden files "
                                       "and caches are skipped)\n")


def test_a_chinese_file_changed_between_its_two_reads_publishes_no_conversion(tmp_path, monkeypatch):
    from rnn_train.data import corpus

    path = tmp_path / "zh.txt"
    path.write_text("中国\n人民\n" * 20, encoding="utf-8")
    real = corpus.file_chunks
    reads = []

    def changing(*args, **kwargs):
        reads.append(1)
        if len(reads) == 2:  # the conversion's read sees other text than the survey hashed
            path.write_text("日本\n人民\n" * 20, encoding="utf-8")
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus, "file_chunks", changing)
    with pytest.raises(UserError, match=f"{path} changed while it was being prepared"):
        prepare_corpus(DataConfig(paths=[str(path)], kind="pinyin"), tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("pinyin-*")) and entries(tmp_path / "cache") == []


def test_damage_the_open_does_not_read_is_an_error_naming_the_entry_when_training_meets_it(tmp_path, capsys):
    """Opening an entry checks its size and its first and last MiB; a training run that meets a
    damaged id further in stops with one line naming the entry (it was a torch IndexError), and
    the entry prepared anew trains."""
    from rnn_train.commands import run_command

    letters = np.frombuffer(b"abcdefgh \n", dtype=np.uint8)
    path = corpus_file(tmp_path, np.random.default_rng(0).choice(letters, 4_000_000).tobytes().decode())
    keys = ["--config", "debug", "--cache-dir", str(tmp_path / "cache"), f"data.paths={path}", "data.kind=text",
            "data.partition=random"]
    assert run_command("prepare", keys) == 0
    entry = Path(capsys.readouterr().out.splitlines()[1].split(": ", 1)[1])
    tokens = entry / "tokens.bin"
    with open(tokens, "r+b") as f:  # outside the first and last MiB; ids of a vocab of 11 fit in bytes
        f.seek(2**20)
        f.write(bytes([200]) * 2**20)
    train = [sys.executable, "-m", "rnn_train", "train", *keys, "train.max_steps=5", f"log.dir={tmp_path / 'runs'}"]
    run = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines()[-1] == (f"error: {tokens} is damaged: it holds the id 200 where the vocab has ids "
                                           f"0-10; delete its cache entry {entry} and run again to prepare it anew")
    for file in entry.iterdir():
        file.unlink()
    entry.rmdir()
    again = subprocess.run(train + ["--force"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    # gradflow reads the same token file: the same line
    with open(tokens, "r+b") as f:
        f.seek(2**20)
        f.write(bytes([200]) * 2**20)
    run_dir = tmp_path / "runs" / "debug"
    flow = subprocess.run([sys.executable, "-m", "rnn_train", "gradflow", "--checkpoint", str(run_dir), "--split",
                           "train", "--steps", "20", "--batch", "64", "--no-tensorboard", "--cache-dir",
                           str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert flow.returncode == 2 and flow.stderr.splitlines()[-1].startswith(f"error: {tokens} is damaged"), flow.stderr


@pytest.mark.parametrize("symbols, bad", [(11, 11), (70_000, 70_000), (70_000, -3)])
def test_each_batch_is_checked_to_hold_ids_of_the_vocab(symbols, bad):
    from rnn_train.data.dataset import Dataset

    vocab = Vocab(["<unk>"] + [chr(0x10000 + i) for i in range(symbols - 1)])  # uint8, or int32 past 65,536 ids
    data = Dataset(vocab, np.zeros(0, vocab.dtype), np.zeros(0), np.zeros(0), 0, 0.0, token_file="/c/e/tokens.bin")
    good = np.array([[0, len(vocab) - 1]]), np.array([[1, 2]])
    assert list(data.checked([good])) == [good]
    with pytest.raises(UserError, match=f"^/c/e/tokens.bin is damaged: it holds the id {bad} where the vocab has ids "
                                        f"0-{symbols - 1}; delete its cache entry /c/e and run again"):
        list(data.checked([good, (np.array([[0, 1]]), np.array([[1, bad]]))]))
    given = Dataset(vocab, np.zeros(4, np.int64), np.zeros(0), np.zeros(0), 0, 0.0)  # train(data=...)'s arrays
    with pytest.raises(UserError, match="^the corpus ids hold the id -1 where the vocab"):
        list(given.checked([(np.array([[0, 1]]), np.array([[1, -1]]))]))
