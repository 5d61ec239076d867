"""Corpus loading: file(s) in, one normalised string out.

Why this module exists: every later stage (vocab, encoding, batching) assumes a clean
string, so all the messy parts of real text files live here and nowhere else. That means
decoding with a chosen encoding (a GBK file read as UTF-8 gives a one-line error naming the
byte offset, not a traceback), stripping a BOM, making line ends uniform, and, for
``kind: pinyin``, turning Chinese characters into a pinyin character stream the model can
learn from. The trainer calls :func:`load_corpus`; the vocab is built afterwards, elsewhere.

Normalisation (every file, both kinds)
    A leading BOM (U+FEFF) is removed; CRLF and lone CR become LF. Nothing else changes for
    ``kind: text``.

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

Cache
    Converting takes seconds for a novel, so :func:`load_corpus` keeps the result in
    ``cache_dir`` (the pipeline passes ``data/cache``). The key is the SHA-256 of the
    normalised source text, the tones, the pypinyin version and ``CONVERTER_VERSION``
    (bump it whenever this module's output changes). Entries are written atomically (temporary
    file + ``os.replace``) with a checksum header; an entry that cannot be read or fails
    its checksum is ignored and rebuilt. A cache that cannot be written only warns.

Built-in default corpus (:func:`default_pinyin_corpus`)
    ``kind: pinyin`` with no files trains on the phrase dictionary shipped inside pypinyin
    (``pypinyin.phrases_dict``: about 47 k phrases, mostly 2 and 4 characters), one phrase per
    line in the same syllable format as above. It needs no download. The phrases are put in
    a fixed pseudo-random order (sorted by a salted SHA-256 of the phrase, which no Python or
    platform version changes), so that a contiguous validation split taken at the tail is a
    fair sample rather than the phrases that sort last. It is deterministic for a given
    pypinyin version (0.55.0: 47,111 lines, 587,468 characters, 28 symbols; 731,329
    characters with tone numbers) and builds in about 0.1 s, so it is neither capped nor
    cached: big enough to learn syllable structure, small enough for a short CPU run.
"""
from __future__ import annotations

import codecs
import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Optional, Union

import pypinyin
from pypinyin import Style

from rnn_train.errors import UserError
from rnn_train.files import atomic_write_text

PathLike = Union[str, "os.PathLike[str]"]

KINDS = ("text", "pinyin")
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

_TOKEN_RE = re.compile(
    f"(?P<han>[{_HAN_CHARS}]+)"
    f"|(?P<word>[A-Za-z0-9{_FULLWIDTH_ALNUM}]+)"
    f"|(?P<ellipsis>[{_ELLIPSIS_CHARS}]+)"
    f"|(?P<mark>[{re.escape(''.join(_MARKS))}])"
)

_CACHE_MAGIC = "rnn-train pinyin cache sha256="


# --------------------------------------------------------------------------- reading


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
    """Read a text file as `encoding`, strip a leading BOM and turn CRLF / lone CR into LF.

    Every failure a user can fix becomes a one-line `UserError` naming the file: missing,
    a directory, unreadable, an unknown encoding, or a byte that is not valid in `encoding`
    (with its offset, so the user can look at it).
    """
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"unknown text encoding {encoding!r} for {path} (e.g. utf-8, gbk)") from None
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"corpus file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a corpus file") from None
    except PermissionError:
        raise UserError(f"cannot read corpus file {path}: permission denied") from None
    except OSError as exc:
        raise UserError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        hint = "e.g. gbk" if codecs.lookup(encoding).name == "utf-8" else "e.g. utf-8"
        raise UserError(
            f"{path}: byte 0x{exc.object[exc.start]:02x} at offset {exc.start} "
            f"is not valid {encoding} (set data.encoding, {hint})"
        ) from None
    except LookupError:  # a codec that exists but does not decode bytes to text, e.g. 'hex'
        raise UserError(f"{encoding!r} is not a text encoding (reading {path})") from None
    return normalise_text(text)


def normalise_text(text: str) -> str:
    """Strip one leading BOM (U+FEFF) and make every line end a single LF."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------- pinyin


def looks_like_chinese(text: str) -> bool:
    """True when Han characters are at least `CHINESE_HAN_SHARE` of the non-whitespace characters."""
    non_space = len(text) - sum(map(len, _WHITESPACE_RE.findall(text)))
    if non_space == 0:
        return False
    han = sum(map(len, _HAN_RUN_RE.findall(text)))
    return han >= CHINESE_HAN_SHARE * non_space


def contains_han(text: str) -> bool:
    """True when `text` has at least one Han character (e.g. a prediction prefix typed in Chinese)."""
    return _HAN_RUN_RE.search(text) is not None


def hanzi_to_pinyin(text: str, tones: str = "none") -> str:
    """Convert Chinese text to pinyin lines, following the rules in the module docstring.

    pypinyin is called once per distinct run of Han characters (its phrase segmentation works
    within a run, so this equals converting whole lines); repeated runs are looked up.
    """
    _check_tones(tones)
    if tones == "none":
        options = {"style": Style.NORMAL}
    else:
        options = {"style": Style.TONE3, "neutral_tone_with_five": True}
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
    for line in text.split("\n"):
        converted = _convert_line(line, syllables)
        if converted:
            out_lines.append(converted)
        elif out_lines and out_lines[-1]:
            out_lines.append("")  # a blank (or all-dropped) line: keep one paragraph break
    if out_lines and not out_lines[-1]:
        out_lines.pop()
    return "\n".join(out_lines) + "\n" if out_lines else ""


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


# --------------------------------------------------------------------------- cache


def _cache_path(cache_dir: PathLike, text: str, tones: str) -> Path:
    """Where the conversion of `text` with `tones` is cached (the name is the cache key)."""
    key = hashlib.sha256()
    key.update(f"converter {CONVERTER_VERSION}\0pypinyin {pypinyin.__version__}\0tones {tones}\0".encode())
    key.update(text.encode("utf-8"))
    return Path(cache_dir) / f"pinyin-{tones}-{key.hexdigest()}.txt"


def _read_cache(path: Path) -> Optional[str]:
    """The cached text, or None when the entry is missing, unreadable or fails its checksum."""
    try:
        header, body = path.read_bytes().decode("utf-8").split("\n", 1)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if header != _CACHE_MAGIC + hashlib.sha256(body.encode("utf-8")).hexdigest():
        return None
    return body


def _write_cache(path: Path, body: str) -> None:
    """Write an entry atomically with its checksum header; a cache that cannot be written only warns."""
    try:
        atomic_write_text(path, _CACHE_MAGIC + hashlib.sha256(body.encode("utf-8")).hexdigest() + "\n" + body)
    except OSError as exc:
        warnings.warn(f"could not write pinyin cache {path}: {exc}", stacklevel=3)


def cached_hanzi_to_pinyin(text: str, tones: str = "none", cache_dir: Optional[PathLike] = None) -> str:
    """`hanzi_to_pinyin(text, tones)`, reusing (or filling) an entry in `cache_dir` when given."""
    if cache_dir is None:
        return hanzi_to_pinyin(text, tones)
    path = _cache_path(cache_dir, text, tones)
    cached = _read_cache(path)
    if cached is not None:
        return cached
    converted = hanzi_to_pinyin(text, tones)
    _write_cache(path, converted)
    return converted


# --------------------------------------------------------------------------- corpora


def default_pinyin_corpus(tones: str = "none") -> str:
    """The built-in corpus: pypinyin's phrase dictionary, one phrase per line, in a fixed order.

    Syllables follow the conversion rules (lowercase, ü as v, one space; with
    ``tones="numbers"`` TONE3 digits and 5 for the neutral tone). Where the dictionary lists
    several readings of a character in a phrase, the first is used.
    """
    _check_tones(tones)
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


def load_corpus(
    paths: Iterable[PathLike],
    kind: str,
    encoding: str = "utf-8",
    tones: str = "none",
    cache_dir: Optional[PathLike] = None,
) -> str:
    """Read the corpus file(s) of one run and return a single normalised string.

    Each file is read with `encoding` and normalised; with ``kind="pinyin"`` a file in
    Chinese characters is converted to pinyin (cached in `cache_dir` when given) and a file
    already in pinyin is used as is. Files are joined with "\\n". No files with
    ``kind="pinyin"`` means the built-in :func:`default_pinyin_corpus`. A single path is
    accepted in place of a list.
    """
    if kind not in KINDS:
        raise UserError(f"unknown corpus kind {kind!r}: expected one of {', '.join(KINDS)}")
    _check_tones(tones)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        if kind == "pinyin":
            return default_pinyin_corpus(tones)
        raise UserError("no corpus file given: kind 'text' needs at least one file "
                        "(only kind 'pinyin' has a built-in default corpus)")
    parts = []
    for path in paths:
        text = read_text(path, encoding)
        if not text.strip():
            raise UserError(f"corpus file {path} is empty (or only whitespace)")
        if kind == "pinyin" and looks_like_chinese(text):
            text = cached_hanzi_to_pinyin(text, tones, cache_dir)
            if not text.strip():
                raise UserError(f"corpus file {path}: no Han character in it has a known pinyin reading")
        parts.append(text)
    return "\n".join(parts)


def _check_tones(tones: str) -> None:
    """Reject a tones setting other than 'none' or 'numbers'."""
    if tones not in TONES:
        raise UserError(f"unknown pinyin tones {tones!r}: expected one of {', '.join(TONES)}")
