"""Character vocabulary: deterministic ids, `<unk>` at 0, vectorised encoding.

Why deterministic: a checkpoint stores the vocab as a plain list of characters and prediction uses
that list, never a vocab rebuilt from a corpus that may have changed. Order is by frequency (most
common first), ties broken by code point, so the same text always gives the same ids.

Why vectorised: corpora run to millions of characters. The text becomes an array of code points
(one `str.encode` call), ids come from a lookup table indexed by code point, and the result is
stored in the smallest integer dtype that holds the vocab (uint8 / uint16 / int32).
"""
from __future__ import annotations

import unicodedata
from typing import Iterable

import numpy as np

from rnn_train.errors import UserError, lone_surrogate

UNK = "<unk>"


def _code_points(text: str) -> np.ndarray:
    """str -> uint32 array of code points, without a Python loop over characters."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def smallest_dtype(size: int) -> np.dtype:
    """Smallest unsigned/int dtype that holds ids 0..size-1."""
    if size <= 1 << 8:
        return np.dtype(np.uint8)
    if size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def char_shown(c: str) -> str:
    """A character as messages and listings name it: repr'd (which escapes a tab, a control or a
    format character), with its code point where it is a combining mark, which repr leaves as it is
    and which then joins the quote before it ('\u0301' showed as "'́'")."""
    if unicodedata.category(c)[0] == "M":
        return f"{c!r} (U+{ord(c):04X})"
    return repr(c)


class Vocab:
    """id <-> character. `itos[0]` is always `<unk>`; every other entry is one character."""

    def __init__(self, itos: Iterable[str]):
        try:  # a damaged checkpoint's: a number, None, a string, a tensor
            if isinstance(itos, (str, bytes)):
                raise TypeError
            itos = list(itos)
        except TypeError:
            raise UserError(f"vocab must be a list of characters, not {type(itos).__name__}") from None
        if not itos or itos[0] != UNK:
            raise UserError(f"vocab must start with {UNK!r}")
        if any(not isinstance(c, str) or len(c) != 1 for c in itos[1:]):
            raise UserError("vocab entries after <unk> must be single characters")
        held = lone_surrogate("".join(itos[1:]))  # no text holds one: UTF-32 cannot encode it
        if held:
            raise UserError(f"vocab holds {held} after <unk>, which is no character of any text")
        if len(set(itos)) != len(itos):
            raise UserError("vocab has duplicate entries")
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(itos)}
        self.dtype = smallest_dtype(len(itos))
        self._chars = np.array(itos, dtype=object)  # id -> character, for decode's gather
        cps = _code_points("".join(itos[1:]))
        # id -> code point, for decode's fast path; <unk> gets a lone surrogate, which UTF-32 cannot
        # hold, so ids with <unk> among them take the join
        self._id_code_points = np.concatenate(([0xD800], cps)).astype("<u4")
        # Lookup table code point -> id; code points beyond it (or absent) map to 0 = <unk>.
        self._table = np.zeros(int(cps.max()) + 1 if len(cps) else 1, dtype=self.dtype)
        self._table[cps] = np.arange(1, len(itos), dtype=self.dtype)
        # For uint8 ids: the same table over the 256 byte values, as `bytes.translate` takes it.
        self._byte_table = b""
        if self.dtype == np.uint8:
            by_byte = np.zeros(256, dtype=np.uint8)
            by_byte[:min(256, len(self._table))] = self._table[:256]
            self._byte_table = by_byte.tobytes()

    @classmethod
    def build(cls, text: str, min_freq: int = 1, max_size: int = 0) -> "Vocab":
        """Characters of `text` by descending count, ties by code point; rare ones (< min_freq) and
        those beyond `max_size` (excluding <unk>) are left out and will encode as <unk>."""
        return cls.from_counts(np.bincount(_code_points(text)), min_freq, max_size)

    @classmethod
    def from_counts(cls, counts: np.ndarray, min_freq: int = 1, max_size: int = 0) -> "Vocab":
        """The vocab of a corpus given how often each code point occurs in it (`counts[cp]`), so that
        a corpus counted chunk by chunk gets the same vocab as :meth:`build` on the whole text."""
        cps = np.flatnonzero(counts)  # sorted by code point
        order = np.lexsort((cps, -counts[cps]))  # primary: -count, secondary: code point
        cps = cps[order]
        cps = cps[counts[cps] >= min_freq]
        if max_size:
            cps = cps[:max_size]
        return cls([UNK] + [chr(c) for c in cps.tolist()])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, ch: str) -> bool:
        return ch in self.stoi and ch != UNK

    def encode(self, text: str) -> np.ndarray:
        """text -> ids [len(text)] in `self.dtype`; unknown characters become 0 (<unk>)."""
        return self.encode_code_points(_code_points(text))

    def encode_code_points(self, cps: np.ndarray) -> np.ndarray:
        """Code points [n] (any unsigned dtype) -> ids [n] in `self.dtype`; unknown ones become 0.

        ASCII code points (uint8) into a vocab of at most 256 ids take `bytes.translate`, one C
        pass without the int64 index copy that NumPy's fancy indexing makes."""
        if cps.dtype == np.uint8 and self.dtype == np.uint8:
            return np.frombuffer(cps.tobytes().translate(self._byte_table), dtype=np.uint8)
        inside = cps < len(self._table)
        if inside.all():
            return self._table[cps]
        ids = np.zeros(len(cps), dtype=self.dtype)
        ids[inside] = self._table[cps[inside]]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ids. One NumPy gather of code points and one UTF-32 decode, not a Python step
        per character: the sampler decodes every chunk of every sample (11% of `--num-samples 32`'s
        time with a step per character; a join of the gathered characters takes 2.4x the decode)."""
        ids = ids if isinstance(ids, np.ndarray) else np.fromiter(ids, dtype=np.int64)
        try:
            return self._id_code_points[ids].tobytes().decode("utf-32-le")
        except UnicodeDecodeError:  # <unk> among the ids
            return "".join(self._chars[ids])

    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of `text` that are not in the vocab, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self))

    def unknown_shown(self, text: str, limit: int = 10) -> str:
        """The characters of `text` that are not in the vocab as a message names them: the first
        `limit` repr'd (a tab or a control character must be visible), ", ..." if there are more;
        "" where the vocab spells all of `text`."""
        missing = self.unknown_chars(text)
        shown = ", ".join(map(char_shown, missing[:limit])) + (", ..." if len(missing) > limit else "")
        for form, how in (("NFC", "precomposed"), ("NFD", "as a letter and a combining mark")):
            other = unicodedata.normalize(form, text)  # an accent typed the other way than the corpus wrote it
            if missing and other != text and not self.unknown_chars(other):
                return f"{shown}; the corpus writes such accents {how}: the text in Unicode {form} can be spelled"
        return shown

    def cannot_spell(self, text: str, given: str | None = None) -> str:
        """Why the vocab cannot spell `text` ("'Xyz' cannot be spelled with the model's vocab (no 'X')",
        quoting `given`, what the user typed, where it differs from text), or "" where it can."""
        shown = self.unknown_shown(text)
        quoted = given if given is not None else text
        return f"{quoted!r} cannot be spelled with the model's vocab (no {shown})" if shown else ""

    def to_list(self) -> list[str]:
        """Plain data for checkpoints and JSON."""
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: list[str]) -> "Vocab":
        return cls(itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} symbols)"
