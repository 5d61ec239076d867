"""`rnn-train prepare`: turn a recipe's corpus into its cached token file now, with a progress bar.

    python -m rnn_train prepare --config configs/shakespeare_gru.yaml
    python -m rnn_train prepare --config debug data.paths=data/books/ data.kind=text

Training prepares the corpus itself on first use; running this first moves that wait (minutes for
a corpus of gigabytes) out of the run, and shows what the run will see: tokens, vocab, splits.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from rnn_train.cli import ArgumentParser, Once
from rnn_train.files import output_arg
from rnn_train.config import load_config
from rnn_train.data import corpus
from rnn_train.data.dataset import check_one_batch, split
from rnn_train.data.prepare import prepare_corpus


def main(argv: list[str] | None = None, prog: str = "rnn-train prepare") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("--config", action=Once, metavar="NAME_OR_PATH", required=True,
                    help="the recipe whose data section is prepared (a name, e.g. debug, or a YAML file)")
    ap.add_argument("--cache-dir", default="data/cache", type=output_arg, help="where prepared corpora are kept (default data/cache)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. data.paths=data/books/")
    args = ap.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    d = cfg.data
    start = time.perf_counter()
    prepared = prepare_corpus(d, Path(args.cache_dir), progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    meta = prepared.meta
    n = int(meta["n_tokens"])
    train, val, test = (len(s) for s in split(range(n), d.val_fraction, d.test_fraction))
    sources = meta["sources"]
    what = f"{len(sources)} file{'s' if len(sources) != 1 else ''}, {sum(s['size'] for s in sources) / 1e6:,.1f} MB" \
        if isinstance(sources, list) else sources
    how = "already prepared" if prepared.reused else f"prepared in {seconds:.2f}s"
    unk = f", {meta['unk_fraction']:.2%} <unk>" if meta["unk_fraction"] else ""
    print(f"{how}: {what} -> {n:,} tokens ({meta['dtype']}), vocab {len(prepared.vocab)}{unk}; "
          f"train {train:,}, val {val:,}" + (f", test {test:,}" if test else ""))
    print(f"cache entry: {prepared.directory}")
    # prepared and cached all the same; but a training run of this config would stop here, so say so
    check_one_batch(train, d, f"the training split of {corpus.named(d.paths)}")
    return 0
