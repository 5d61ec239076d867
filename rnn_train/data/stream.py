"""Text chunks as arrays of code points: the `letters_only` rule and character counting, chunk by chunk.

Why arrays: the prepare step touches every character twice (once to count, once to encode), and a
corpus may run to gigabytes, so no per-character Python runs on that path. A chunk becomes one
NumPy array of code points: uint8 when the chunk is pure ASCII (the common case; its bytes are its
code points, copied once), else uint32.

Why state: a chunk boundary may fall anywhere, also inside a run of non-letters that `letters_only`
turns into one space, so :class:`LettersOnly` carries what it needs across chunks. Its output is
exactly ``re.sub("[^A-Za-z]+", " ", text).lower().strip()`` of the whole text (tested with tiny
chunks against rnn_train.data.dataset.letters_only).
"""
from __future__ import annotations

import numpy as np

# bincount casts its input to int64: counting in slices of this many keeps that copy small
# (and the 65,536 counts a slice adds up cheap next to the slice).
_COUNT_SLICE = 1 << 18
_SPACE = 32


def code_points(text: str) -> np.ndarray:
    """str -> its code points: uint8 [n] when `text` is ASCII, else uint32 [n]."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class CodePointCounts:
    """Running count of every code point seen, indexed by code point."""

    def __init__(self) -> None:
        self.counts = np.zeros(256, dtype=np.int64)
        self.total = 0

    def add(self, cps: np.ndarray) -> None:
        self.total += len(cps)
        if cps.dtype == np.uint8:
            self.counts[:256] += _count_bytes(cps)
            return
        found = np.bincount(cps)
        if len(found) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(found) - len(self.counts), np.int64)])
        self.counts[:len(found)] += found


def _count_bytes(cps: np.ndarray) -> np.ndarray:
    """Counts [256] of a uint8 array. Read as pairs of bytes (uint16), it has half as many elements
    for bincount to convert and count; each pair's count is then added to both of its bytes."""
    even = len(cps) // 2 * 2
    pairs = np.ascontiguousarray(cps[:even]).view(np.uint16)
    by_pair = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, len(pairs), _COUNT_SLICE):
        by_pair += np.bincount(pairs[start:start + _COUNT_SLICE], minlength=1 << 16)
    by_pair = by_pair.reshape(256, 256)  # [one byte, the other byte], whichever the endianness
    counts = by_pair.sum(axis=0) + by_pair.sum(axis=1)
    if even < len(cps):
        counts[cps[-1]] += 1
    return counts


class LettersOnly:
    """The d2l preprocessing, streamed: lowercase ASCII letters; every run of other characters
    (newlines, digits, non-ASCII letters included) becomes one space; none at the start or end.

    The space of a run is written just before the letter that ends the run, so a run still open
    at the end of the corpus never is: that is the strip at the end."""

    def __init__(self) -> None:
        self.started = False  # a letter has been written
        self.open_run = False  # the last chunk ended inside a run of non-letters after a letter

    def __call__(self, cps: np.ndarray) -> np.ndarray:
        """Code points [n] -> the letters_only text's code points [m], uint8."""
        if not len(cps):
            return np.zeros(0, dtype=np.uint8)
        one = cps.dtype.type
        lower = cps | one(0x20)  # folds A-Z onto a-z; no other character lands in a-z
        letter = (lower - one(ord("a"))) < 26  # unsigned: below "a" wraps round to large
        if not letter.any():
            self.open_run = self.started
            return np.zeros(0, dtype=np.uint8)
        keep = letter.copy()
        keep[:-1] |= letter[1:]  # the non-letter just before a letter stands for its run
        if not self.started:
            keep[:int(np.argmax(letter))] = False  # nothing before the corpus's first letter
        out = np.where(letter, lower, one(_SPACE))[keep].astype(np.uint8)
        if self.open_run and letter[0]:
            out = np.concatenate([np.array([_SPACE], np.uint8), out])
        self.started, self.open_run = True, not letter[-1]
        return out
