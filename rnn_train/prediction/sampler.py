"""The generation loop: choose a character for every row, feed it back, repeat; stopping rules and
forced line starts; results handed out in chunks so a terminal can show text as it is made.

    state after prefix, logits ──choose──> ids[t] ──(force / stop rules)──> step(ids[t]) ──> logits ...

The model is stepped by a stepper (`stepper.make_stepper`: the C++ kernels, else NumPy; no module
call per character) and characters are picked by `choose.Chooser`. Where nothing forces a
character (no --line-starts) and no filter is set (no --top-k, --top-p), a whole chunk is chosen and
fed back inside the C++ stepper (`KernelStepper.sample`, the same draws as `Chooser.choose`, noise
made from the same random numbers), and
the stopping rules are read off the chunk afterwards: they only end a row, never change its
characters, so the text is the one the step-by-step loop gives. Otherwise each step is choose +
(rules) + step in Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError
from rnn_train.prediction.choose import Chooser

CHUNK = 64  # steps between hand-outs: ~ms of latency on a terminal


@dataclass(frozen=True)
class StopRules:
    """When a sample ends before -k characters. Empty/0 = unused."""

    stop_at: str = ""  # end a sample right after this string appears in what it generated
    max_lines: int = 0  # end a sample right after its N-th newline
    line_starts: tuple[str, ...] = ()  # each new line begins with the next of these; end after the last line
    syllables: bool = False  # stop_at is pinyin converted from Chinese characters: it matches whole
    # syllables only (RuleState; textstream.is_converted_stop)

    def __post_init__(self):
        if self.max_lines < 0:
            raise UserError(f"--max-lines must be >= 0, got {self.max_lines}")
        if any(not s for s in self.line_starts):
            raise UserError("--line-starts has an empty entry (give them as a,b,c)")
        broken = next((s for s in self.line_starts if "\n" in s or "\r" in s), None)
        if broken is not None:  # its part after the break was never forced: the line ended there
            raise UserError(f"--line-starts entry {broken!r} holds a line break: each entry starts one line "
                            f"(give each line its own entry: a,b,c)")

    @property
    def used(self) -> bool:
        return bool(self.stop_at or self.max_lines or self.line_starts)


def _spell(vocab: Vocab, text: str, what: str, given: str | None = None) -> np.ndarray:
    """text -> ids, or a UserError naming the characters the vocab lacks (and `given`, what the
    user typed, when it differs from text, e.g. a syllable without the space added after it)."""
    why = vocab.cannot_spell(text, given)
    if why:
        raise UserError(f"{what} {why}")
    return vocab.encode(text).astype(np.int64)


class RuleState:
    """Per-row bookkeeping of StopRules over a batch: forced characters, newline counts, where each
    row ended. `apply(ids, t)` runs after each choice; it returns True once every row has ended."""

    def __init__(self, rules: StopRules, vocab: Vocab, batch: int, k: int, before: str = ""):
        """`before`: the prefix's last character ("": no prefix, where a sample begins a line as the
        corpus does)."""
        if not isinstance(before, str):  # the bool at_line_start this parameter was: refused, not read as text
            raise TypeError(f"before must be the prefix's last character, got {before!r}")
        self.rules, self.batch = rules, batch
        self.newline = vocab.stoi.get("\n", -1)
        if (rules.max_lines or rules.line_starts) and self.newline < 0:
            raise UserError("--max-lines and --line-starts need a model whose vocab has a newline")
        self.stop = _spell(vocab, rules.stop_at, "--stop-at") if rules.stop_at else None
        self.starts = [_spell(vocab, s, "--line-starts entry", s.rstrip(" ") if s.strip() else None)
                       for s in rules.line_starts]
        self.end = np.full(batch, k)  # [B] index one past each row's last character
        self.ended = np.zeros(batch, bool)
        self.lines = np.zeros(batch, np.int64)  # newlines generated so far
        self._stop_window(rules, vocab, before)
        self.next_start = [0] * batch  # index into `starts` per row
        self.forced: list[list[int]] = [[] for _ in range(batch)]  # characters still to force per row
        self.line_start = np.full(batch, before in ("", "\n"))  # the next character begins a line

    def _stop_window(self, rules: StopRules, vocab: Vocab, before: str) -> None:
        """The ids a row's stop match looks at. A stop converted from Chinese (`rules.syllables`)
        matches whole syllables: where it begins with a letter or digit the character before the
        match must end a syllable (no letter, no digit: "an" of 安 is not the end of "nan"), and the
        space the conversion writes after its last syllable matches any such character (a syllable
        ends a line "guo\n", or comes before a mark "guo."). Elsewhere the stop matches as written."""
        stop = self.stop if self.stop is not None else np.zeros(0, np.int64)
        syllables = rules.syllables and self.stop is not None
        self.any_end = syllables and rules.stop_at.endswith(" ") and len(stop) > 1
        self.any_start = syllables and rules.stop_at[:1].isalnum()
        self.stem = stop[:-1] if self.any_end else stop  # matched exactly
        # [V + 1]: the ids that end a syllable (<unk> among them); the last entry: nothing before the sample.
        # Only where used: a server builds a RuleState per request, and a vocab may hold thousands
        self.ends = np.array([not c.isalnum() for c in vocab.itos] + [True]) if syllables else None
        self.tail = np.full((self.batch, len(stop) + self.any_start), -1)  # the last ids, the oldest first
        if self.any_start:
            self.tail[:, -1] = vocab.stoi.get(before, 0) if before else len(vocab.itos)

    @property
    def forces(self) -> bool:
        """Whether the rules put characters in (line starts); else they only end rows."""
        return bool(self.starts)

    def apply(self, ids: np.ndarray, t: int) -> bool:
        """Force line starts into ids [B] (in place), then mark rows that end at step t."""
        if self.starts:
            self._force(ids, t)
        if self.stop is not None:
            self.tail[:, :-1] = self.tail[:, 1:]
            self.tail[:, -1] = ids
            first = int(self.any_start)
            matched = (self.tail[:, first:first + len(self.stem)] == self.stem).all(axis=1)
            if self.any_end:
                matched &= self.ends[self.tail[:, -1]]
            if self.any_start:
                matched &= self.ends[self.tail[:, 0]]
            self._end_rows(np.flatnonzero(matched), t + 1)
        if self.rules.max_lines or self.starts:
            newline = ids == self.newline
            if self.rules.max_lines:
                self.lines += newline
                self._end_rows(np.flatnonzero(self.lines >= self.rules.max_lines), t + 1)
            self.line_start = newline
        return bool(self.ended.all())

    def _force(self, ids: np.ndarray, t: int) -> None:
        """A row at the start of a line takes the next line start (or ends if none is left); a row
        with forced characters pending gets the next one instead of its choice."""
        for i in np.flatnonzero(self.line_start).tolist():
            if self.next_start[i] < len(self.starts):
                self.forced[i] = self.starts[self.next_start[i]].tolist()
                self.next_start[i] += 1
            else:
                self._end_rows([i], t)  # the last line start's line is complete
        for i, pending in enumerate(self.forced):
            if pending:
                ids[i] = pending.pop(0)

    def _end_rows(self, rows, end: int) -> None:
        for i in rows:
            if not self.ended[i]:
                self.ended[i], self.end[i] = True, end


def sample_chunks(stepper, chooser: Chooser, logits: np.ndarray, k: int,
                  rules: RuleState | None = None) -> Iterator[list[np.ndarray]]:
    """Generate up to k characters per row from `logits` [B, V] (the model's logits after the
    prefix; the chooser applies the temperature) with the stepper's state; yield each chunk as B id
    arrays (a row that has ended yields nothing more)."""
    B = stepper.batch
    current = stepper.logits
    current[:] = logits
    ids = np.empty((CHUNK, B), np.int64)  # [t, B]: ids[t] is a contiguous [B]
    in_kernel = chooser.plain and hasattr(stepper, "sample") and (rules is None or not rules.forces)
    t = 0
    while t < k:
        n = min(CHUNK, k - t)
        done = False
        if in_kernel:  # choose and step n times in C++; the last character of all is not fed back
            stepper.sample(n, min(n, k - t - 1), chooser.keys, t, ids, chooser.options.temperature)
            for j in range(n if rules is not None else 0):
                if rules.apply(ids[j], t + j):
                    done = True
                    break
        else:
            chooser.refill(t, n)
            for j in range(n):
                chooser.choose(current, j, ids[j])
                if rules is not None:
                    done = rules.apply(ids[j], t + j)
                if done:
                    break
                if t + j + 1 < k:
                    current = stepper.step(ids[j])  # one cell step per character; the state carries
        ends = np.minimum(rules.end, t + n) - t if rules is not None else np.full(B, n)
        yield [ids[:max(int(ends[i]), 0), i].copy() for i in range(B)]
        t += n
        if done:
            return
