"""`rnn-train explore`: one offline HTML page that runs a trained model in the browser.

    rnn-train explore --checkpoint runs/shakespeare_gru mytext.txt --out gru.html
    rnn-train explore --checkpoint runs/pinyin_gru                     (a slice of its validation text)

The page (rnn_train/explore/page.py) holds the weights, the texts and its script: it opens from
file:// with no network, types ahead, colours the texts by surprisal and by any unit, plots gate
saturation and gradient flow, and matches selected patterns. Texts are read as `rnn-train score`
reads them (the model's encoding; Chinese converted to pinyin for a pinyin model), each from a zero
state; together they are cut to --max-chars, and the page says so. Without a text file the page
analyses the start of the checkpoint's validation split, when its corpus can be found.
"""
from __future__ import annotations

import collections
import shlex
import sys
from pathlib import Path

from rnn_train.cli import ArgumentParser, not_empty
from rnn_train.errors import UserError
from rnn_train.files import output_arg, shell_word
from rnn_train.runfiles import EXPLORE_PAGE

MAX_CHARS = 20_000


def _parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description="One self-contained HTML page that runs a trained model in the browser: "
                                               "type-ahead, surprisal, units, gate saturation, select and match, "
                                               "gradient flow. Works offline from file://.")
    ap.add_argument("files", nargs="*", metavar="TEXT_FILE",
                    help="texts to analyse, read as `rnn-train score` reads them (default: the start of the "
                         "checkpoint's validation text)")
    ap.add_argument("--checkpoint", required=True, help="a .pt file or a run directory (uses its best.pt)")
    ap.add_argument("--out", default=None, type=output_arg, help="the page to write (default: explore.html beside the checkpoint)")
    ap.add_argument("--max-chars", type=int, default=MAX_CHARS,
                    help=f"analyse at most this many characters of the texts together (default {MAX_CHARS:,}); "
                         f"the page says when it cut")
    ap.add_argument("--encoding", default=None, type=not_empty,
                    help="encoding of the text files (default: the model's data.encoding)")
    ap.add_argument("--cache-dir", default="data/cache", type=output_arg,
                    help="where the prepared corpus is looked for, without a text file (default data/cache)")
    return ap


def file_documents(paths: list[str], data_cfg, encoding: str | None, max_chars: int):
    """The files' texts as the model reads them, of which the first `max_chars` characters of them
    all are kept -> (documents, characters in all). Read piece by piece, so that a file far longer
    than the page holds in memory only what the page shows (a 129 MB file took 490 MB before)."""
    from rnn_train.explore.page import Document
    from rnn_train.prediction.textstream import model_text, nothing_read

    docs, total, kept = [], 0, 0
    for path in paths:
        parts, length = [], 0
        for piece in model_text(path, data_cfg, encoding):
            length += len(piece)
            if kept < max_chars:
                parts.append(piece[:max_chars - kept])
                kept += len(parts[-1])
        if not length:
            raise nothing_read(path, data_cfg, "explore")
        if parts:
            docs.append(Document(path, "".join(parts)))
        total += length
    return docs, total


def validation_document(cfg, vocab, ckpt: dict, checkpoint: Path, cache_dir: str | None, max_chars: int):
    """The start of the validation split of the checkpoint's corpus (as ids -> characters; an id
    of <unk> becomes U+FFFD, which the vocab cannot spell either), the split's length, and the note
    (also printed on stderr) where the corpus changed since the run (its split is then other text)."""
    from rnn_train.data import corpus
    from rnn_train.data.dataset import checkpoint_splits
    from rnn_train.explore.page import Document

    try:
        data, note = checkpoint_splits(cfg.data, ckpt, checkpoint, Path(cache_dir) if cache_dir else None, vocab,
                                       "validation")
    except UserError as e:
        raise UserError(f"no TEXT_FILE given, and the validation text of {checkpoint} cannot be read ({e}); "
                        f"give a text file") from None
    val = data.val
    if len(val) < 2:
        raise UserError(f"no TEXT_FILE given, and {checkpoint}'s run has no validation text (data.val_fraction "
                        f"{cfg.data.val_fraction}); give a text file")
    ids = val[:max_chars]
    next(data.checked([(ids, ids)]))  # a damaged id in the token file: one line, not an IndexError
    itos = ["\ufffd", *vocab.itos[1:]]
    text = "".join(itos[i] for i in ids.tolist())
    return Document(f"validation text of {corpus.named(cfg.data.paths)}", text), len(val), note


UNKNOWN_LISTED = 12
"""The page names this many of the characters it reads as <unk>, the most frequent, and counts the rest."""


def unknown_chars(docs, vocab) -> dict:
    """The characters of the texts that the vocab lacks: how many in all, the most frequent, and how
    many other distinct ones (the page named 12 without a word of the rest)."""
    counts = collections.Counter(c for d in docs for c in d.text if c not in vocab.stoi)
    listed = counts.most_common(UNKNOWN_LISTED)
    return {"count": sum(counts.values()), "chars": [[c, n] for c, n in listed], "others": len(counts) - len(listed)}


def tensorboard_command(checkpoint: Path) -> str | None:
    """`tensorboard --logdir` the directory above the run (its HPARAMS view finds a run's metrics in
    its train/ and val/ subdirectories only from there), when the run wrote events."""
    run_dir = checkpoint.parent if checkpoint.parent.name else checkpoint.resolve().parent
    if not any(run_dir.glob("**/events.out.tfevents.*")):
        return None
    return f"tensorboard --logdir {shell_word(run_dir.parent)}   (this run: {run_dir.name})"


def main(argv: list[str] | None = None, prog: str = "rnn-train explore") -> int:
    ap = _parser(prog)
    args = ap.parse_intermixed_args(argv)  # text files may come before or after options
    if args.max_chars < 2:
        ap.error(f"--max-chars must be >= 2, got {args.max_chars}")

    import numpy as np

    from rnn_train.explore import page, pinyin_table
    from rnn_train.files import atomic_write_text, refuse_replacing, starts_with
    from rnn_train.model.checkpoint import load_model, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out is not None else checkpoint.parent / EXPLORE_PAGE
    refuse_replacing(out, "--out", reads=(checkpoint, *args.files), own=starts_with(page.page_start()),
                     kind="a page explore wrote")
    model, vocab, cfg, ckpt = load_model(checkpoint)
    if model.spec.hook("js") is None:
        raise UserError(f"{checkpoint}: cell {model.spec.name!r} has no JavaScript step (CellSpec hook \"js\"), so "
                        f"the page cannot run it; register one (see rnn_train/explore/cells_js.py)")
    changed = ""
    if args.files:
        docs, total = file_documents(args.files, cfg.data, args.encoding, args.max_chars)
    else:
        doc, total, changed = validation_document(cfg, vocab, ckpt, checkpoint, args.cache_dir, args.max_chars)
        docs = [doc]
    kept = sum(len(d.text) for d in docs)
    longest = max(docs, key=lambda d: len(d.text))  # gradient flow's windows stay inside one text, as every view's
    run = {"checkpoint": str(checkpoint), "step": int(ckpt["step"]),
           "best_val_loss": float(ckpt["best_val_loss"]) if np.isfinite(ckpt.get("best_val_loss", np.inf)) else None,
           "tensorboard": tensorboard_command(checkpoint),
           "command": " ".join(["rnn-train explore", *map(shlex.quote, sys.argv[2:] if argv is None else argv)]),
           "cut": {"kept": kept, "total": total} if kept < total else None,
           "unknown": unknown_chars(docs, vocab), "changed": changed.removeprefix("note: ") or None}
    table = pinyin_table.cached_table(cfg.data.tones) if cfg.data.kind == "pinyin" else None
    flow = page.gradient_flow(model, vocab.encode(longest.text).astype(np.int64), longest.name)
    html = page.build_page(model, vocab, cfg, run, docs, table, flow)
    atomic_write_text(out, html)
    size = len(html.encode("utf-8"))
    cut_note = f" (cut from {total:,} by --max-chars)" if kept < total else ""
    unk = run["unknown"]["count"]
    print(f"wrote {out} ({size / 1e6:.2f} MB): {kept:,} character{'s' if kept != 1 else ''} analysed{cut_note}"
          + (f", {unk:,} of them not in the vocab (read as <unk>)" if unk else ""))
    return 0
