"""`rnn-train score`: how well a model predicts a text: mean cross-entropy, perplexity, bits per character.

    rnn-train score --checkpoint runs/pinyin_gru mytext.txt other.txt
    rnn-train score --checkpoint runs/pinyin_gru mytext.txt --per-char surprisal.tsv
    rnn-train score --checkpoint runs/pinyin_gru mytext.txt --exact
    some-command | rnn-train score --checkpoint runs/pinyin_gru -

Each file is read in bounded pieces as the model's corpus was prepared (`textstream.model_text`),
so a text of any length is scored with constant memory. The first character is context only;
every later character is scored given what came before it. Characters outside the model's vocab
are scored as `<unk>`, as in training, and their share is reported.

`--exact` runs the whole file as one stream, the state carried from a zero state at its start:
every character is scored given ALL before it, which is what the validation loss measures (given
the validation text of a run whose validation reads one stream, data.batch_size 1, the loss
equals the run's validation loss; tests/test_score.py). One stream is one sequential chain of
steps, and a step of one row uses a core poorly (33.8k chars/s for a GRU-256 on the machine of
issue 21).

The default cuts the file into segments of SEGMENT scored characters and scores ROWS of them at
once as one batch, each row starting from a zero state WARM_UP characters before its segment
(read, not scored; the file's first segment starts at the file's start, as --exact does). A
character is then scored given at least WARM_UP and up to SEGMENT + WARM_UP characters before
it. A character-level RNN's state forgets faster than that: the difference from --exact, measured
on three corpora by benchmarks/score_bench.py, is in docs/prediction.md (well below the 0.001 bits
per character the issue allows). The batch runs on the C++ generation steps where they are built
(prediction/kernel_stepper.py), else on the torch module; a segment's result does not depend on
the other rows of its batch on the C++ path.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from rnn_train.cli import ArgumentParser, not_empty, signals_handled
from rnn_train.files import output_arg
from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError
from rnn_train.model.charrnn import CharRNN, check_vocab
from rnn_train.training.schedule import perplexity, ppl_text

WINDOW = 4096  # characters per module call: bounds memory ([1, WINDOW, V] logits), not the result
SEGMENT = 4096  # characters scored per row of a batch (the default, not --exact)
WARM_UP = 256  # characters each row reads before its segment, unscored
ROWS = 64  # segments scored together
TORCH_STEPS = 256  # time steps per module call where the batch runs on the torch module

STDIN = "-"  # the FILE that is standard input
RowWriter = Callable[[str, np.ndarray], None]  # (characters, surprisal in bits) of a window


@dataclass
class Score:
    chars: int = 0  # characters of the text after preparation
    scored: int = 0  # characters predicted (all but the first)
    unk: int = 0  # characters outside the vocab
    nats: float = 0.0  # summed cross-entropy of the scored characters

    @property
    def loss(self) -> float:
        """Mean cross-entropy in nats; NaN for a text with nothing scored (one character, or none)."""
        return self.nats / self.scored if self.scored else math.nan

    def line(self, name: str) -> str:
        bpc = self.loss / math.log(2)
        return (f"{name}: {self.chars:,} chars ({self.scored:,} scored, {self.unk / max(self.chars, 1):.2%} <unk>) | "
                f"loss {self.loss:.4f} | ppl {ppl_text(perplexity(self.loss))} | {bpc:.3f} bits/char")


@torch.no_grad()
def score_pieces(model: CharRNN, vocab: Vocab, pieces: Iterable[str], rows: RowWriter | None = None,
                 exact: bool = False, segment: int = SEGMENT, warm_up: int = WARM_UP, batch: int = ROWS) -> Score:
    """Score a text given as pieces: as one stream with `exact`, else in segments scored `batch` at
    a time (see the module docstring). `rows(chars, bits)` receives every character with its
    surprisal in bits (NaN for the first, which is only context), in the text's order."""
    from rnn_train.prediction.generate import eval_mode

    if segment < 1 or warm_up < 0 or batch < 1:
        raise ValueError("segment and batch must be >= 1 and warm_up >= 0")
    check_vocab(model, vocab)
    with eval_mode(model):
        if exact:
            return _score(model, vocab, pieces, rows)
        return _score_segments(model, vocab, pieces, rows, segment, warm_up, batch)


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


def _score_segments(model: CharRNN, vocab: Vocab, pieces: Iterable[str], rows: RowWriter | None, segment: int,
                    warm_up: int, batch: int) -> Score:
    """The batched default. Positions are the text's: the segment that scores positions [a, b) reads
    positions from max(0, a - 1 - warm_up) to b - 2, with a zero state at its first."""
    run = _segment_runner(model)
    score, a = Score(), 1  # a: the first position not scored yet
    ids_parts: list[np.ndarray] = []
    char_parts: list[str] = []
    start, held = 0, 0  # the held text (ids_parts / char_parts) covers positions [start, start + held)

    def cut(count: int) -> None:
        """Score `count` segments from position a (all full ones, but the last of the text)."""
        nonlocal a, start, held
        ids, chars = np.concatenate(ids_parts), "".join(char_parts)
        end = start + held
        spans = [(s, min(s + segment, end)) for s in range(a, min(a + count * segment, end), segment)]
        first = [max(0, s - 1 - warm_up) for s, _ in spans]  # each row's first input position
        T = max(b - 1 - f for (_, b), f in zip(spans, first))
        inputs = np.zeros((len(spans), T), np.int64)
        targets = np.full((len(spans), T), -1, np.int64)
        for r, ((s, b), f) in enumerate(zip(spans, first)):
            inputs[r, :b - 1 - f] = ids[f - start:b - 1 - start]
            targets[r, s - 1 - f:b - 1 - f] = ids[s - start:b - start]
        nll = run(inputs, targets)  # [R, T] nats, NaN where no target
        for r, ((s, b), f) in enumerate(zip(spans, first)):
            nats = nll[r, s - 1 - f:b - 1 - f]
            score.nats += float(nats.sum())
            score.scored += b - s
            if rows is not None:
                rows(chars[s - start:b - start], nats / math.log(2))
        a = spans[-1][1]
        keep = max(0, a - 1 - warm_up) - start  # drop what no later segment reads
        ids_parts[:] = [ids[keep:]]
        char_parts[:] = [chars[keep:]]
        start, held = start + keep, held - keep

    for ids, chars in _windows(vocab, pieces):
        if score.chars == 0 and rows is not None:
            rows(chars[:1], np.array([math.nan]))
        score.chars += len(ids)
        score.unk += int(np.count_nonzero(ids == 0))
        ids_parts.append(ids)
        char_parts.append(chars)
        held += len(ids)
        while start + held >= a + batch * segment:  # a full batch of full segments
            cut(batch)
    if start + held > a:
        cut(batch)
    return score


def _segment_runner(model: CharRNN) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(inputs [R, T], targets [R, T] with -1 = none) -> nats [R, T] (NaN where no target), every
    row from a zero state: on the C++ generation steps where they run this model, else the module."""
    from rnn_train.prediction import kernel_stepper

    if model.decoder.weight.device.type == "cpu" and kernel_stepper.supports(model):
        steppers: dict[int, kernel_stepper.KernelStepper] = {}

        def run_cpp(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
            R = len(inputs)
            if R not in steppers:  # ROWS, and the size of the last batch
                steppers[R] = kernel_stepper.KernelStepper(model, R, mask_unk=False)
            stepper = steppers[R]
            stepper.load_state(model.begin_state(1))
            return stepper.score(inputs, targets)

        return run_cpp

    def run_torch(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        device = model.decoder.weight.device
        x = torch.as_tensor(inputs, device=device)
        y = torch.as_tensor(targets, device=device)
        out, state = [], None
        for t in range(0, x.shape[1], TORCH_STEPS):
            logits, state = model(x[:, t:t + TORCH_STEPS], state)  # [R, t, V]
            part = y[:, t:t + TORCH_STEPS]
            nll = F.cross_entropy(logits.flatten(0, 1), part.flatten().clamp(min=0), reduction="none")
            out.append(nll.view(part.shape).double().masked_fill(part < 0, math.nan))
        return torch.cat(out, dim=1).cpu().numpy()

    return run_torch


def _windows(vocab: Vocab, pieces: Iterable[str]) -> Iterator[tuple[np.ndarray, str]]:
    """Pieces of text -> (ids int64, characters) windows of at most WINDOW characters."""
    for piece in pieces:
        for start in range(0, len(piece), WINDOW):
            chars = piece[start:start + WINDOW]
            yield vocab.encode(chars).astype(np.int64), chars


_TSV_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def _escape(c: str) -> str:
    """One character as a TSV field: tab, newline, CR and backslash written as escapes, and every other
    character that some readers take for a line break (str.splitlines: \\v, \\f, \\x1c-\\x1e, \\x85,
    \\u2028, \\u2029) as a \\xNN / \\uNNNN escape, so that each row stays one line for every reader."""
    if c in _TSV_ESCAPES:
        return _TSV_ESCAPES[c]
    return c.encode("unicode_escape").decode("ascii") if c.splitlines() != [c] else c


def score_file(model: CharRNN, vocab: Vocab, data_cfg, path: str, encoding: str | None = None,
               out=None, exact: bool = False, name: str | None = None) -> Score:
    """Score one file; with `out` (a binary file) write `file<TAB>index<TAB>char<TAB>bits` rows (the
    file's `name`, by default its path, and the character escaped as `_escape` does)."""
    from rnn_train.prediction.textstream import model_text, nothing_read

    index = [0]
    name = "".join(map(_escape, str(path if name is None else name)))  # a tab or a newline in a name, as in the text

    def rows(chars: str, bits: np.ndarray) -> None:
        lines = [f"{name}\t{index[0] + i}\t{_escape(c)}\t{'' if math.isnan(b) else f'{b:.4f}'}\n"
                 for i, (c, b) in enumerate(zip(chars, bits.tolist()))]
        out.write("".join(lines).encode("utf-8", "surrogateescape"))  # a file name's bytes as they are
        index[0] += len(chars)

    result = score_pieces(model, vocab, model_text(path, data_cfg, encoding), rows if out is not None else None, exact)
    if result.chars == 0:
        raise nothing_read(path, data_cfg, "score")
    if result.scored == 0:
        raise UserError(f"{path} has a single character as the model reads it (letters only, or converted to "
                        f"pinyin, where its config says so): nothing to score (the first is only context)")
    return result


@contextlib.contextmanager
def _spooled_stdin(files: list[str]) -> Iterator[str | None]:
    """Inside, standard input copied to a temporary file, where FILE `-` asks for it (None where
    not): a file is read twice (whether it is Chinese, for a pinyin model, then its text) and a pipe
    once. The copy is removed at the end, also after Ctrl-C, SIGTERM or SIGHUP (a closed terminal)."""
    asked = files.count(STDIN)
    if asked > 1:
        raise UserError(f"- (standard input) is given {asked} times: it can be read once")
    if not asked:
        yield None
        return
    if sys.stdin is None:  # started with standard input closed (<&-)
        raise UserError("- asks for standard input, which is closed")
    fd, path = tempfile.mkstemp(prefix="rnn-train-score-", suffix=".txt")
    with signals_handled(_exit, signal.SIGTERM, signal.SIGHUP):  # so that the copy is removed (finally)
        try:
            with os.fdopen(fd, "wb") as f:
                while block := sys.stdin.buffer.read1(1 << 20):  # b"" at the first end of input: one Ctrl-D
                    try:
                        f.write(block)
                    except OSError as e:
                        raise UserError(f"cannot copy standard input to a temporary file in {Path(path).parent} "
                                        f"({e.strerror or e}); set TMPDIR to a directory with room") from None
            yield path
        finally:
            os.unlink(path)


def _exit(signum, frame):
    """A signal's end of the process, with its default action's status (128 + the signal), as an
    exception: `finally` clauses run on the way out."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None, prog: str = "rnn-train score") -> int:
    ap = ArgumentParser(prog=prog, description="Cross-entropy, perplexity and bits per character of texts "
                                               "under a model (state carried, any length).")
    ap.add_argument("files", nargs="+", metavar="FILE",
                    help="text files, each scored from a zero state; - is standard input")
    ap.add_argument("--checkpoint", required=True, help="a .pt file or a run directory (uses its best.pt)")
    ap.add_argument("--per-char", metavar="OUT.tsv", type=output_arg,
                    help="write every character with its surprisal in bits (file, index, char, bits; the "
                         "first character of a file has none)")
    ap.add_argument("--encoding", default=None, type=not_empty,
                    help="encoding of the files (default: the model's data.encoding)")
    ap.add_argument("--exact", action="store_true",
                    help="score each file as one stream, every character given all before it (the validation "
                         "loss's way; slower: one row at a time). Default: segments of "
                         f"{SEGMENT} characters scored {ROWS} at a time, each after {WARM_UP} characters of context")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="default cpu")
    args = ap.parse_intermixed_args(argv)  # files may come before or after options

    from rnn_train.files import atomic_write_bytes, refuse_replacing, starts_with
    from rnn_train.model.checkpoint import load_model, resolve_checkpoint
    from rnn_train.runtime import resolve_device

    header = "file\tindex\tchar\tbits\n".encode()
    checkpoint = resolve_checkpoint(args.checkpoint)
    if args.per_char:
        refuse_replacing(args.per_char, "--per-char", reads=(checkpoint, *(f for f in args.files if f != STDIN)),
                         own=starts_with(header), kind="an earlier --per-char table")
    model, vocab, cfg, _ = load_model(checkpoint, resolve_device(args.device, "--device"))

    def one(f: str, out) -> Score:
        if f != STDIN:
            return score_file(model, vocab, cfg.data, f, args.encoding, out, args.exact)
        try:  # the copy is read under its own name; the rows say "-", the messages "standard input"
            return score_file(model, vocab, cfg.data, stdin, args.encoding, out, args.exact, name=STDIN)
        except UserError as e:
            raise UserError(str(e).replace(stdin, "standard input")) from None

    def run(out=None) -> list[Score]:
        return [one(f, out) for f in args.files]

    with _spooled_stdin(args.files) as stdin:
        if args.per_char:
            results: list[Score] = []
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
