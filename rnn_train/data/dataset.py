"""Prepared corpus -> vocab and train / val / test ids, as the trainer needs them.

The ids are a read-only memory map of the prepared token file (rnn_train.data.prepare), and the
splits are slices of it: no copy of the corpus is ever made, whatever its size.

The split is contiguous (train | test | val, in corpus order) rather than shuffled characters:
a character-level model's validation text must be text it has never read, and neighbouring
characters are far from independent.

    [ ................ train ................ | .. test .. | ..... val ..... ]
                                              test_fraction   val_fraction
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from rnn_train.config import DataConfig
from rnn_train.data import corpus
from rnn_train.data.batching import Batch, min_corpus_length
from rnn_train.data.prepare import TOKENS, prepare_corpus
from rnn_train.data.download import missing_corpus_error
from rnn_train.data.sources import found_under, is_glob
from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError

_NON_LETTERS = re.compile(r"[^A-Za-z]+")


def letters_and_spaces(text: str) -> str:
    """Lowercase; every run of characters other than ASCII letters (newlines, accented and non-Latin
    letters included) becomes one space."""
    return _NON_LETTERS.sub(" ", text).lower()


def letters_only(text: str) -> str:
    """`letters_and_spaces` of a whole text, without a space at either end: the d2l recipe; the
    prepare step streams the same rule (rnn_train.data.stream.LettersOnly)."""
    return letters_and_spaces(text).strip()


@dataclass
class Dataset:
    vocab: Vocab
    train: np.ndarray  # [N_train] ids, smallest dtype: a slice of the token file's memory map
    val: np.ndarray  # [N_val]
    test: np.ndarray  # [N_test]
    text_chars: int  # characters in the corpus after preprocessing
    unk_fraction: float  # share of corpus characters that encode to <unk> (counted when prepared)
    corpus_sha256: str = ""  # what the text is, whatever its paths: corpus_digest of the prepared sources
    token_file: str = ""  # the cache entry's tokens.bin the splits map ("": prepared in memory)

    def checked(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """The batches, each checked to hold ids of the vocab. Opening a cache entry checks its size
        and its first and last MiB, not the rest (reading it all would page in the whole corpus at
        every start), so a byte damaged in between would be a torch error mid-run; here it is an
        error naming the entry. Two reductions over B x T ids a batch (~4 us; the minimum too only
        where the splits' dtype is signed: int32 token files, or arrays given to train(data=...))."""
        size, signed = len(self.vocab), self.train.dtype.kind == "i"
        for x, y in batches:
            if x.size:
                bad = max(int(x.max()), int(y.max()))
                if signed and bad < size:
                    bad = min(int(x.min()), int(y.min()), 0)
                if not 0 <= bad < size:
                    what = f"the id {bad} where the vocab has ids 0-{size - 1}"
                    if not self.token_file:  # ids given as arrays (train(data=...)), not read from a cache
                        raise UserError(f"the corpus ids hold {what}")
                    raise UserError(f"{self.token_file} is damaged: it holds {what}; delete its cache entry "
                                    f"{Path(self.token_file).parent} and run again to prepare it anew")
            yield x, y


def corpus_digest(sources) -> str:
    """One SHA-256 for a prepared corpus's sources (meta.json's "sources": each file's content hash,
    in order; or the built-in corpus's description): the same bytes give the same digest wherever
    its files are, which a checkpoint records so that --resume can tell the text changed."""
    parts = [s["sha256"] for s in sources] if isinstance(sources, list) else sources
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def changed_since(ckpt: dict, data: "Dataset") -> bool:
    """Whether `data` is not the text the checkpoint's run trained on (by corpus_digest; False where
    either side has no digest: checkpoints from before it was recorded)."""
    recorded = ckpt.get("corpus_sha256")
    return bool(recorded and data.corpus_sha256 and recorded != data.corpus_sha256)


def changed_note(ckpt: dict, data: "Dataset", paths: list[str], checkpoint, split_name: str) -> str:
    """The note for a command that reads a split of a checkpoint's corpus (`paths`: its data.paths)
    when that corpus changed since the run (`changed_since`), else ''."""
    if not changed_since(ckpt, data):
        return ""
    return (f"note: the corpus ({corpus.named(paths)}) changed since {checkpoint} was trained: its {split_name} "
            f"split is not the text the run saw")


def run_data(cfg: DataConfig, ckpt: dict) -> tuple[DataConfig, str]:
    """The data section of a checkpoint's run as this process reads it: the relative `data.paths`
    that name nothing here but did where the run read them (its "workdir") point there
    (sources.found_under); and a note naming them (without "note: "), or ''. Checkpoints from
    before the workdir was recorded read their paths as they stand."""
    workdir = ckpt.get("workdir")
    paths = found_under(cfg.paths, workdir)
    moved = [new for old, new in zip(cfg.paths, paths) if new != old]
    lost = [p for p in paths if p.strip() and not os.path.isabs(os.path.expanduser(p)) and not os.path.lexists(p)
            and not is_glob(p)]
    if lost and not isinstance(workdir, str):
        raise UserError(f"{missing_corpus_error(lost[0])} (looked for in {os.getcwd()}; this checkpoint does not "
                        f"record where its run read it: run the command from there)")
    if lost and os.path.realpath(workdir) != os.path.realpath("."):
        raise UserError(f"{missing_corpus_error(lost[0])} (looked for in {os.getcwd()} and in {workdir}, where "
                        f"the run last read it)")
    if not moved:
        return cfg, ""
    return replace(cfg, paths=paths), f"data.paths not found here, read where the run trained: {', '.join(moved)}"


def checkpoint_splits(cfg: DataConfig, ckpt: dict, checkpoint, cache_dir: Path | None, vocab: Vocab,
                      split_name: str) -> tuple["Dataset", str]:
    """The splits of a checkpoint's corpus for a command that reads one with windows of its own
    (explore, gradflow): its data.paths and cache where the run read them (run_data, run_cache), the
    notes that says so and that the corpus changed since (on stderr; the latter returned too, or '').
    A training batch need not fit: a corpus that shrank since the run was told to lower
    data.batch_size, a key these commands do not take, and not that it changed."""
    data_cfg, moved = run_data(cfg, ckpt)
    if moved:
        print(f"note: {moved}", file=sys.stderr)
    data = prepare_data(replace(data_cfg, batch_size=1, num_steps=1), run_cache(cache_dir, ckpt), vocab)
    note = changed_note(ckpt, data, cfg.paths, checkpoint, split_name)
    if note:
        print(note, file=sys.stderr)
    return data, note


def run_cache(cache_dir: Path | None, ckpt: dict) -> Path | None:
    """The cache to prepare a checkpoint's corpus with: a relative `cache_dir` that names nothing
    here but names a directory where the run trained (its "workdir") is that one, by the rule of
    data.paths (sources.found_under), so explore, gradflow and --resume started elsewhere reuse the
    run's prepared corpus (its built-in or absolute corpus too) rather than preparing it again
    into ./data/cache."""
    if cache_dir is None:
        return None
    return Path(found_under([str(cache_dir)], ckpt.get("workdir"))[0])


def split(ids: np.ndarray, val_fraction: float, test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous train | test | val; a non-zero fraction always gets at least 2 characters."""
    n = len(ids)
    n_val = max(int(n * val_fraction), 2) if val_fraction > 0 else 0
    n_test = max(int(n * test_fraction), 2) if test_fraction > 0 else 0
    n_train = n - n_val - n_test
    return ids[:n_train], ids[n_train + n_test:], ids[n_train:n_train + n_test]


def too_short(n_train: int, cfg: DataConfig) -> str:
    """Why a training split of `n_train` characters yields no batch of cfg's shape, or "" when it does.

    The one statement of the rule (`batching.min_corpus_length`) for every caller: preparation, the
    trainer given a dataset, the sweep's per-run check and the prepare command."""
    need = min_corpus_length(cfg.batch_size, cfg.num_steps)
    if n_train >= need:
        return ""
    return (f"has {n_train} character{'s' if n_train != 1 else ''}, but data.batch_size × data.num_steps + "
            f"data.num_steps = {need} are needed for one batch; lower data.batch_size or data.num_steps, or use a "
            f"longer corpus")


def check_one_batch(n_train: int, cfg: DataConfig, what: str = "the training split") -> None:
    """`UserError("corpus too short: <what> has ...")` unless the training split yields one batch."""
    problem = too_short(n_train, cfg)
    if problem:
        raise UserError(f"corpus too short: {what} {problem}")


def prepare_data(cfg: DataConfig, cache_dir: Path | None = None, vocab: Vocab | None = None) -> Dataset:
    """The prepared corpus (from the cache under `cache_dir`, or prepared now), encoded with its own
    vocab or with `vocab` when given (resume, fine-tuning: characters outside it become <unk>),
    split, and checked to hold one batch of batch_size × num_steps in the training split."""
    prepared = prepare_corpus(cfg, cache_dir, vocab)
    # a plain ndarray view of the map: the same pages, without np.memmap's per-slice bookkeeping (~5 us a batch)
    ids = prepared.tokens.view(np.ndarray)
    train, val, test = split(ids, cfg.val_fraction, cfg.test_fraction)
    check_one_batch(len(train), cfg, f"the training split of {corpus.named(cfg.paths)}")
    token_file = str(prepared.directory / TOKENS) if prepared.directory is not None else ""
    return Dataset(prepared.vocab, train, val, test, len(ids), float(prepared.meta["unk_fraction"]),
                   corpus_digest(prepared.meta["sources"]), token_file)
