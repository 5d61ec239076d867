"""The prepared (streamed, memory-mapped) corpus gives exactly the ids of the old in-memory path.

The old path read every file whole, normalised it, converted Chinese files, joined the files with
"\\n", applied letters_only to the whole string, then `Vocab.build(text)` and `vocab.encode(text)`.
`old_ids` below is that path, written out here so that the library's streaming code is compared
with something it does not share.
"""
from pathlib import Path

import numpy as np
import pytest

from rnn_train.config import DataConfig
from rnn_train.data import pinyin
from rnn_train.data.dataset import letters_only, prepare_data, split
from rnn_train.data.prepare import prepare_corpus
from rnn_train.data.vocab import Vocab
from tests.conftest import shared_corpus


def old_text(cfg: DataConfig) -> str:
    """The corpus as one string, the way the in-memory pipeline built it."""
    parts = []
    for path in cfg.paths:
        text = Path(path).read_bytes().decode(cfg.encoding)
        text = text[1:] if text.startswith("\ufeff") else text
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if cfg.kind == "pinyin" and pinyin.looks_like_chinese(text):
            text = _converted(text, cfg.tones)
        parts.append(text)
    text = "\n".join(parts) if parts else pinyin.default_pinyin_corpus(cfg.tones)
    return letters_only(text) if cfg.letters_only else text


_CONVERSIONS: dict = {}


def _converted(text: str, tones: str) -> str:
    """hanzi_to_pinyin on the whole text, once per (text, tones) in this session: it takes seconds."""
    key = (hash(text), len(text), tones)
    if key not in _CONVERSIONS:
        _CONVERSIONS[key] = pinyin.hanzi_to_pinyin(text, tones)
    return _CONVERSIONS[key]


def assert_same_as_old(cfg: DataConfig, prepared) -> None:
    text = old_text(cfg)
    vocab = Vocab.build(text, cfg.min_freq, cfg.max_size)
    ids = vocab.encode(text)
    assert prepared.vocab == vocab
    assert prepared.tokens.dtype == ids.dtype
    assert np.array_equal(prepared.tokens, ids)
    assert prepared.meta["text_chars"] == len(text)
    assert prepared.meta["unk_fraction"] == float(np.mean(ids == 0))


@pytest.fixture(scope="module")
def pinyin_cache(tmp_path_factory):
    """One cache dir for the Hongloumeng conversions, shared by the tests that convert it."""
    return tmp_path_factory.mktemp("pinyin-cache")


REAL = [
    ("timemachine/timemachine.txt", dict(kind="text", letters_only=True)),
    ("timemachine/timemachine.txt", dict(kind="text", min_freq=20)),
    ("tinyshakespeare/input.txt", dict(kind="text", max_size=40)),
    ("hongloumeng/hongloumeng.zh.txt", dict(kind="text")),
    ("hongloumeng/hongloumeng.orig_gbk.txt", dict(kind="text", encoding="gbk")),
    ("hongloumeng/hongloumeng.pinyin.txt", dict(kind="pinyin")),
    ("hongloumeng/hongloumeng.pinyin_tone.txt", dict(kind="pinyin", tones="numbers")),
    ("hongloumeng/hongloumeng.zh.txt", dict(kind="pinyin", tones="none")),
    ("hongloumeng/hongloumeng.orig_gbk.txt", dict(kind="pinyin", tones="none", encoding="gbk")),
]


@pytest.mark.parametrize("relpath, settings", REAL, ids=[f"{p.split('/')[-1]}-{s}" for p, s in REAL])
def test_real_corpora_prepare_to_the_ids_of_the_in_memory_path(relpath, settings, tmp_path, pinyin_cache):
    cfg = DataConfig(paths=[str(shared_corpus(relpath))], **settings)
    # chunks of 64 KiB + 1 byte: many boundaries, falling inside multi-byte characters and CRLFs
    prepared = prepare_corpus(cfg, pinyin_cache, chunk_bytes=(1 << 16) + 1, progress=False)
    assert_same_as_old(cfg, prepared)


def test_several_real_files_joined_and_the_built_in_corpus(tmp_path):
    cfg = DataConfig(paths=[str(shared_corpus("timemachine/timemachine.txt")),
                            str(shared_corpus("tinyshakespeare/input.txt"))], kind="text", letters_only=True)
    assert_same_as_old(cfg, prepare_corpus(cfg, tmp_path, chunk_bytes=4099, progress=False))
    built_in = DataConfig(kind="pinyin", tones="numbers")
    assert_same_as_old(built_in, prepare_corpus(built_in, tmp_path, chunk_bytes=4099, progress=False))


EDGE_TEXTS = {
    "crlf": b"one\r\ntwo\r\n\r\nthree\rfour\r\r\nend\r",
    "utf8": "héllo wörld 中文 😀 ok\n".encode() * 7,
    "bom": "\ufeffabc\r\n\ufeffdef".encode(),
    "letters": b"  ..Hello,  World!!\n\n42 times -- e.g. THE end...  ",
    "mixed": "\ufeff  «Ça va?»\r\n--Oui!  42\r\nNO\u00a0WAY\r".encode(),
}


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 64])
@pytest.mark.parametrize("letters", [False, True])
def test_edge_cases_at_every_chunk_boundary(tmp_path, chunk_bytes, letters):
    paths = []
    for name, data in EDGE_TEXTS.items():
        path = tmp_path / f"{name}.txt"
        path.write_bytes(data)
        paths.append(str(path))
    for some in (paths, paths[::-1], paths[:1], paths[3:4]):
        cfg = DataConfig(paths=some, kind="text", letters_only=letters)
        prepared = prepare_corpus(cfg, None, chunk_bytes=chunk_bytes, progress=False)
        assert_same_as_old(cfg, prepared)


def test_chinese_file_prepared_with_tiny_chunks_matches(tmp_path):
    text = "  《红楼梦》\r\n\r\n\r\n第一回　甄士隐——梦幻\r\n“好！”他说。'DNA２０２４'\r\n\r\n——\r\n"
    path = tmp_path / "zh.txt"
    path.write_bytes(("\ufeff" + text * 3).encode("utf-8"))
    cfg = DataConfig(paths=[str(path)], kind="pinyin", tones="numbers")
    assert_same_as_old(cfg, prepare_corpus(cfg, tmp_path / "cache", chunk_bytes=5, progress=False))


def test_dataset_splits_are_slices_of_the_token_file_not_copies(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 300)
    cfg = DataConfig(paths=[str(path)], kind="text", val_fraction=0.1, test_fraction=0.05, batch_size=4, num_steps=8)
    data = prepare_data(cfg, tmp_path / "cache")
    text = old_text(cfg)
    ids = Vocab.build(text).encode(text)
    for got, want in zip((data.train, data.val, data.test), split(ids, cfg.val_fraction, cfg.test_fraction)):
        mapped = got
        while not isinstance(mapped, np.memmap):  # a view of the token file's map, however many levels down
            mapped = mapped.base
        assert Path(mapped.filename).parent.parent == tmp_path / "cache" / "prepared"
        assert np.shares_memory(got, mapped)
        assert np.array_equal(got, want)
        assert not got.flags.writeable
    assert data.text_chars == len(text) and data.unk_fraction == 0.0


def test_the_prepare_command_names_the_corpus_too_short_for_one_batch(tmp_path, capsys):
    from rnn_train.cli import run
    from rnn_train.data.cli import main

    path = tmp_path / "a.txt"
    path.write_text("a short corpus\n" * 10)
    argv = ["--config", "debug", "data.kind=text", f"data.paths={path}", "data.batch_size=64",
            "--cache-dir", str(tmp_path / "cache")]
    assert run(main, argv) == 2  # prepared and cached, but a training run of this config would stop
    err = capsys.readouterr().err
    assert err.startswith(f"error: corpus too short: the training split of {path} has ") and err.count("\n") == 1


def test_prepare_data_keeps_the_too_short_check(tmp_path):
    from rnn_train.errors import UserError

    path = tmp_path / "a.txt"
    path.write_text("abc" * 10)
    with pytest.raises(UserError, match="corpus too short: the training split of .*a.txt has 27 characters"):
        prepare_data(DataConfig(paths=[str(path)], kind="text", batch_size=4, num_steps=8), tmp_path / "cache")


def test_a_min_freq_that_leaves_no_character_is_refused_before_training(tmp_path):
    """With every character <unk> there is nothing to predict: the loss reads 0 and sampling breaks."""
    from rnn_train.errors import UserError

    path = tmp_path / "a.txt"
    path.write_text("abcab" * 200)
    cfg = DataConfig(paths=[str(path)], kind="text", min_freq=401, batch_size=4, num_steps=8)
    with pytest.raises(UserError, match=r"data.min_freq=401 leaves no character in the vocabulary \(the most "
                                        r"frequent occurs 400 times\)"):
        prepare_corpus(cfg, tmp_path / "cache")
    prepared = prepare_corpus(DataConfig(paths=[str(path)], kind="text", min_freq=400), tmp_path / "cache")
    assert prepared.vocab.itos == ["<unk>", "a", "b"]


@pytest.mark.parametrize("kind", ["text", "pinyin"])
def test_a_file_name_that_is_not_utf8_prepares_like_any_other(tmp_path, kind):
    """Linux names are bytes; Python holds the undecodable ones as lone surrogates, which the cache
    keys must hash as they are."""
    import os

    odd = tmp_path / os.fsdecode(b"bad\xffname.txt")
    odd.write_text("ni hao zhong guo\n" * 50)
    cfg = DataConfig(paths=[str(odd)], kind=kind, batch_size=4, num_steps=8)
    first = prepare_data(cfg, tmp_path / "cache")
    again = prepare_data(cfg, tmp_path / "cache")  # the cache entry is found again by the same key
    assert first.vocab == again.vocab and np.array_equal(first.train, again.train) and len(first.train) > 0


def test_an_encoding_that_decodes_to_half_a_surrogate_pair_is_one_line_naming_it(tmp_path):
    from rnn_train.errors import UserError

    path = tmp_path / "u7.txt"
    path.write_bytes(b"hello world +2AA- again\n" * 300)  # UTF-7 for U+D800, a lone high surrogate
    cfg = DataConfig(paths=[str(path)], kind="text", encoding="utf-7", batch_size=4, num_steps=8)
    with pytest.raises(UserError, match=r"u7.txt: utf-7 decodes to U\+D800 at character 12, half of a UTF-16 pair"):
        prepare_data(cfg, tmp_path / "cache")
