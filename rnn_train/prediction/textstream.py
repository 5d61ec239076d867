"""A text file as the model's corpus pipeline would have made it, in bounded pieces (for `score`).

The steps are the data package's own streamed ones, so a file scores as the same text it would be
as a corpus file of the model's run:

- `corpus.file_chunks`: decoding with the model's `data.encoding` (an undecodable byte is a
  one-line error with its offset), one leading BOM removed, CRLF and lone CR -> LF (also across
  chunks), NUL refused;
- for a pinyin model, a Chinese file (`pinyin.is_chinese` on the whole file's counts, a first
  reading pass) is converted with `conversion.converted_pieces`, whole lines at a time;
- `data.letters_only` with `stream.LettersOnly`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from rnn_train.data import conversion, corpus, pinyin
from rnn_train.data.stream import LettersOnly, code_points


ENCODING_KEY = "--encoding"  # what an undecodable byte's message tells the user to set


def is_chinese_file(path: str | Path, encoding: str) -> bool:
    """The corpus's rule on the whole file, counted chunk by chunk."""
    han = non_space = 0
    for chunk in corpus.file_chunks(path, encoding, encoding_key=ENCODING_KEY):
        h, n = pinyin.han_counts(chunk)
        han, non_space = han + h, non_space + n
    return pinyin.is_chinese(han, non_space)


def model_text(path: str | Path, data_cfg, encoding: str | None = None,
               chunk_bytes: int = corpus.CHUNK_BYTES) -> Iterator[str]:
    """The text of `path` as the model's corpus would hold it, in pieces of bounded size.
    `encoding` overrides the model's data.encoding."""
    encoding = encoding or data_cfg.encoding
    chunks = corpus.file_chunks(path, encoding, chunk_bytes, encoding_key=ENCODING_KEY)
    if data_cfg.kind == "pinyin" and is_chinese_file(path, encoding):
        chunks = conversion.converted_pieces(chunks, data_cfg.tones, workers=1)
    if not data_cfg.letters_only:
        yield from (c for c in chunks if c)
        return
    letters = LettersOnly()
    for chunk in chunks:
        out = letters(code_points(chunk))  # uint8 code points of ASCII letters and spaces
        if len(out):
            yield out.tobytes().decode("ascii")
