"""What the page needs to convert Chinese to pinyin as `predict` does, small enough to embed.

`predict` converts a Chinese prefix with `data.pinyin.hanzi_to_pinyin`: its own rules for
punctuation, Latin words and lines (ported to the page's script), and pypinyin for each run of Han
characters. pypinyin cuts a run into segments by forward maximum matching over its phrase
dictionary (pypinyin.seg.mmseg, strict mode: every segment is a dictionary phrase or a single
character) and converts segment by segment. So a run's pinyin is fixed by

    the phrase list           which segments the cut finds (every phrase, for the prefix set)
    each segment's pinyin     computed here by the project's own converter, in the model's tones

and the page repeats the cut and looks segments up: the same syllables, by construction, for
every character and phrase of the installed pypinyin's dictionaries (0.55.0: 41,623 Han
characters with a reading, 47,111 phrases). What is stored:

    chars       every Han character with a reading, in code point order
    char_syl    the index of its syllable in `syllables`, one uint16 per character (base64)
    phrases     every key of pypinyin's phrase dictionary, "\n"-separated, sorted: the cut needs
                them all (their prefixes, and which are phrases), single characters included
    special     the phrases whose pinyin is not their characters' own readings joined: their
                index in `phrases`, their syllable count and their syllables (base64 uint32,
                uint8, uint16)

About 0.6 MB in a page (tests/test_explore.py prints the figure); only pinyin models carry it.
"""
from __future__ import annotations

import base64
import json

import numpy as np

from rnn_train.data import pinyin
from rnn_train.files import atomic_write_text

TABLE_VERSION = 1  # bump when the layout of the table changes


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def _convert_lines(items: list[str], tones: str) -> list[str]:
    """Each item (a run of Han characters, each with a reading) converted on its own line."""
    lines = pinyin.hanzi_to_pinyin("\n".join(items), tones).split("\n")[:-1]
    if len(lines) != len(items):  # an item without any reading would have collapsed a line
        raise AssertionError("pinyin table: items and converted lines do not line up")
    return lines


def conversion_table(tones: str) -> dict:
    """The tables above for `tones` ("none" or "numbers"), as plain data for the page's JSON."""
    from pypinyin.constants import PHRASES_DICT, PINYIN_DICT

    pinyin.check_tones(tones)
    chars = sorted(chr(cp) for cp in PINYIN_DICT if pinyin._HAN_RUN_RE.fullmatch(chr(cp)))
    char_readings = _convert_lines(chars, tones)
    known = dict(zip(chars, char_readings))
    phrases = sorted(p for p in PHRASES_DICT if "\n" not in p)
    # a segment of a Han run is all Han: only those phrases can need their own reading
    segments = [i for i, p in enumerate(phrases) if len(p) > 1 and pinyin._HAN_RUN_RE.fullmatch(p)]
    readings = _convert_lines([phrases[i] for i in segments], tones)
    syllables = sorted({s for r in char_readings + readings for s in r.split(" ")})
    index = {s: i for i, s in enumerate(syllables)}
    special, counts, special_syl = [], [], []
    for i, reading in zip(segments, readings):
        parts = reading.split(" ")
        if parts != [known[c] for c in phrases[i] if c in known]:
            special.append(i)
            counts.append(len(parts))
            special_syl.extend(index[s] for s in parts)
    return {"tones": tones, "syllables": syllables, "chars": "".join(chars),
            "char_syl": _b64(np.array([index[r] for r in char_readings], np.uint16)),
            "phrases": "\n".join(phrases), "special": _b64(np.array(special, np.uint32)),
            "special_len": _b64(np.array(counts, np.uint8)),
            "special_syl": _b64(np.array(special_syl, np.uint16))}


def cached_table(tones: str) -> dict:
    """`conversion_table(tones)`, kept in the user's cache (rnn_train.kernels.build.cache_root) per
    pypinyin version and converter version: building it converts 88k entries (seconds). A cache
    that cannot be read or written is skipped."""
    from rnn_train.kernels.build import cache_root

    path = cache_root() / "explore" / (f"pinyin-{tones}-pypinyin{pinyin.pypinyin_version()}-"
                                       f"converter{pinyin.CONVERTER_VERSION}-table{TABLE_VERSION}.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    table = conversion_table(tones)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(table, ensure_ascii=False))
    except OSError:
        pass
    return table
