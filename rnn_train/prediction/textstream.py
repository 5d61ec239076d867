"""A text file as the model's corpus pipeline would have made it, in bounded pieces (for `score`).

The steps are the data package's own streamed ones, so a file scores as the same text it would be
as a corpus file of the model's run:

- `corpus.file_chunks`: decoding with the model's `data.encoding` (an undecodable byte is a
  one-line error with its offset), one leading BOM removed, CRLF and lone CR -> LF (also across
  chunks), NUL refused;
- for a pinyin model, a Chinese file (`pinyin.is_chinese` on the whole file's counts, a first
  reading pass) is converted with `conversion.converted_pieces`, whole lines at a time;
- `data.letters_only` with `stream.LettersOnly`.

A short text a user types (a prefix, a --stop-at string, log.sample_prefix) goes through the same
two rules as it stands (`corpus_text`), without a whole file to judge: any Chinese character is
converted for a pinyin model, and a letters-only model keeps a space at either end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from rnn_train.data import conversion, corpus, pinyin
from rnn_train.data.dataset import letters_and_spaces
from rnn_train.data.stream import LettersOnly, code_points
from rnn_train.errors import UserError, lone_surrogate


ENCODING_KEY = "--encoding"  # what an undecodable byte's message tells the user to set
TEXT_FILE = "text file"  # what a file's messages call it: a text to score or explore, not the corpus


def check_typed(text: str, what: str) -> None:
    """A UserError for a typed text holding a lone surrogate (errors.lone_surrogate): Python's
    stand-in for a command-line byte that is not UTF-8 (a Latin-1 'é' typed in a Latin-1 terminal),
    which no vocab can hold and no encoder can write."""
    held = lone_surrogate(text)
    if held:
        raise UserError(f"{what} holds {held}: type it in UTF-8")


def _as_file_reads(text: str) -> str:
    """A string as corpus.file_chunks reads a file holding it: one leading BOM dropped, CRLF and a
    lone CR as LF."""
    text = text[1:] if text[:1] == "\ufeff" else text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def pinyin_prefix(prefix: str, cfg) -> str:
    """A pinyin model given a prefix in Chinese (Han characters, or Chinese marks such as "，"):
    convert it the way its corpus was. The newlines at its ends stay: the converter drops a text's
    leading and trailing blank lines (a corpus's edges), where a prefix's "中国\n" asks for what
    follows a line ending in "zhong guo"."""
    if cfg.data.kind != "pinyin" or not pinyin.contains_chinese(prefix):
        return prefix
    inner = prefix.strip("\n")
    lead, trail = prefix[:len(prefix) - len(prefix.lstrip("\n"))], prefix[len(prefix.rstrip("\n")):]
    converted = pinyin.hanzi_to_pinyin(inner, cfg.data.tones).rstrip("\n")
    # the converter ends every syllable run without a trailing space; a prefix usually continues
    if not trail and (inner[-1:] == " " or pinyin.contains_han(inner[-1:])):
        trail = " "
    return lead + converted + trail


def is_converted_stop(typed: str, cfg) -> bool:
    """Whether a typed --stop-at (or stop_at) is converted from Chinese characters for a pinyin model,
    whose syllables then match whole (StopRules.syllables): 国 is "guo " as a prefix, and the corpus
    has it as "guo\n" ending a line, "guo." before a mark, never inside "guon". A stop of marks alone
    ("。" is ".") has no syllable to match whole."""
    converted = pinyin_prefix(typed, cfg)
    return converted != typed and (converted[:1].isalnum() or converted.endswith(" "))


def letters_prefix(prefix: str, cfg) -> str:
    """A prefix for a `data.letters_only` model, by its corpus's rule (dataset.letters_and_spaces)
    without the trim at the ends: a prefix that ends in punctuation ends where the corpus has a
    space. Others: unchanged."""
    return letters_and_spaces(prefix) if cfg.data.letters_only else prefix


def corpus_text(text: str, cfg, what: str) -> tuple[str, list[str]]:
    """A typed text as the model's corpus would hold it: a leading BOM dropped and CRLF or CR read
    as LF, Chinese characters to pinyin for a pinyin model, then the letters-only rule -> (the
    text, a line for each step that changed it, naming `what` the text is: "prefix", "--stop-at")."""
    said = []
    check_typed(text, what)
    text = _as_file_reads(text)
    converted = pinyin_prefix(text, cfg)
    if converted != text:
        said.append(f"{what} in Chinese characters converted to pinyin like the corpus ({cfg.data.tones} tones): "
                    f"{converted!r}")
    letters = letters_prefix(converted, cfg)
    if letters != converted:
        said.append(f"{what} reduced to lowercase letters and spaces like the corpus (data.letters_only): {letters!r}")
    return letters, said


def is_chinese_file(path: str | Path, encoding: str) -> bool:
    """The corpus's rule on the whole file, counted chunk by chunk."""
    han = non_space = 0
    for chunk in corpus.file_chunks(path, encoding, encoding_key=ENCODING_KEY, what=TEXT_FILE):
        h, n = pinyin.han_counts(chunk)
        han, non_space = han + h, non_space + n
    return pinyin.is_chinese(han, non_space)


def model_text(path: str | Path, data_cfg, encoding: str | None = None,
               chunk_bytes: int = corpus.CHUNK_BYTES) -> Iterator[str]:
    """The text of `path` as the model's corpus would hold it, in pieces of bounded size.
    `encoding` overrides the model's data.encoding."""
    encoding = encoding or data_cfg.encoding
    chunks = corpus.file_chunks(path, encoding, chunk_bytes, encoding_key=ENCODING_KEY, what=TEXT_FILE)
    chinese = data_cfg.kind == "pinyin" and is_chinese_file(path, encoding)
    yield from _as_corpus(chunks, data_cfg, chinese)


def nothing_read(path: str | Path, data_cfg, what: str) -> UserError:
    """The error of a file `model_text` read no character of: empty, or (data.letters_only) holding
    no letter, where "is empty" would be untrue."""
    if data_cfg.letters_only and Path(path).stat().st_size:
        return UserError(f"{path} holds no letter, and the model reads letters and spaces only "
                         f"(data.letters_only): nothing to {what}")
    return UserError(f"{path} is empty: nothing to {what}")


def text_pieces(text: str, data_cfg) -> Iterator[str]:
    """A text given as a string (the server's /v1/score) as `model_text` makes a UTF-8 file holding
    it: one leading BOM removed, CRLF and lone CR -> LF, NUL refused, then the same steps."""
    nul = text.find("\0")
    if nul >= 0:
        raise UserError(f"the text has a NUL character at character {nul} (text only)")
    text = _as_file_reads(text)
    chinese = data_cfg.kind == "pinyin" and pinyin.is_chinese(*pinyin.han_counts(text))
    yield from _as_corpus([text] if text else [], data_cfg, chinese)


def _as_corpus(chunks: Iterable[str], data_cfg, chinese: bool) -> Iterator[str]:
    """Normalised text -> the model's corpus text: pinyin conversion (a Chinese text for a pinyin
    model), then letters-only."""
    if chinese:
        chunks = conversion.converted_pieces(chunks, data_cfg.tones, workers=1)
    if not data_cfg.letters_only:
        yield from (c for c in chunks if c)
        return
    letters = LettersOnly()
    for chunk in chunks:
        out = letters(code_points(chunk))  # uint8 code points of ASCII letters and spaces
        if len(out):
            yield out.tobytes().decode("ascii")
