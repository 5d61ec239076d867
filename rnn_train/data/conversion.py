"""Chinese files -> pinyin files: cached, and in parallel worker processes for large files.

Why a file: a converted corpus is read twice by the prepare step (once to count characters, once to
encode them) and may be larger than memory, so the conversion is written once, streamed, into a
cache entry that those passes then read like any other text file.

Cache entries (``cache_dir/pinyin-<tones>-<key>.txt``)
    The key is the SHA-256 of the converter version, the pypinyin version, the tones and the
    normalised source text, so the same text gives the same entry whatever its file name or
    encoding (the GBK and UTF-8 copies of a novel share one). The first line is a checksum of
    the rest; an entry that fails it is converted again. Entries are written to a temporary file
    and renamed, so an interrupted conversion (Ctrl-C, a full disk) never leaves an entry.

Parallel conversion
    The text is cut at line ends into pieces of about `PIECE_CHARS` characters; worker processes
    run :func:`rnn_train.data.pinyin.convert_piece` on them and the parent glues the results in
    order with :class:`~rnn_train.data.pinyin.PieceJoiner`, which applies the only rules that span
    lines (blank-line collapsing, none at the start or end). At most two pieces per worker are in
    flight, so memory stays bounded whatever the file size. The output is byte-identical to one
    :func:`~rnn_train.data.pinyin.hanzi_to_pinyin` call on the whole text (tested on Hongloumeng).
    Workers start the platform's default way (`START_METHOD`).
"""
from __future__ import annotations

import collections
import hashlib
import multiprocessing
import signal
from pathlib import Path
from typing import Callable, Iterable, Iterator

from rnn_train.data import pinyin
from rnn_train.errors import UserError
from rnn_train.files import atomic_write_bytes, cache_hint
from rnn_train.runtime import available_cores

# Line-aligned pieces handed to one worker call: big enough that pickling is negligible next to
# converting, small enough that two workers share a novel evenly.
PIECE_CHARS = 1 << 17
# Files smaller than this convert in this process: starting workers would cost more than it saves.
PARALLEL_MIN_CHARS = 1 << 19

# None: the platform's default (fork on Linux up to Python 3.13). The workers only run pypinyin,
# never torch, so torch's thread pools in a forked parent do not matter; spawn and forkserver
# re-import the main script, which then needs the `if __name__ == "__main__":` guard.
START_METHOD = None

_MAGIC = b"rnn-train pinyin cache sha256="
HEADER_BYTES = len(_MAGIC) + 64 + 1  # magic, hex digest, "\n"
_READ_BYTES = 1 << 22


def entry_name(key_hex: str, tones: str) -> str:
    return f"pinyin-{tones}-{key_hex}.txt"


def key_hasher(tones: str) -> "hashlib._Hash":
    """The hash that, fed the normalised text as UTF-8, names the cache entry of its conversion."""
    key = hashlib.sha256()
    key.update(f"converter {pinyin.CONVERTER_VERSION}\0pypinyin {pinyin.pypinyin_version()}\0tones {tones}\0".encode())
    return key


def entry_is_valid(path: Path) -> bool:
    """True when `path` exists and its body matches the checksum in its first line."""
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
            digest = hashlib.sha256()
            while block := f.read(_READ_BYTES):
                digest.update(block)
    except OSError:
        return False
    return header == _MAGIC + digest.hexdigest().encode() + b"\n"


def write_entry(path: Path, pieces: Iterable[str]) -> None:
    """Stream `pieces` (the converted text) into the entry at `path`, atomically; a failed write
    (a full disk, no permission) is a one-line error and leaves no entry."""

    def write(f) -> None:
        f.write(b" " * HEADER_BYTES)  # placeholder: the checksum is known at the end
        digest = hashlib.sha256()
        for piece in pieces:
            data = piece.encode("utf-8")
            digest.update(data)
            f.write(data)
        f.seek(0)
        f.write(_MAGIC + digest.hexdigest().encode() + b"\n")

    try:
        atomic_write_bytes(path, write)
    except OSError as exc:
        raise UserError(f"cannot write the pinyin conversion {path} ({exc.strerror or exc}): "
                        f"{cache_hint(exc)}") from None


def entry_has_text(path: Path) -> bool:
    """Whether a valid entry holds any pinyin (the converter writes no whitespace-only output)."""
    return path.stat().st_size > HEADER_BYTES


def line_aligned(chunks: Iterable[str], size: int = PIECE_CHARS) -> Iterator[str]:
    """Re-cut a text stream into pieces of about `size` characters that end where a line ends: the
    text is the pieces joined with "\\n" (the newline at each cut is dropped), so the lines of the
    pieces are exactly the lines of the text. A line longer than `size` stays whole."""
    buf: list[str] = []
    held = 0
    for chunk in chunks:
        buf.append(chunk)
        held += len(chunk)
        if held < size:
            continue
        cut = chunk.rfind("\n")
        if cut < 0:
            continue
        yield "".join(buf[:-1]) + chunk[:cut]
        buf = [chunk[cut + 1:]]
        held = len(buf[0])
    yield "".join(buf)


def _quiet_on_stop() -> None:
    """In a conversion worker: Ctrl-C is the parent's to answer (it stops the pool), and the SIGTERM
    with which the pool stops its workers ends one at once. Inherited, the command's handlers made
    each worker print a KeyboardInterrupt traceback before the one `error: interrupted` line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def converted_pieces(chunks: Iterable[str], tones: str, workers: int, piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """The pinyin of a normalised text stream, as consecutive pieces of output text (in order)."""
    joiner = pinyin.PieceJoiner()
    pieces = line_aligned(chunks, piece_chars)
    if workers <= 1:
        for piece in pieces:
            yield joiner.add(pinyin.convert_piece(piece, tones))
    else:
        with multiprocessing.get_context(START_METHOD).Pool(workers, initializer=_quiet_on_stop) as pool:
            in_flight: collections.deque = collections.deque()
            for piece in pieces:
                in_flight.append(pool.apply_async(pinyin.convert_piece, (piece, tones)))
                if len(in_flight) >= 2 * workers:
                    yield joiner.add(in_flight.popleft().get())
            while in_flight:
                yield joiner.add(in_flight.popleft().get())
    yield joiner.finish()


def convert_to_entry(path: Path, read: Callable[[], Iterator[str]], tones: str, chars: int) -> None:
    """Convert the normalised text that `read()` streams (`chars` characters) into the entry `path`;
    in worker processes when the text is large and there is more than one core."""
    workers = available_cores() if chars >= PARALLEL_MIN_CHARS else 1
    write_entry(path, converted_pieces(read(), tones, workers))
