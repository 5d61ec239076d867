"""`rnn-train score`: how well a model predicts a text: mean cross-entropy, perplexity, bits per character.

    rnn-train score --checkpoint runs/pinyin_gru mytext.txt other.txt
    rnn-train score --checkpoint runs/pinyin_gru mytext.txt --per-char surprisal.tsv

Each file is read in bounded pieces as the model's corpus was prepared (`textstream.model_text`),
then run through the model with the state carried from a zero state at the file's start, so a
text of any length is scored with constant memory. The first character is context only; every
later character is scored given all before it, which is what the validation loss measures: given
the validation text of a run whose validation reads one stream (data.batch_size 1), the loss here
equals the run's validation loss (tests/test_score.py). Characters outside the model's vocab are
scored as `<unk>`, as in training, and their share is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from rnn_train.cli import ArgumentParser
from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError
from rnn_train.model.charrnn import CharRNN

WINDOW = 4096  # characters per module call: bounds memory ([1, WINDOW, V] logits), not the result

RowWriter = Callable[[str, np.ndarray], None]  # (characters, surprisal in bits) of a window


@dataclass
class Score:
    chars: int = 0  # characters of the text after preparation
    scored: int = 0  # characters predicted (all but the first)
    unk: int = 0  # characters outside the vocab
    nats: float = 0.0  # summed cross-entropy of the scored characters

    @property
    def loss(self) -> float:
        return self.nats / self.scored

    def line(self, name: str) -> str:
        bpc = self.loss / math.log(2)
        return (f"{name}: {self.chars:,} chars ({self.scored:,} scored, {self.unk / self.chars:.2%} <unk>) | "
                f"loss {self.loss:.4f} | ppl {math.exp(self.loss):.3f} | {bpc:.3f} bits/char")


@torch.no_grad()
def score_pieces(model: CharRNN, vocab: Vocab, pieces: Iterable[str], rows: RowWriter | None = None) -> Score:
    """Score a text given as pieces, the state carried across them. `rows(chars, bits)` receives
    every character with its surprisal in bits (NaN for the first, which is only context)."""
    from rnn_train.prediction.generate import eval_mode

    with eval_mode(model):
        return _score(model, vocab, pieces, rows)


def _score(model: CharRNN, vocab: Vocab, pieces: Iterable[str], rows: RowWriter | None) -> Score:
    device = model.decoder.weight.device
    score, state, last = Score(), None, None  # last: id of the character before the window
    for ids, chars in _windows(vocab, pieces):
        score.chars += len(ids)
        score.unk += int(np.count_nonzero(ids == 0))
        if last is None:
            inputs, targets, shown = ids[:-1], ids[1:], chars[1:]
            if rows is not None:
                rows(chars[:1], np.array([math.nan]))
        else:
            inputs, targets, shown = np.concatenate([[last], ids[:-1]]), ids, chars
        last = int(ids[-1])
        if not len(targets):
            continue
        x = torch.as_tensor(inputs, dtype=torch.int64, device=device)[None]  # [1, T]
        logits, state = model(x, state)  # [1, T, V]
        nll = F.cross_entropy(logits[0], torch.as_tensor(targets, dtype=torch.int64, device=device),
                              reduction="none")  # [T] nats
        score.nats += float(nll.double().sum())
        score.scored += len(targets)
        if rows is not None:
            rows(shown, nll.double().cpu().numpy() / math.log(2))
    return score


def _windows(vocab: Vocab, pieces: Iterable[str]) -> Iterator[tuple[np.ndarray, str]]:
    """Pieces of text -> (ids int64, characters) windows of at most WINDOW characters."""
    for piece in pieces:
        for start in range(0, len(piece), WINDOW):
            chars = piece[start:start + WINDOW]
            yield vocab.encode(chars).astype(np.int64), chars


def _escape(c: str) -> str:
    """One character as a TSV field: tab, newline, CR and backslash written as escapes."""
    return {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}.get(c, c)


def score_file(model: CharRNN, vocab: Vocab, data_cfg, path: str, encoding: str | None = None,
               out=None) -> Score:
    """Score one file; with `out` (a binary file) write `file<TAB>index<TAB>char<TAB>bits` rows."""
    from rnn_train.prediction.textstream import model_text

    index = [0]

    def rows(chars: str, bits: np.ndarray) -> None:
        lines = [f"{path}\t{index[0] + i}\t{_escape(c)}\t{'' if math.isnan(b) else f'{b:.4f}'}\n"
                 for i, (c, b) in enumerate(zip(chars, bits.tolist()))]
        out.write("".join(lines).encode("utf-8"))
        index[0] += len(chars)

    result = score_pieces(model, vocab, model_text(path, data_cfg, encoding), rows if out is not None else None)
    if result.chars == 0:
        raise UserError(f"{path} is empty: nothing to score")
    if result.scored == 0:
        raise UserError(f"{path} has a single character: nothing to score (the first is only context)")
    return result


def main(argv: list[str] | None = None, prog: str = "rnn-train score") -> int:
    ap = ArgumentParser(prog=prog, description="Cross-entropy, perplexity and bits per character of texts "
                                               "under a model (state carried, any length).")
    ap.add_argument("files", nargs="+", metavar="FILE", help="text files, each scored from a zero state")
    ap.add_argument("--checkpoint", required=True, help="a .pt file or a run directory (uses its best.pt)")
    ap.add_argument("--per-char", metavar="OUT.tsv",
                    help="write every character with its surprisal in bits (file, index, char, bits; the "
                         "first character of a file has none)")
    ap.add_argument("--encoding", default=None, help="encoding of the files (default: the model's data.encoding)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="default cpu")
    args = ap.parse_args(argv)

    from rnn_train.files import atomic_write_bytes
    from rnn_train.model.checkpoint import load_model
    from rnn_train.runtime import resolve_device

    model, vocab, cfg, _ = load_model(args.checkpoint, resolve_device(args.device, "--device"))

    def run(out=None) -> list[Score]:
        return [score_file(model, vocab, cfg.data, f, args.encoding, out) for f in args.files]

    if args.per_char:
        results: list[Score] = []
        header = "file\tindex\tchar\tbits\n".encode()
        # written beside the target and renamed at the end: an error leaves an earlier file intact
        atomic_write_bytes(Path(args.per_char), lambda f: (f.write(header), results.extend(run(f))))
    else:
        results = run()
    for path, result in zip(args.files, results):
        print(result.line(path))
    if len(results) > 1:
        total = Score(*(sum(getattr(r, k) for r in results) for k in ("chars", "scored", "unk", "nats")))
        print(total.line("total"))
    return 0
