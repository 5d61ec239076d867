"""Corpus text: file(s) in, a stream of normalised text chunks out, never the whole corpus at once.

Why this module exists: every later stage (counting, encoding, batching) assumes clean text, so
all the messy parts of real text files live here and nowhere else: decoding with a chosen encoding
(a GBK file read as UTF-8 gives a one-line error naming the byte offset, not a traceback),
stripping a BOM, making line ends uniform, refusing binary files, and, for ``kind: pinyin``,
turning Chinese characters into pinyin (rules in rnn_train.data.pinyin, cached and parallel in
rnn_train.data.conversion). A corpus may be larger than memory, so text flows as chunks of at most
`CHUNK_BYTES` bytes of a file each (:func:`file_chunks`, :func:`corpus_chunks`); only small
things (:func:`read_text`, :func:`load_corpus`) join them into one string.

Normalisation (every file, both kinds)
    A leading BOM (U+FEFF) is removed; CRLF and lone CR become LF, also when a CRLF is split
    between two chunks. Nothing else changes for ``kind: text``. A NUL character means a binary
    file, which is an error naming it; so is a file that is empty or only whitespace.

The corpus
    The files of `data.paths` (see rnn_train.data.sources for directories and globs), each
    normalised, a Chinese file converted for ``kind: pinyin``, joined with "\\n". ``kind: pinyin``
    with no files is the built-in corpus (rnn_train.data.pinyin.default_pinyin_corpus).
"""
from __future__ import annotations

import codecs
import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator, Optional, Union

from rnn_train.data import conversion, pinyin
from rnn_train.data.pinyin import check_tones
from rnn_train.data.pinyin import contains_han, hanzi_to_pinyin  # noqa: F401 (prediction imports them from here)
from rnn_train.data.sources import SourceFile, resolve_paths
from rnn_train.data.download import missing_corpus_error
from rnn_train.files import refuse_special
from rnn_train.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]
OnBytes = Optional[Callable[[int], object]]
Stage = Callable[[str, int], ContextManager[OnBytes]]

KINDS = ("text", "pinyin")

# Bytes of a file decoded at a time: big enough that per-chunk Python costs vanish, small enough
# that a chunk's temporaries (its str, its code points) stay a few tens of MB.
CHUNK_BYTES = 1 << 22

BUILT_IN = "the built-in pinyin corpus"


def named(paths: list[str]) -> str:
    """A corpus as messages name it: its data.paths, or BUILT_IN where there are none."""
    return ", ".join(paths) or BUILT_IN


# --------------------------------------------------------------------------- reading


def _decoder(encoding: str, path: PathLike) -> codecs.IncrementalDecoder:
    """A strict incremental decoder, or a one-line error for an unknown or non-text encoding."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"unknown text encoding {encoding!r} for {path} (e.g. utf-8, gbk)") from None
    try:
        b"\n".decode(encoding)  # non-empty: the empty string short-cuts the codec's check
    except UnicodeError:
        pass  # a text encoding that needs more bytes (utf-16) or more than a newline (punycode)
    except LookupError:  # a codec that exists but does not decode bytes to text, e.g. 'hex'
        raise UserError(f"{encoding!r} is not a text encoding (reading {path})") from None
    return codecs.getincrementaldecoder(encoding)(errors="strict")


CORPUS_FILE = "corpus file"
"""What file_chunks' messages call the file by default; a command reading other text names it otherwise."""


def _open(path: PathLike, what: str):
    refuse_special(path, what)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise (missing_corpus_error(path) if what == CORPUS_FILE else UserError(f"{what} not found: {path}")) from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a {what}") from None
    except PermissionError:
        raise UserError(f"cannot read {what} {path}: permission denied") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def file_chunks(path: PathLike, encoding: str = "utf-8", chunk_bytes: int = CHUNK_BYTES, *,
                offset: int = 0, on_bytes: OnBytes = None, encoding_key: str = "data.encoding",
                what: str = CORPUS_FILE) -> Iterator[str]:
    """Decode and normalise a file (from byte `offset`) in chunks of at most `chunk_bytes` bytes.

    Every failure a user can fix is a one-line `UserError` naming the file: missing, a directory,
    unreadable, an unknown encoding, a byte that is not valid in `encoding` (with its offset in
    the file, wherever the chunks were cut; the message says to set `encoding_key`), or a NUL
    character (a binary file)."""
    decoder = _decoder(encoding, path)
    strict_utf8 = codecs.lookup(encoding).name == "utf-8"  # never decodes to a lone surrogate; others may (utf-7)
    with _open(path, what) as f:
        f.seek(offset)
        consumed, chars, started, carry = offset, 0, False, ""
        while True:
            try:
                block = f.read(chunk_bytes)
            except OSError as exc:
                raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
            buffered = len(decoder.getstate()[0])  # bytes of an incomplete character held back
            first = block if consumed == 0 else b""  # the file's first bytes: a compressed file's signature
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                # a binary file fails to decode too, but is better named as what it is
                valid = exc.object[:exc.start].decode(encoding, errors="replace")
                raise _packed(path, first) or (
                    _binary(path, chars, valid, encoding_key) if "\0" in valid else
                    _undecodable(path, encoding, exc, consumed - buffered, encoding_key)) from None
            except UnicodeError as exc:  # a codec's own complaint, e.g. utf-16 without its byte-order mark
                raise UserError(f"{path} is not readable as {encoding} ({exc}; set {encoding_key}"
                                f"{_byte_order(block)})") from None
            consumed += len(block)
            if on_bytes is not None and block:
                on_bytes(len(block))
            if not started and text:
                started = True
                text = text[1:] if text[0] == "\ufeff" else text
            text, carry = carry + text, ""
            if block and text.endswith("\r"):  # its LF, if any, comes with the next chunk
                text, carry = text[:-1], "\r"
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            nul = text.find("\0")
            if nul >= 0:
                raise _packed(path, first) or _binary(path, chars, text, encoding_key)
            lone = None if strict_utf8 else _SURROGATE.search(text)
            if lone:  # no character, and nothing can store it (UTF-8, UTF-32 refuse it)
                raise UserError(f"{path}: {encoding} decodes to U+{ord(lone.group()):04X} at character "
                                f"{chars + lone.start()}, half of a UTF-16 pair and no character (set {encoding_key})")
            chars += len(text)
            if text:
                yield text
            if not block:
                return


_SURROGATE = re.compile("[\ud800-\udfff]")


_PACKED = ((b"\x1f\x8b", "gzip-compressed", "gunzip"), (re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)"),
                                                     "bzip2-compressed", "bunzip2"),
           (b"\xfd7zXZ\x00", "xz-compressed", "unxz"), (b"\x28\xb5\x2f\xfd", "zstd-compressed", "unzstd"),
           (b"PK\x03\x04", "a zip archive", "unzip"), (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "7z x"))
"""A compressed file's or an archive's first bytes, what it is, and the command that unpacks it."""


def _packed(path: PathLike, start: bytes) -> UserError | None:
    """The error for a file that failed to decode and starts (`start`: its first bytes, or b"" where
    the failure was past its first chunk) as a compressed file or an archive does: it was told to set
    data.encoding, which no encoding mends."""
    for magic, kind, tool in _PACKED:
        if start.startswith(magic) if isinstance(magic, bytes) else magic.match(start):
            return UserError(f"{path} is {kind}, not text: unpack it first ({tool})")
    return None


def _binary(path: PathLike, base: int, text: str, key: str) -> UserError:
    """The error for the first NUL in `text`, a decoded piece of the file starting at character
    `base`; with a hint at data.encoding where the text reads as UTF-16 or UTF-32 without a
    byte-order mark (_wide_encoding), else the plain message of a binary file."""
    at = text.index("\0")
    wide = _wide_encoding(text, base)
    takes = (f"{wide} without a byte-order mark? set {key}={wide.lower()}" if wide
             else "data.paths takes text files" if key == "data.encoding" else "text files only")  # a command's file
    return UserError(f"{path} looks like a binary file, not text: NUL character at character {base + at} ({takes})")


def _wide_encoding(text: str, base: int) -> str:
    """"UTF-16-LE" (-BE, UTF-32-LE, -BE) where `text`, read as UTF-8 from file offset `base`, has
    the pattern of that encoding's Latin text: from the start of the file, every code unit's high
    bytes NUL and its low byte not ("h\0e\0" in UTF-16-LE); a NUL-filled tail or a binary header
    breaks it. Only the start of a file is looked at, where character and byte offsets agree."""
    if base:
        return ""
    window = text[:512]
    for width, name in ((4, "UTF-32"), (2, "UTF-16")):
        n = len(window) // width * width
        if n < 2 * width:
            continue
        units = [window[i:i + width] for i in range(0, n, width)]
        for order, low in (("LE", 0), ("BE", width - 1)):
            if all(u[low] != "\0" and u.count("\0") == width - 1 for u in units):
                return f"{name}-{order}"
    return ""


def _byte_order(start: bytes) -> str:
    """'=utf-16-le' (-be, utf-32) where the file's first bytes have the pattern of that encoding's
    Latin text (_wide_encoding): the advice for a file refused as utf-16 or utf-32 for want of a
    byte-order mark; '' where they do not (Chinese in UTF-16, or a file in another encoding)."""
    wide = _wide_encoding(start[:512].decode("latin-1"), 0)
    return f"={wide.lower()}" if wide else ""


def _undecodable(path: PathLike, encoding: str, exc: UnicodeDecodeError, base: int, key: str) -> UserError:
    """The one-line error for a byte `encoding` cannot decode; `base` is the file offset of exc.object."""
    if base == 0 and exc.object[:4] in (b"\xff\xfe\0\0", b"\0\0\xfe\xff"):  # a UTF-32 byte-order mark
        hint = "e.g. utf-32"
    elif base == 0 and exc.object[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte-order mark
        hint = "e.g. utf-16"
    elif base == 0 and codecs.lookup(encoding).name in ("utf-16", "utf-32") and _byte_order(exc.object):
        return UserError(f"{path} is not readable as {encoding} (no byte-order mark at its start; "
                         f"set {key}{_byte_order(exc.object)})")
    elif codecs.lookup(encoding).name != "utf-8":
        hint = "e.g. utf-8"
    else:
        hint = _legacy_hint(exc.object, exc.start)
    said = (f"set {key}, {hint}" if hint else
            f"the text around it is UTF-8: a damaged byte? mend it, or set {key} if the file is in another encoding")
    return UserError(f"{path}: byte 0x{exc.object[exc.start]:02x} at offset {base + exc.start} "
                     f"is not valid {encoding} ({said})")


def _legacy_hint(data: bytes, start: int) -> str:
    """The encodings to name for a file that is not UTF-8 at `start`; "" where the text around the
    byte is UTF-8 (characters past ASCII that decode, four for each byte that does not): a stray
    byte in a UTF-8 file, which a legacy encoding would garble. Else the candidates, all: guessing one
    from the bytes was wrong every way it was tried (Shift-JIS and Big5 second bytes may be ASCII,
    and ASCII before the first bad byte thinned out any measure), and the wrong one costs, since
    cp1252 or latin-1 decodes East Asian text to mojibake without a word."""
    around = data[max(0, start - 2048):start + 2048].decode("utf-8", "surrogateescape")
    bad = sum("\udc80" <= c <= "\udcff" for c in around)
    decoded = sum(c >= "\x80" and not "\udc80" <= c <= "\udcff" for c in around)
    return "" if decoded >= 4 * bad else "e.g. cp1252 (Western), gbk, big5, shift_jis, euc-kr or cp1251"


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
    """A whole (small) file as one normalised string: :func:`file_chunks` joined."""
    return "".join(file_chunks(path, encoding))


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class TextPart:
    """One file's share of the corpus, readable any number of times as normalised chunks."""

    label: str  # the file as data.paths found it, for messages
    path: Optional[Path] = None  # what is read: the file itself, or its pinyin conversion
    encoding: str = "utf-8"
    offset: int = 0  # bytes skipped at the start (the checksum line of a conversion)
    text: Optional[str] = None  # the built-in corpus, held in memory (it is small)


def _no_progress(name: str, total: int):
    return contextlib.nullcontext(None)


def plan_parts(files: list[SourceFile], kind: str, encoding: str, tones: str, work_dir: Path,
               chunk_bytes: int = CHUNK_BYTES, stage: Stage = _no_progress) -> list[TextPart]:
    """What to read for each file, in order. For ``kind: pinyin`` each file is read once here to
    tell Chinese from pinyin, and a Chinese file is converted into `work_dir` (or found there).
    `stage(name, total_bytes)` gives a context whose value is called with the bytes read."""
    if kind not in KINDS:
        raise UserError(f"unknown corpus kind {kind!r}: expected one of {', '.join(KINDS)}")
    check_tones(tones)
    if not files:
        if kind == "pinyin":
            return [TextPart(BUILT_IN, text=pinyin.default_pinyin_corpus(tones))]
        raise UserError("no corpus file given: kind 'text' needs at least one file "
                        "(only kind 'pinyin' has a built-in default corpus)")
    if kind == "text":
        return [TextPart(str(f.path), f.path, encoding) for f in files]
    return [_pinyin_part(f, encoding, tones, work_dir, chunk_bytes, stage) for f in files]


def _pinyin_part(source: SourceFile, encoding: str, tones: str, work_dir: Path, chunk_bytes: int,
                 stage: Stage) -> TextPart:
    """A pinyin file as it is, or a Chinese file's cached conversion."""
    path = source.path
    key = conversion.key_hasher(tones)
    han = non_space = chars = 0
    with stage("read", source.size) as on_bytes:
        for chunk in file_chunks(path, encoding, chunk_bytes, on_bytes=on_bytes):
            h, n = pinyin.han_counts(chunk)
            han, non_space, chars = han + h, non_space + n, chars + len(chunk)
            key.update(chunk.encode("utf-8"))
    if not non_space:
        raise UserError(f"corpus file {path} is empty (or only whitespace)")
    if not pinyin.is_chinese(han, non_space):
        return TextPart(str(path), path, encoding)
    entry = Path(work_dir) / conversion.entry_name(key.hexdigest(), tones)
    if not conversion.entry_is_valid(entry):
        with stage("pinyin", source.size) as on_bytes:
            reread = _same_text(file_chunks(path, encoding, chunk_bytes, on_bytes=on_bytes), key.hexdigest(), tones, path)
            conversion.convert_to_entry(entry, lambda: reread, tones, chars)
    if not conversion.entry_has_text(entry):
        raise UserError(f"corpus file {path}: no Han character in it has a known pinyin reading")
    return TextPart(str(path), entry, "utf-8", conversion.HEADER_BYTES)


def _same_text(chunks: Iterator[str], key_hex: str, tones: str, path: Path) -> Iterator[str]:
    """`chunks`, checked at their end to be the text the entry's key was computed from: a file
    changed between the two reads fails the conversion before its entry is published."""
    key = conversion.key_hasher(tones)
    for chunk in chunks:
        key.update(chunk.encode("utf-8"))
        yield chunk
    if key.hexdigest() != key_hex:
        raise UserError(f"{path} changed while it was being prepared; run again")


def part_chunks(part: TextPart, chunk_bytes: int = CHUNK_BYTES, on_bytes: OnBytes = None) -> Iterator[str]:
    if part.text is not None:
        for start in range(0, len(part.text), chunk_bytes):
            yield part.text[start:start + chunk_bytes]
        return
    yield from file_chunks(part.path, part.encoding, chunk_bytes, offset=part.offset, on_bytes=on_bytes)


def corpus_chunks(parts: Iterable[TextPart], chunk_bytes: int = CHUNK_BYTES, on_bytes: OnBytes = None) -> Iterator[str]:
    """The whole corpus as consecutive text chunks: the parts joined with "\\n". A part with no
    non-whitespace character is an error naming its file (raised once the part has been read)."""
    for i, part in enumerate(parts):
        if i:
            yield "\n"
        has_text = False
        for chunk in part_chunks(part, chunk_bytes, on_bytes):
            has_text = has_text or not chunk.isspace()
            yield chunk
        if not has_text:
            raise UserError(f"corpus file {part.label} is empty (or only whitespace)")


def load_corpus(
    paths: Union[PathLike, Iterable[PathLike]],
    kind: str,
    encoding: str = "utf-8",
    tones: str = "none",
    cache_dir: Optional[PathLike] = None,
) -> str:
    """The corpus of one run as a single string (for small corpora and tests; training streams it).

    Each file is read with `encoding` and normalised; with ``kind="pinyin"`` a file in Chinese
    characters is converted to pinyin (cached in `cache_dir` when given) and a file already in
    pinyin is used as is. Files are joined with "\\n". No files with ``kind="pinyin"`` means the
    built-in corpus. A single path is accepted in place of a list.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = resolve_paths([str(p) for p in paths])
    if cache_dir is not None:
        return "".join(corpus_chunks(plan_parts(files, kind, encoding, tones, Path(cache_dir))))
    with tempfile.TemporaryDirectory(prefix="rnn-train-") as scratch:
        return "".join(corpus_chunks(plan_parts(files, kind, encoding, tones, Path(scratch))))
