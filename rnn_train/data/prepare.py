"""The prepare step: a corpus becomes a token file on disk, read through `np.memmap`, once.

Why: a corpus held as one Python string costs about twelve times its size in memory and is
re-read, re-counted and re-encoded by every run. Prepared once, a corpus of any size costs a
memory map: training, validation, the test split and resume read ids straight from the page cache,
and a second run starts at once.

How (two streamed passes, bounded memory: chunks of `CHUNK_BYTES`)
    1. count: the text chunks (rnn_train.data.corpus) become code point arrays (after
       `letters_only` when set, rnn_train.data.stream), counted; the vocab is built from the counts
       exactly as `Vocab.build` builds it from a whole string. Skipped when a vocab is given.
    2. encode: the same chunks again, each encoded with the vocab's lookup table and appended to
       ``tokens.bin`` (raw ids in the vocab's dtype: uint8 up to 256 symbols, then uint16, int32).

The cache (``<cache_dir>/prepared/``)
    An entry is a directory named by a SHA-256 of the sources' contents and every setting that
    changes the ids (kind, encoding, tones, letters_only, min_freq and max_size, or the given
    vocab; the converter and pypinyin versions for pinyin; `FORMAT_VERSION`), holding
    ``tokens.bin``, ``vocab.json`` and ``meta.json`` (sources with size and SHA-256, settings,
    counts, fingerprints). It is built in a temporary directory and renamed into place, so
    Ctrl-C or a full disk never leaves an entry half written. Finding an entry needs the sources'
    hashes; to skip reading a large corpus each run, ``by-stat/`` maps (path, size, mtime, ctime,
    inode) of the sources to the entry (written only for files last modified over
    `RACY_SECONDS` ago, so that a file changed twice within one timestamp tick is re-hashed).
    An entry is checked before use: its metadata parses, ``tokens.bin`` has n_tokens x itemsize
    bytes and the same head and tail as when written, ``vocab.json`` has the recorded hash (and
    equals the given vocab). A damaged entry is prepared again, with a one-line note.

    With a given vocab (resume, fine-tuning) the entry prepared with the corpus's own vocab is
    used when that vocab is the same; otherwise the corpus is encoded with the given one
    (characters outside it -> <unk>) into an entry of its own.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from rnn_train.config import DataConfig
from rnn_train.data import corpus, pinyin
from rnn_train.data.corpus import CHUNK_BYTES
from rnn_train.data.sources import SourceFile, content_hash, resolve_paths, tag_cache, unchanged
from rnn_train.data.stream import CodePointCounts, LettersOnly, code_points
from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError
from rnn_train.files import cache_hint, default_permissions

# Bump whenever the ids prepared from the same inputs change, so that old entries stop matching.
FORMAT_VERSION = 1
RACY_SECONDS = 2.0
_SAMPLE_BYTES = 1 << 20
TOKENS, VOCAB, META = "tokens.bin", "vocab.json", "meta.json"

Note = Callable[[str], object]


def _note_to_stderr(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Prepared:
    """A prepared corpus: its vocab, its ids as a read-only memory map, and its metadata."""

    vocab: Vocab
    tokens: np.ndarray  # [n_tokens] np.memmap in vocab.dtype
    meta: dict
    directory: Optional[Path]  # the cache entry; None when prepared without a cache
    reused: bool  # found in the cache rather than prepared now


def _sha256_json(value: object) -> str:
    # surrogatepass: a path that is not valid UTF-8 holds lone surrogates (Python's surrogateescape)
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


def vocab_digest(vocab: Vocab) -> str:
    return _sha256_json(vocab.to_list())


def settings_of(cfg: DataConfig, vocab: Optional[Vocab]) -> dict:
    """Every setting that changes the prepared ids, as plain data (part of the cache key)."""
    settings = {"format": FORMAT_VERSION, "kind": cfg.kind, "encoding": cfg.encoding, "letters_only": cfg.letters_only}
    if cfg.kind == "pinyin":
        settings.update(tones=cfg.tones, converter=pinyin.CONVERTER_VERSION, pypinyin=pinyin.pypinyin_version())
    if vocab is None:
        settings.update(min_freq=cfg.min_freq, max_size=cfg.max_size)
    else:
        settings.update(vocab_sha256=vocab_digest(vocab))
    return settings


class Sources:
    """The corpus files with the two keys an entry is found by; content hashes computed once, lazily."""

    def __init__(self, files: list[SourceFile], bars: "_Bars"):
        self.files = files
        self.bars = bars

    def stat_key(self, settings: dict) -> str:
        stats = [[str(f.path.absolute()), f.size, f.mtime_ns, f.ctime_ns, f.inode] for f in self.files]
        return _sha256_json([settings, stats])

    @cached_property
    def hashes(self) -> list[str]:
        with self.bars.stage("hash", sum(f.size for f in self.files)) as on_bytes:
            return [content_hash(f.path, on_bytes) for f in self.files]

    def content_key(self, settings: dict) -> str:
        return _sha256_json([settings, self.hashes])

    def racy(self) -> bool:
        """Some file was modified so recently that a second change might keep its mtime."""
        return any(time.time_ns() - f.mtime_ns < RACY_SECONDS * 1e9 for f in self.files)


# --------------------------------------------------------------------------- opening entries


def open_entry(directory: Path, expect_vocab: Optional[Vocab] = None) -> tuple[Optional[Prepared], str]:
    """(the entry, "") when `directory` holds a sound entry (with vocab `expect_vocab` if given),
    else (None, why not); a missing directory gives (None, "")."""
    if not directory.is_dir():
        return None, ""
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8", errors="surrogateescape"))
        vocab_text = (directory / VOCAB).read_text(encoding="utf-8")
        vocab = Vocab.from_list(json.loads(vocab_text))
        n, dtype = int(meta["n_tokens"]), np.dtype(meta["dtype"])
        size = (directory / TOKENS).stat().st_size
    except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
        return None, f"unreadable ({exc.__class__.__name__})"
    if meta.get("format") != FORMAT_VERSION or vocab_digest(vocab) != meta.get("vocab_sha256") or dtype != vocab.dtype:
        return None, "its vocab does not match its metadata"
    if not _sound_meta(meta):
        return None, f"{META} lacks what its readers take from it"
    if size != n * dtype.itemsize:
        return None, f"{TOKENS} has {size:,} bytes, {n * dtype.itemsize:,} expected"
    if _tokens_sample(directory / TOKENS, size) != meta.get("tokens_sample_sha256"):
        return None, f"{TOKENS} is not the file written with this vocab"
    if expect_vocab is not None and vocab != expect_vocab:
        return None, "its vocab differs from the given one"
    tokens = np.memmap(directory / TOKENS, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    return Prepared(vocab, tokens, meta, directory, True), ""


def _sound_meta(meta: dict) -> bool:
    """Whether meta.json holds, of the right kinds, what the dataset and `prepare` read from it: the
    <unk> share and the sources (each file's size and content hash, or the built-in corpus's name).
    A file edited so that it still parses was otherwise a KeyError or a wrong digest later."""
    sources, unk = meta.get("sources"), meta.get("unk_fraction")
    files_ok = isinstance(sources, list) and all(
        isinstance(f, dict) and isinstance(f.get("sha256"), str) and isinstance(f.get("size"), int) for f in sources)
    return (files_ok or isinstance(sources, str)) and isinstance(unk, (int, float)) and not isinstance(unk, bool)


def _tokens_sample(path: Path, size: int) -> str:
    """SHA-256 of a token file's size, first and last MiB: a cheap check that it is the file written."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(_SAMPLE_BYTES))
        f.seek(max(0, size - _SAMPLE_BYTES))
        digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()


# --------------------------------------------------------------------------- preparing


def _code_point_chunks(parts: list[corpus.TextPart], letters_only: bool, chunk_bytes: int,
                       on_bytes) -> Iterator[np.ndarray]:
    """The corpus as consecutive code point arrays, after letters_only when set."""
    keep_letters = LettersOnly() if letters_only else None
    for text in corpus.corpus_chunks(parts, chunk_bytes, on_bytes):
        cps = code_points(text)
        yield keep_letters(cps) if keep_letters else cps


def _count(parts, cfg: DataConfig, chunk_bytes: int, bars: "_Bars") -> CodePointCounts:
    counts = CodePointCounts()
    with bars.stage("count", _part_bytes(parts)) as on_bytes:
        for cps in _code_point_chunks(parts, cfg.letters_only, chunk_bytes, on_bytes):
            counts.add(cps)
    return counts


def _encode(parts, cfg: DataConfig, vocab: Vocab, path: Path, chunk_bytes: int, bars: "_Bars") -> tuple[int, int]:
    """Write the ids of the corpus to `path`; returns (ids written, of which <unk>)."""
    n = unk = 0
    with open(path, "wb") as f, bars.stage("encode", _part_bytes(parts)) as on_bytes:
        for cps in _code_point_chunks(parts, cfg.letters_only, chunk_bytes, on_bytes):
            ids = vocab.encode_code_points(cps)
            f.write(ids)
            n += len(ids)
            unk += len(ids) - int(np.count_nonzero(ids))
        f.flush()
        os.fsync(f.fileno())
    return n, unk


def _build(cfg: DataConfig, sources: Sources, vocab: Optional[Vocab], out: Path, work_dir: Path,
           chunk_bytes: int, bars: "_Bars") -> None:
    """Prepare the corpus into the (empty) directory `out`: tokens, vocab and, last, metadata."""
    parts = corpus.plan_parts(sources.files, cfg.kind, cfg.encoding, cfg.tones, work_dir, chunk_bytes, bars.stage)
    counted = None
    if vocab is None:
        counted = _count(parts, cfg, chunk_bytes, bars)
        vocab = Vocab.from_counts(counted.counts, cfg.min_freq, cfg.max_size)
        if len(vocab) == 1 and counted.total:  # every character <unk>: a model with nothing to predict
            raise UserError(f"data.min_freq={cfg.min_freq} leaves no character in the vocabulary (the most frequent "
                            f"occurs {int(counted.counts.max())} times)")
    n, unk = _encode(parts, cfg, vocab, out / TOKENS, chunk_bytes, bars)
    if (counted is not None and counted.total != n) or not all(unchanged(f) for f in sources.files):
        changed = [str(f.path) for f in sources.files if not unchanged(f)] or ["a corpus file"]
        raise UserError(f"{changed[0]} changed while it was being prepared; run again")
    if n == 0 and cfg.letters_only:
        raise UserError(f"data.letters_only left nothing of {', '.join(cfg.paths)}: it has no ASCII letters")
    vocab_text = json.dumps(vocab.to_list(), ensure_ascii=False)
    (out / VOCAB).write_text(vocab_text, encoding="utf-8")
    meta = {
        "format": FORMAT_VERSION,
        "sources": [{"path": str(f.path.absolute()), "size": f.size, "sha256": h}
                    for f, h in zip(sources.files, sources.hashes)] or corpus.BUILT_IN,
        "settings": {"kind": cfg.kind, "encoding": cfg.encoding, "tones": cfg.tones, "letters_only": cfg.letters_only,
                     "min_freq": cfg.min_freq, "max_size": cfg.max_size, "converter_version": pinyin.CONVERTER_VERSION},
        "key": settings_of(cfg, vocab if counted is None else None),
        "vocab_given": counted is None, "vocab_size": len(vocab), "vocab_sha256": vocab_digest(vocab),
        "dtype": vocab.dtype.name, "n_tokens": n, "text_chars": n,
        "unk_count": unk, "unk_fraction": unk / n if n else 0.0,
        "tokens_sample_sha256": _tokens_sample(out / TOKENS, n * vocab.dtype.itemsize),
    }
    # surrogateescape: a source path that is not valid UTF-8 is written as its own bytes
    (out / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8",
                            errors="surrogateescape")


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished entry into place; a racing process's finished entry wins."""
    try:
        os.rename(tmp, final)
    except OSError:
        if open_entry(final)[0] is None:
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        shutil.rmtree(tmp, ignore_errors=True)


def _prepare_into(cfg: DataConfig, sources: Sources, vocab: Optional[Vocab], root: Path, key: str,
                  work_dir: Path, chunk_bytes: int, bars: "_Bars") -> Prepared:
    """Build the entry `root/key` through a temporary directory; OSErrors become one line."""
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", suffix=".tmp", dir=root))
        default_permissions(tmp)  # not mkdtemp's owner-only 0700: a cache shared by users reads it
        _build(cfg, sources, vocab, tmp, work_dir, chunk_bytes, bars)
        _publish(tmp, root / key)
    except OSError as exc:
        raise UserError(f"cannot write the prepared corpus in {root} ({exc.strerror or exc}): "
                        f"{cache_hint(exc)}") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    prepared, why = open_entry(root / key, vocab)
    if prepared is None:
        raise UserError(f"the prepared corpus {root / key} cannot be read back ({why})")
    return Prepared(prepared.vocab, prepared.tokens, prepared.meta, prepared.directory, False)


# --------------------------------------------------------------------------- finding entries


def _open_or_discard(directory: Path, vocab: Optional[Vocab], note: Note) -> Optional[Prepared]:
    """The entry at `directory` if sound; a damaged one is removed, with a note, to be prepared again."""
    prepared, why = open_entry(directory, vocab)
    if prepared is None and why:
        note(f"the prepared corpus {directory} is damaged ({why}); preparing it again")
        shutil.rmtree(directory, ignore_errors=True)
    return prepared


def _pointer(root: Path, sources: Sources, settings: dict) -> Path:
    return root / "by-stat" / sources.stat_key(settings)


def _remember(pointer: Path, key: str, sources: Sources) -> None:
    """Point the sources' stat key at entry `key`, unless a file is too fresh to trust its mtime."""
    if sources.racy():
        return
    try:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(key + "\n", encoding="ascii")
    except OSError:
        pass  # only a shortcut


def _find(root: Path, sources: Sources, settings: dict, vocab: Optional[Vocab], note: Note) -> Optional[Prepared]:
    """The sound entry for `settings`: through the stat pointer (no file read), else by content."""
    pointer = _pointer(root, sources, settings)
    try:
        key = pointer.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        key = ""
    if key.isalnum():
        prepared = _open_or_discard(root / key, vocab, note)
        if prepared is not None:
            return prepared
    key = sources.content_key(settings)
    prepared = _open_or_discard(root / key, vocab, note)
    if prepared is not None:
        _remember(pointer, key, sources)
    return prepared


def prepare_corpus(cfg: DataConfig, cache_dir: Optional[Path], vocab: Optional[Vocab] = None, *,
                   chunk_bytes: int = CHUNK_BYTES, progress: Optional[bool] = None,
                   note: Note = _note_to_stderr) -> Prepared:
    """The prepared corpus of `cfg` (encoded with `vocab` when given), from the cache under
    `cache_dir` or prepared now. Without a cache dir it is prepared into a temporary directory that
    is deleted at once (the memory map keeps the token file alive until the arrays are gone).
    `progress`: tqdm bars on stderr (None: when stderr is a terminal and the corpus is large)."""
    if cache_dir is not None and (Path(cache_dir) / "prepared").is_dir():  # one from before caches were tagged:
        tag_cache(Path(cache_dir))  # a data.paths directory holding it leaves it out from this listing on
    files = resolve_paths(list(cfg.paths))
    bars = _Bars(progress, files)
    sources = Sources(files, bars)
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="rnn-train-prepare-") as scratch:
            prepared = _prepare_into(cfg, sources, vocab, Path(scratch), "entry", Path(scratch), chunk_bytes, bars)
            return Prepared(prepared.vocab, prepared.tokens, prepared.meta, None, False)
    tag_cache(Path(cache_dir))  # a new cache: made now, from here on left out of data.paths
    root = Path(cache_dir) / "prepared"
    if vocab is not None:  # resume: the entry of the corpus's own vocab serves when it is the same vocab
        own = _find(root, sources, settings_of(cfg, None), None, note)
        if own is not None and own.vocab == vocab:
            return own
    settings = settings_of(cfg, vocab)
    found = _find(root, sources, settings, vocab, note)
    if found is not None:
        return found
    key = sources.content_key(settings)
    prepared = _prepare_into(cfg, sources, vocab, root, key, Path(cache_dir), chunk_bytes, bars)
    _remember(_pointer(root, sources, settings), key, sources)
    return prepared


# --------------------------------------------------------------------------- progress


def _part_bytes(parts: list[corpus.TextPart]) -> int:
    return sum(p.path.stat().st_size - p.offset for p in parts if p.path is not None)


class _Bars:
    """tqdm bars in bytes read, one per stage, when wanted; otherwise callbacks that do nothing."""

    AUTO_BYTES = 64 << 20  # progress=None shows bars from this corpus size on

    def __init__(self, progress: Optional[bool], files: list[SourceFile]):
        total = sum(f.size for f in files)
        self.enabled = progress if progress is not None else (sys.stderr.isatty() and total >= self.AUTO_BYTES)

    def stage(self, name: str, total: int) -> "_Stage":
        """A bar for `name` (none for an empty name or nothing to read); `with` gives its update callback."""
        if not (self.enabled and name and total):
            return _Stage(None)
        from tqdm import tqdm

        return _Stage(tqdm(total=total, desc=f"prepare: {name}", unit="B", unit_scale=True, unit_divisor=1024,
                           file=sys.stderr, dynamic_ncols=True, leave=False))


class _Stage:
    def __init__(self, bar):
        self.bar = bar

    def __enter__(self):
        return self.bar.update if self.bar is not None else None

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
