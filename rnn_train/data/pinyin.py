"""Chinese characters -> pinyin: the conversion rules, line-aligned pieces, the built-in corpus.

Why pieces: a novel converts in seconds and a large corpus in minutes, so the conversion must be
able to run in parallel worker processes over parts of a file (rnn_train.data.conversion). Each
line converts on its own; only the blank-line rules span lines. So a text is cut at line ends
into pieces, each piece is converted by :func:`convert_piece` into its non-empty lines plus
"was there a gap before / after", and :class:`PieceJoiner` glues the pieces back with the
blank-line rules. :func:`hanzi_to_pinyin` is exactly that with a single piece, so the parallel
conversion and the one-call conversion are the same code and give the same bytes.

Chinese or pinyin? (``kind: pinyin`` only)
    A file counts as Chinese when Han characters make up at least ``CHINESE_HAN_SHARE``
    (a quarter) of its non-whitespace characters. A pinyin file has essentially none; Chinese
    prose has about 80 %, and even Chinese mixed with many Latin words stays far above a
    quarter. A file below the threshold is taken to be pinyin already and is used as is
    (only normalised), whatever ``tones`` says.

Conversion of a Chinese file (:func:`hanzi_to_pinyin`)
    * Each Han character becomes one lowercase syllable from ``pypinyin.lazy_pinyin``; its
      phrase dictionary picks readings of polyphones within each run of Han characters.
      ``tones="none"`` is ``Style.NORMAL`` (``zhong guo``); ``tones="numbers"`` is
      ``Style.TONE3`` with the neutral tone written 5 (``zhong1 guo2``, ``le5``). ü is
      written ``v`` (``nv``, ``lve``). Han characters pypinyin has no reading for are dropped.
    * Syllables are separated by exactly one space; there is no word segmentation.
    * Runs of ASCII letters and digits (full-width forms folded to ASCII) are kept as their
      own space-separated token, lowercased so the vocab stays lowercase (``DNA`` -> ``dna``,
      ``2024`` -> ``2024``). With ``tones="numbers"`` such digits share symbols with tones.
    * Punctuation, mapped as below. A *closing* mark attaches to the token before it (no
      space); an *opening* mark attaches to the token after it. This is the convention of
      ``../shared/corpora/hongloumeng/SOURCE.txt``::

          source                          output  attaches
          ，  、  ､  ,                       ,      closing
          。  ．  ｡  .                       .      closing
          ！  !                              !      closing
          ？  ?                              ?      closing
          ：  :                              :      closing
          ；  ;                              ;      closing
          …  ⋯  (a run of any length)       ...    closing
          “  「  『                          "      opening
          ”  」  』                          "      closing
          ‘                                  '      opening
          ’                                  '      closing
          "  ＂  (straight double quote)     "      alternates on each line: 1st opening,
          '  ＇  (straight single quote)     '      2nd closing, 3rd opening, ...

    * Everything else is dropped: dashes (— － ─ - ~), brackets of all kinds (《》〈〉【】
      〖〗（）()[]{}), ·, _, /, other symbols, kana, Cyrillic, accented Latin letters.
      Whitespace (including the ideographic space U+3000) only separates tokens.
    * One output line per input line that yields any token; indentation is removed; runs of
      blank lines (or lines that yield nothing) collapse to one blank line; no blank line at
      the start or end; the result ends with a newline.

Built-in default corpus (:func:`default_pinyin_corpus`)
    ``kind: pinyin`` with no files trains on the phrase dictionary shipped inside pypinyin
    (``pypinyin.phrases_dict``: about 47 k phrases, mostly 2 and 4 characters), one phrase per
    line in the same syllable format as above. It needs no download. The phrases are put in
    a fixed pseudo-random order (sorted by a salted SHA-256 of the phrase, which no Python or
    platform version changes), so that a contiguous validation split taken at the tail is a
    fair sample rather than the phrases that sort last. It is deterministic for a given
    pypinyin version (0.55.0: 47,111 lines, 587,468 characters, 28 symbols; 731,329
    characters with tone numbers) and builds in a fraction of a second, so it is neither capped
    nor cached as a conversion: big enough to learn syllable structure, small enough for a short CPU run.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from rnn_train.errors import UserError

TONES = ("none", "numbers")

# Share of Han characters among non-whitespace characters from which a file counts as Chinese.
CHINESE_HAN_SHARE = 0.25

# Bump whenever hanzi_to_pinyin's output changes, so that old cache entries stop matching.
CONVERTER_VERSION = 1

# Salt of the default corpus's fixed pseudo-random phrase order.
DEFAULT_CORPUS_SALT = b"rnn-train default pinyin corpus v1\0"

# Characters pypinyin treats as Han (its RE_HANS, minus its private-use entries).
_HAN_CHARS = (
    "\u3007"  # 〇
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B-G and compatibility supplement
)
_HAN_RUN_RE = re.compile(f"[{_HAN_CHARS}]+")
_WHITESPACE_RE = re.compile(r"\s+")

# How a mark glues to its neighbours.
_CLOSING, _OPENING, _ALTERNATING = "closing", "opening", "alternating"

# Punctuation table (see the module docstring); anything not here, not Han, not an ASCII
# letter/digit and not whitespace is dropped.
_MARKS = {
    "，": (",", _CLOSING), "、": (",", _CLOSING), "､": (",", _CLOSING), ",": (",", _CLOSING),
    "。": (".", _CLOSING), "．": (".", _CLOSING), "｡": (".", _CLOSING), ".": (".", _CLOSING),
    "！": ("!", _CLOSING), "!": ("!", _CLOSING),
    "？": ("?", _CLOSING), "?": ("?", _CLOSING),
    "：": (":", _CLOSING), ":": (":", _CLOSING),
    "；": (";", _CLOSING), ";": (";", _CLOSING),
    "“": ('"', _OPENING), "「": ('"', _OPENING), "『": ('"', _OPENING),
    "”": ('"', _CLOSING), "」": ('"', _CLOSING), "』": ('"', _CLOSING),
    "‘": ("'", _OPENING),
    "’": ("'", _CLOSING),
    '"': ('"', _ALTERNATING), "＂": ('"', _ALTERNATING),
    "'": ("'", _ALTERNATING), "＇": ("'", _ALTERNATING),
}
_ELLIPSIS_CHARS = "…⋯"

# Full-width ASCII letters and digits (U+FF10.., U+FF21.., U+FF41..) and their ASCII forms.
_FULLWIDTH_ALNUM = "０-９Ａ-Ｚａ-ｚ"
_FOLD_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF10, 0xFF5B) if chr(c - 0xFEE0).isalnum()}

# What only Chinese text writes: its full-width marks, the ellipsis, full-width letters and digits.
_CHINESE_MARK_RE = re.compile(
    f"[{re.escape(''.join(c for c in _MARKS if not c.isascii()))}{_ELLIPSIS_CHARS}{_FULLWIDTH_ALNUM}]")

_TOKEN_RE = re.compile(
    f"(?P<han>[{_HAN_CHARS}]+)"
    f"|(?P<word>[A-Za-z0-9{_FULLWIDTH_ALNUM}]+)"
    f"|(?P<ellipsis>[{_ELLIPSIS_CHARS}]+)"
    f"|(?P<mark>[{re.escape(''.join(_MARKS))}])"
)


# --------------------------------------------------------------------------- Chinese or pinyin


def han_counts(text: str) -> tuple[int, int]:
    """(Han characters, non-whitespace characters) of `text`. Both are plain counts, so the counts of
    consecutive chunks add up to those of the whole text, wherever it is cut."""
    non_space = len(text) - sum(map(len, _WHITESPACE_RE.findall(text)))
    return sum(map(len, _HAN_RUN_RE.findall(text))), non_space


def is_chinese(han: int, non_space: int) -> bool:
    """The `CHINESE_HAN_SHARE` rule on counts from :func:`han_counts`."""
    return non_space > 0 and han >= CHINESE_HAN_SHARE * non_space


def looks_like_chinese(text: str) -> bool:
    """True when Han characters are at least `CHINESE_HAN_SHARE` of the non-whitespace characters."""
    return is_chinese(*han_counts(text))


def contains_han(text: str) -> bool:
    """True when `text` has at least one Han character (e.g. a prediction prefix typed in Chinese)."""
    return _HAN_RUN_RE.search(text) is not None


def contains_chinese(text: str) -> bool:
    """True when `text` has a Han character or a mark only Chinese text writes (，。“ …, full-width
    letters): a typed text (a prefix) to convert as a line of a Chinese file, even "，" alone."""
    return contains_han(text) or _CHINESE_MARK_RE.search(text) is not None


# --------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class Piece:
    """A converted line-aligned piece of text: its non-empty output lines joined by "\n" with at
    most one blank line between them, and whether lines that yielded nothing came before the first
    output line (`gap_before`) or after the last one (`gap_after`). A piece with no output has
    `body == ""` and `gap_before` set."""

    gap_before: bool
    body: str
    gap_after: bool


def convert_piece(text: str, tones: str = "none") -> Piece:
    """Convert the lines of `text` (split at "\n") on their own; the blank-line rules between pieces
    are :class:`PieceJoiner`'s. A top-level function, so worker processes can run it."""
    check_tones(tones)
    import pypinyin  # here, not at the top: importing its dictionaries costs tens of MB and ~0.3 s

    if tones == "none":
        options = {"style": pypinyin.Style.NORMAL}
    else:
        options = {"style": pypinyin.Style.TONE3, "neutral_tone_with_five": True}
    converted_runs: dict = {}

    def syllables(run: str) -> str:
        """The syllables of one run of Han characters, space-separated ('' if none is known)."""
        found = converted_runs.get(run)
        if found is None:
            # errors=...: a character without a reading yields nothing instead of itself.
            found = " ".join(pypinyin.lazy_pinyin(run, errors=lambda chars: None, **options))
            converted_runs[run] = found
        return found

    out_lines: list = []
    gap_before = False
    for line in text.split("\n"):
        converted = _convert_line(line, syllables)
        if converted:
            out_lines.append(converted)
        elif not out_lines:
            gap_before = True
        elif out_lines[-1]:
            out_lines.append("")  # a blank (or all-dropped) line: keep one paragraph break
    gap_after = bool(out_lines) and not out_lines[-1]
    if gap_after:
        out_lines.pop()
    return Piece(gap_before, "\n".join(out_lines), gap_after)


class PieceJoiner:
    """Glues converted pieces, in order, into the output text: one "\n" between lines, a blank line
    where lines that yielded nothing separated two output lines (also across pieces), none at the
    start or end, and a final "\n" from :meth:`finish`."""

    def __init__(self) -> None:
        self.started = False  # some output line was written
        self.gap = False  # lines that yielded nothing followed the last output line

    def add(self, piece: Piece) -> str:
        """The text that `piece` adds to the output."""
        if not piece.body:
            self.gap = self.started
            return ""
        sep = ("\n\n" if self.gap or piece.gap_before else "\n") if self.started else ""
        self.started, self.gap = True, piece.gap_after
        return sep + piece.body

    def finish(self) -> str:
        return "\n" if self.started else ""


def hanzi_to_pinyin(text: str, tones: str = "none") -> str:
    """Convert Chinese text to pinyin lines, following the rules in the module docstring.

    pypinyin is called once per distinct run of Han characters (its phrase segmentation works
    within a run, so this equals converting whole lines); repeated runs are looked up.
    """
    joiner = PieceJoiner()
    return joiner.add(convert_piece(text, tones)) + joiner.finish()


def _convert_line(line: str, syllables) -> str:
    """One line of Chinese text as pinyin tokens glued by the punctuation rules."""
    pieces: list = []
    glue_to_next = False  # the previous token was an opening mark
    quote_open = {'"': False, "'": False}  # straight quotes alternate within the line
    for match in _TOKEN_RE.finditer(line):
        kind, token = match.lastgroup, match.group()
        if kind == "han":
            out, glue = syllables(token), None
            if not out:
                continue
        elif kind == "word":
            out, glue = token.translate(_FOLD_FULLWIDTH).lower(), None
        elif kind == "ellipsis":
            out, glue = "...", _CLOSING
        else:
            out, glue = _MARKS[token]
            if glue == _ALTERNATING:
                glue = _CLOSING if quote_open[out] else _OPENING
                quote_open[out] = not quote_open[out]
        if pieces and not glue_to_next and glue != _CLOSING:
            pieces.append(" ")
        pieces.append(out)
        glue_to_next = glue == _OPENING
    return "".join(pieces)


# --------------------------------------------------------------------------- corpora


def default_pinyin_corpus(tones: str = "none") -> str:
    """The built-in corpus: pypinyin's phrase dictionary, one phrase per line, in a fixed order.

    Syllables follow the conversion rules (lowercase, ü as v, one space; with
    ``tones="numbers"`` TONE3 digits and 5 for the neutral tone). Where the dictionary lists
    several readings of a character in a phrase, the first is used.
    """
    check_tones(tones)
    from pypinyin.contrib.tone_convert import to_normal, to_tone3
    from pypinyin.phrases_dict import phrases_dict

    def convert(reading: str) -> str:
        """One tone-marked syllable in the requested style."""
        if tones == "none":
            return to_normal(reading, v_to_u=False)
        return to_tone3(reading, v_to_u=False, neutral_tone_with_five=True)

    styled: dict = {}  # ~1,250 distinct tone-marked syllables, converted once each
    lines = []
    for phrase in sorted(phrases_dict, key=_shuffle_key):
        syllables = []
        for readings in phrases_dict[phrase]:
            reading = readings[0]
            if reading not in styled:
                styled[reading] = convert(reading)
            syllables.append(styled[reading])
        lines.append(" ".join(syllables))
    return "\n".join(lines) + "\n"


def _shuffle_key(phrase: str) -> tuple:
    """Sort key giving a fixed pseudo-random order, independent of Python's `random` module."""
    return hashlib.sha256(DEFAULT_CORPUS_SALT + phrase.encode("utf-8")).digest(), phrase


def pypinyin_version() -> str:
    """The installed pypinyin's version: part of every cache key of converted text. Read from the
    distribution's metadata: importing pypinyin itself (its dictionaries) costs ~0.45 s, paid by
    every command that only checks a prepared corpus's key."""
    from importlib import metadata

    try:
        return metadata.version("pypinyin")
    except metadata.PackageNotFoundError:  # not installed as a distribution (vendored, a source tree)
        import pypinyin

        return pypinyin.__version__


def check_tones(tones: str) -> None:
    """Reject a tones setting other than 'none' or 'numbers'."""
    if tones not in TONES:
        raise UserError(f"unknown pinyin tones {tones!r}: expected one of {', '.join(TONES)}")

