"""Specification of rnn_train.data.corpus and .pinyin: reading, normalisation, pinyin conversion, cache, default corpus."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnn_train.data import corpus, pinyin, sources
from rnn_train.errors import UserError
from tests.conftest import ROOT, shared_corpus

SENTENCE = "她说：“女儿，绿色的策略好！”他笑了……"
SENTENCE_NONE = 'ta shuo: "nv er, lv se de ce lve hao!" ta xiao le...'
SENTENCE_NUMBERS = 'ta1 shuo1: "nv3 er2, lv4 se4 de5 ce4 lve4 hao3!" ta1 xiao4 le5...'
CANDIDATES = "e.g. cp1252 (Western), gbk, big5, shift_jis, euc-kr or cp1251"  # a file not UTF-8: what to set


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` as bytes (no newline translation) and return the path."""
    path.write_bytes(text.encode(encoding))
    return path


def count_conversions(monkeypatch) -> list:
    """Wrap pinyin.convert_piece (a small file is one piece) so each call is recorded; returns the calls."""
    calls = []
    real = pinyin.convert_piece

    def recording(text, tones="none"):
        calls.append(tones)
        return real(text, tones)

    monkeypatch.setattr(pinyin, "convert_piece", recording)
    return calls


# --------------------------------------------------------------------------- read_text


def test_leading_bom_is_stripped_and_only_the_leading_one(tmp_path):
    path = write(tmp_path / "bom.txt", "\ufeffabc\ufeffdef\n")
    assert corpus.read_text(path) == "abc\ufeffdef\n"


def test_crlf_and_lone_cr_become_lf(tmp_path):
    path = write(tmp_path / "eol.txt", "one\r\ntwo\rthree\n\r\nfour")
    assert corpus.read_text(path) == "one\ntwo\nthree\n\nfour"


def test_gbk_file_is_read_with_encoding_gbk(tmp_path):
    path = write(tmp_path / "gbk.txt", "abc中文，好\n", encoding="gbk")
    assert corpus.read_text(path, encoding="gbk") == "abc中文，好\n"


def test_gbk_file_read_as_utf8_names_file_byte_offset_and_encoding(tmp_path):
    path = write(tmp_path / "gbk.txt", "abc中文\n", encoding="gbk")  # 中 is 0xd6 0xd0 in GBK
    with pytest.raises(UserError) as info:
        corpus.read_text(path)
    message = str(info.value)
    assert message == f"{path}: byte 0xd6 at offset 3 is not valid utf-8 (set data.encoding, {CANDIDATES})"
    assert "\n" not in message


@pytest.mark.parametrize("text,encoding", [
    ("Größe und Übermaß, café crème\n", "cp1252"),
    ("Dear sir, please find attached my application.\n" * 200 + "Regards, René\n", "cp1252"),
    ("紅樓夢第一回 甄士隱夢幻識通靈\n", "big5"),
    ("ソフトウェア\n", "shift_jis"),  # second bytes ASCII: each first byte alone among ASCII, as in Western text
    ("Copyright notice. " * 150 + "日本語のテキスト\n", "shift_jis"),  # 2.7 kB of ASCII before the first bad byte
    ("Привет, мир!\n", "cp1251"),
])
def test_a_file_in_a_legacy_encoding_is_told_the_candidates_not_one_guess(tmp_path, text, encoding):
    """Every guess from the bytes was wrong for some file (Shift-JIS told latin-1, which decodes it to
    mojibake without a word; a Western file's one accent told gbk): the message names them all."""
    path = write(tmp_path / "legacy.txt", text, encoding=encoding)
    with pytest.raises(UserError, match=re.escape(f"is not valid utf-8 (set data.encoding, {CANDIDATES})")):
        corpus.read_text(path)


def test_a_stray_byte_in_a_utf8_file_is_told_to_be_mended_not_to_change_the_encoding(tmp_path):
    """Read as cp1252, the rest of this file would be mojibake."""
    path = tmp_path / "mixed.txt"
    path.write_bytes("中文文本，这是一个例子。".encode() * 3 + b"\xff" + "héllo wörld, über straße\n".encode())
    with pytest.raises(UserError, match=re.escape("byte 0xff at offset 108 is not valid utf-8 (the text around it "
                                                  "is UTF-8: a damaged byte? mend it, or set data.encoding if the "
                                                  "file is in another encoding)")):
        corpus.read_text(path)


@pytest.mark.parametrize("written,read_as,advice", [
    ("utf-16-le", "utf-16", "set data.encoding=utf-16-le)"),
    ("utf-16-be", "utf-16", "set data.encoding=utf-16-be)"),
    ("utf-32-be", "utf-32", "set data.encoding=utf-32-be)"),
    ("utf-16-le", "utf-32", "set data.encoding=utf-16-le)"),  # the width told is the file's, not the one asked
    ("utf-8", "utf-16", "set data.encoding)"),  # no pattern of a wide encoding: no order to name
])
def test_a_file_read_as_utf16_or_utf32_without_a_byte_order_mark_is_told_the_order_its_bytes_show(tmp_path, written,
                                                                                                  read_as, advice):
    path = tmp_path / "wide.txt"
    path.write_bytes("ni hao, zhong guo\n".encode(written) * 4)
    with pytest.raises(UserError) as info:
        corpus.read_text(path, encoding=read_as)
    assert str(info.value).startswith(f"{path} is not readable as {read_as} (") and str(info.value).endswith(advice)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match="not found: .*nowhere.txt"):
        corpus.read_text(tmp_path / "nowhere.txt")


def test_directory_names_the_path(tmp_path):
    with pytest.raises(UserError, match=f"{re.escape(str(tmp_path))} is a directory"):
        corpus.read_text(tmp_path)


def test_unknown_encoding_is_named(tmp_path):
    path = write(tmp_path / "a.txt", "abc")
    with pytest.raises(UserError, match="unknown text encoding 'klingon-8'"):
        corpus.read_text(path, encoding="klingon-8")


def test_codec_that_is_not_a_text_encoding_is_rejected(tmp_path):
    path = write(tmp_path / "a.txt", "abc")
    with pytest.raises(UserError, match="'hex' is not a text encoding"):
        corpus.read_text(path, encoding="hex")


@pytest.mark.parametrize("encoding,needle", [("utf-16", "does not start with BOM"), ("punycode", "set data.encoding")])
def test_a_codec_that_refuses_the_bytes_in_its_own_words_is_one_line_naming_the_file(tmp_path, encoding, needle):
    path = write(tmp_path / "a.txt", "zhong guo")  # no byte-order mark; not punycode either
    with pytest.raises(UserError, match=rf"{re.escape(str(path))} is not readable as {encoding} \(.*{needle}"):
        corpus.read_text(path, encoding=encoding)


# --------------------------------------------------------------------------- conversion


def test_sentence_to_pinyin_without_tones():
    # 女 -> nv and 绿/略 -> lv/lve (ü as v); ，：！ map to ASCII and attach to the syllable
    # before; “ attaches to the next syllable, ” to the mark before; …… becomes one "...".
    assert corpus.hanzi_to_pinyin(SENTENCE) == SENTENCE_NONE + "\n"


def test_sentence_to_pinyin_with_tone_numbers():
    assert corpus.hanzi_to_pinyin(SENTENCE, tones="numbers") == SENTENCE_NUMBERS + "\n"


def test_lines_indentation_dropped_symbols_and_blank_lines():
    text = "  《红楼梦》\n\n\n\n    第一回　甄士隐——梦幻\n——\n\n好（坏）\n\n"
    assert corpus.hanzi_to_pinyin(text) == "hong lou meng\n\ndi yi hui zhen shi yin meng huan\n\nhao huai\n"


def test_straight_quotes_alternate_and_ascii_words_are_kept_lowercased():
    text = '众人问"到底说的什么？"宝玉道：‘DNA２０２４好’'
    assert corpus.hanzi_to_pinyin(text) == (
        "zhong ren wen \"dao di shuo de shen me?\" bao yu dao: 'dna2024 hao'\n"
    )


def test_unknown_tones_setting_is_a_user_error():
    with pytest.raises(UserError, match="tones 'marks'"):
        corpus.hanzi_to_pinyin("中国", tones="marks")


def test_chinese_detection_uses_the_share_of_han_characters():
    assert pinyin.looks_like_chinese("红楼梦 第一回 abc")  # 6 of 9 non-space characters
    assert pinyin.looks_like_chinese("中abc")  # exactly a quarter
    assert not pinyin.looks_like_chinese("中abcd")  # a fifth
    assert not pinyin.looks_like_chinese("ni hao, zhong guo!\n")
    assert not pinyin.looks_like_chinese(" \n\t")


# --------------------------------------------------------------------------- load_corpus


def test_pinyin_file_is_used_as_is(tmp_path, monkeypatch):
    calls = count_conversions(monkeypatch)
    text = 'ni3 hao3, zhong1 guo2!\n  "wo3 men5"\n\nDNA\n'
    path = write(tmp_path / "py.txt", "\ufeff" + text.replace("\n", "\r\n"))
    assert corpus.load_corpus([path], kind="pinyin", tones="none") == text
    assert calls == []


def test_chinese_file_is_converted_for_kind_pinyin_but_not_for_kind_text(tmp_path):
    path = write(tmp_path / "zh.txt", SENTENCE + "\r\n")
    assert corpus.load_corpus([path], kind="pinyin", tones="numbers") == SENTENCE_NUMBERS + "\n"
    assert corpus.load_corpus([path], kind="text") == SENTENCE + "\n"


def test_multiple_files_are_joined_with_a_newline(tmp_path):
    first = write(tmp_path / "a.txt", "ni hao\n")
    second = write(tmp_path / "b.txt", "中国")
    third = write(tmp_path / "c.txt", "zai jian")
    assert corpus.load_corpus([first, second, third], kind="pinyin") == "ni hao\n\nzhong guo\n\nzai jian"
    assert corpus.load_corpus([str(first), str(third)], kind="text") == "ni hao\n\nzai jian"


def test_a_single_path_is_accepted_in_place_of_a_list(tmp_path):
    path = write(tmp_path / "a.txt", "abc\n")
    assert corpus.load_corpus(str(path), kind="text") == "abc\n"


def test_empty_or_whitespace_only_file_is_an_error_naming_it(tmp_path):
    good = write(tmp_path / "good.txt", "abc\n")
    blank = write(tmp_path / "blank.txt", " \r\n\t\n")
    with pytest.raises(UserError, match=f"{re.escape(str(blank))} is empty"):
        corpus.load_corpus([good, blank], kind="text")
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(UserError, match="empty.txt is empty"):
        corpus.load_corpus([empty], kind="pinyin")


def test_no_files_with_kind_text_is_an_error():
    with pytest.raises(UserError, match="no corpus file"):
        corpus.load_corpus([], kind="text")


def test_no_files_with_kind_pinyin_is_the_default_corpus():
    assert corpus.load_corpus([], kind="pinyin", tones="numbers") == pinyin.default_pinyin_corpus("numbers")


def test_unknown_kind_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="kind 'words'"):
        corpus.load_corpus([], kind="words")


def test_read_errors_surface_through_load_corpus(tmp_path):
    good = write(tmp_path / "good.txt", "abc\n")
    with pytest.raises(UserError, match="missing.txt"):
        corpus.load_corpus([good, tmp_path / "missing.txt"], kind="text")


# --------------------------------------------------------------------------- cache


def test_second_load_reuses_the_cached_conversion(tmp_path, monkeypatch):
    calls = count_conversions(monkeypatch)
    path = write(tmp_path / "zh.txt", SENTENCE)
    cache = tmp_path / "data" / "cache"
    first = corpus.load_corpus([path], kind="pinyin", cache_dir=cache)
    second = corpus.load_corpus([path], kind="pinyin", cache_dir=cache)
    assert first == second == SENTENCE_NONE + "\n"
    assert calls == ["none"]
    assert len(list(cache.iterdir())) == 1  # one entry, no temporary files left behind


def test_cache_key_covers_tones_text_and_converter_version(tmp_path, monkeypatch):
    calls = count_conversions(monkeypatch)
    path = write(tmp_path / "zh.txt", SENTENCE)
    cache = tmp_path / "cache"
    assert corpus.load_corpus([path], kind="pinyin", tones="numbers", cache_dir=cache) == SENTENCE_NUMBERS + "\n"
    corpus.load_corpus([path], kind="pinyin", tones="none", cache_dir=cache)
    write(path, SENTENCE + "好")
    corpus.load_corpus([path], kind="pinyin", tones="none", cache_dir=cache)
    monkeypatch.setattr(pinyin, "CONVERTER_VERSION", pinyin.CONVERTER_VERSION + 1)
    corpus.load_corpus([path], kind="pinyin", tones="none", cache_dir=cache)
    assert calls == ["numbers", "none", "none", "none"]


@pytest.mark.parametrize("damage", [b"\xff\xfe garbage", b"", b"truncate"])
def test_corrupt_cache_entry_is_ignored_and_rebuilt(tmp_path, monkeypatch, damage):
    calls = count_conversions(monkeypatch)
    path = write(tmp_path / "zh.txt", SENTENCE)
    cache = tmp_path / "cache"
    corpus.load_corpus([path], kind="pinyin", cache_dir=cache)
    (entry,) = cache.iterdir()
    entry.write_bytes(entry.read_bytes()[:-10] if damage == b"truncate" else damage)
    assert corpus.load_corpus([path], kind="pinyin", cache_dir=cache) == SENTENCE_NONE + "\n"
    assert corpus.load_corpus([path], kind="pinyin", cache_dir=cache) == SENTENCE_NONE + "\n"
    assert calls == ["none", "none"]  # rebuilt once, then served from the repaired entry


# --------------------------------------------------------------------------- default corpus


def test_default_corpus_is_deterministic_and_sizeable():
    text = pinyin.default_pinyin_corpus()
    assert text == pinyin.default_pinyin_corpus()
    lines = text.split("\n")
    assert lines[-1] == "" and all(lines[:-1])  # one phrase per line, ends with a newline
    assert len(lines) - 1 > 40_000 and len(text) > 400_000
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz \n")
    assert "zhong guo" in lines and "nv er" in lines
    assert not any("  " in line or line != line.strip() for line in lines)


def test_default_corpus_order_is_shuffled_so_the_tail_is_representative():
    lines = pinyin.default_pinyin_corpus().split("\n")[:-1]
    tail = lines[-len(lines) // 20:]
    assert lines != sorted(lines)
    assert len({line[0] for line in tail}) >= 20  # sorted order would give one or two initials
    assert 0.3 < sum(len(line.split()) == 2 for line in tail) / len(tail) < 0.6


def test_default_corpus_with_tone_numbers_matches_the_toneless_one():
    toned = pinyin.default_pinyin_corpus("numbers")
    assert set(toned) <= set("abcdefghijklmnopqrstuvwxyz12345 \n")
    assert all(re.fullmatch(r"[a-z]+[1-5]", syllable) for syllable in toned.split())
    assert re.sub("[1-5]", "", toned) == pinyin.default_pinyin_corpus("none")


# --------------------------------------------------------------------------- real corpus


def first_lines(text: str, min_chars: int) -> str:
    """The shortest run of whole lines of `text` holding at least `min_chars` characters."""
    cut = text.index("\n", min_chars)
    return text[: cut + 1]


@pytest.mark.parametrize(
    "tones, reference", [("none", "hongloumeng.pinyin.txt"), ("numbers", "hongloumeng.pinyin_tone.txt")]
)
def test_hongloumeng_opening_agrees_with_the_shared_pinyin(tones, reference):
    chinese = corpus.read_text(shared_corpus("hongloumeng/hongloumeng.zh.txt"))
    ours = corpus.hanzi_to_pinyin(first_lines(chinese, 20_000), tones).split("\n")[:-1]
    theirs = corpus.read_text(shared_corpus(f"hongloumeng/{reference}")).split("\n")[: len(ours)]
    assert len(ours) > 100 and ours[-1] and theirs[-1]  # same line structure: both end on text
    identical_lines = sum(a == b for a, b in zip(ours, theirs)) / len(ours)
    our_tokens, their_tokens = " ".join(ours).split(), " ".join(theirs).split()
    assert len(our_tokens) == len(their_tokens)
    identical_tokens = sum(a == b for a, b in zip(our_tokens, their_tokens)) / len(our_tokens)
    assert identical_lines >= 0.95 and identical_tokens >= 0.995


def test_hongloumeng_gbk_original_decodes_to_the_utf8_copy():
    original = corpus.read_text(shared_corpus("hongloumeng/hongloumeng.orig_gbk.txt"), encoding="gbk")
    assert original == corpus.read_text(shared_corpus("hongloumeng/hongloumeng.zh.txt"))
    assert len(original) == 882_440


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 4, 5, 1 << 22])
@pytest.mark.parametrize("encoding, good, bad_at", [("utf-8", "abc中文\r\n" * 3, 5), ("gbk", "abc中文，好\r\n" * 3, 9)])
def test_undecodable_byte_is_named_with_its_file_offset_wherever_chunks_are_cut(tmp_path, chunk_bytes, encoding,
                                                                                 good, bad_at):
    data = bytearray(good.encode(encoding))
    data[bad_at] = 0xFF  # inside a multi-byte character (utf-8) / a lead byte no GBK character has
    path = tmp_path / "bad.txt"
    path.write_bytes(bytes(data))
    with pytest.raises(UnicodeDecodeError) as whole:
        bytes(data).decode(encoding)
    with pytest.raises(UserError) as info:
        list(corpus.file_chunks(path, encoding, chunk_bytes))
    assert str(info.value).startswith(
        f"{path}: byte 0x{data[whole.value.start]:02x} at offset {whole.value.start} is not valid {encoding}")


@pytest.mark.parametrize("chunk_bytes", [1, 3, 1 << 22])
def test_normalised_chunks_join_to_the_whole_file_decoded(tmp_path, chunk_bytes):
    raw = "\ufeffa\r\nb\rc\r\r\n中\r".encode("utf-8") * 5
    path = write(tmp_path / "x.txt", raw.decode("utf-8"))
    chunks = list(corpus.file_chunks(path, "utf-8", chunk_bytes))
    assert "".join(chunks) == raw.decode("utf-8")[1:].replace("\r\n", "\n").replace("\r", "\n")
    assert all(chunks) and max(len(c.encode("utf-8")) for c in chunks) <= max(chunk_bytes, 4) + 1


def test_binary_file_is_a_one_line_error_naming_it(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"DATA\x00\x00" + bytes(range(256)))  # (a zip archive, "PK\x03\x04", is told as one)
    for kind in ("text", "pinyin"):
        with pytest.raises(UserError, match=f"{re.escape(str(path))} looks like a binary file, not text: NUL "
                                            f"character at character 4"):
            corpus.load_corpus([path], kind=kind)


def test_directories_are_read_recursively_in_sorted_order_skipping_hidden_files(tmp_path):
    root = tmp_path / "books"
    (root / "b" / ".git").mkdir(parents=True)
    write(root / "b" / "2.txt", "two")
    write(root / "b" / ".git" / "HEAD", "hidden")
    write(root / "a.txt", "one")
    write(root / "c.txt", "three")
    write(root / ".DS_Store", "hidden")
    write(root / "b" / "10.txt", "ten")
    assert corpus.load_corpus([root], kind="text") == "one\nten\ntwo\nthree"


def test_globs_expand_in_sorted_order_and_entries_keep_their_order(tmp_path):
    for name, text in [("x1.txt", "a"), ("x2.txt", "b"), ("y.md", "c")]:
        write(tmp_path / name, text)
    assert corpus.load_corpus([str(tmp_path / "y.md"), str(tmp_path / "x*.txt")], kind="text") == "c\na\nb"
    assert corpus.load_corpus([str(tmp_path / "**" / "*.md")], kind="text") == "c"


def test_an_existing_file_whose_name_has_glob_characters_is_that_file(tmp_path):
    write(tmp_path / "x[1].txt", "bracket")
    write(tmp_path / "x1.txt", "plain")
    assert corpus.load_corpus([str(tmp_path / "x[1].txt")], kind="text") == "bracket"
    assert corpus.load_corpus([str(tmp_path / "x[0-9].txt")], kind="text") == "plain"  # no such file: a glob


def test_a_glob_names_each_file_once_while_entries_may_repeat_one(tmp_path):
    """"d/**" matches d, d/sub and the files in both: each file is read once. Listing a file in
    two entries still reads it twice (the documented way to weight a file)."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write(tmp_path / "d" / "a.txt", "one")
    write(tmp_path / "d" / "sub" / "b.txt", "two")
    assert corpus.load_corpus([str(tmp_path / "d" / "**")], kind="text") == "one\ntwo"
    assert corpus.load_corpus([str(tmp_path / "d" / "a.txt")] * 2, kind="text") == "one\none"
    (tmp_path / "d" / "self").symlink_to("../d")  # a link back up: "**" would follow it 40 deep
    (tmp_path / "d" / "again").symlink_to("sub")
    assert corpus.load_corpus([str(tmp_path / "d" / "**")], kind="text") == "one\ntwo"


def test_an_empty_entry_is_an_error_not_the_current_directory(tmp_path, monkeypatch):
    write(tmp_path / "notes.txt", "not a corpus")
    monkeypatch.chdir(tmp_path)
    for entries in ([""], [str(tmp_path / "notes.txt"), "  "]):
        with pytest.raises(UserError, match=rf"data.paths: entry {len(entries)} of {len(entries)} is empty"):
            corpus.load_corpus(entries, kind="text")


def test_a_directory_or_glob_skips_the_empty_files_it_finds_but_a_named_one_is_an_error(tmp_path):
    root = tmp_path / "books"
    root.mkdir()
    write(root / "a.txt", "one")
    write(root / "placeholder.txt", "")
    write(root / "b.txt", "two")
    assert corpus.load_corpus([root], kind="text") == "one\ntwo"
    assert corpus.load_corpus([str(root / "*.txt")], kind="pinyin") == "one\ntwo"
    with pytest.raises(UserError, match="placeholder.txt is empty"):
        corpus.load_corpus([root / "a.txt", root / "placeholder.txt"], kind="text")
    with pytest.raises(UserError, match=r"data.paths: .*place\*.txt holds only empty \(0-byte\) files"):
        corpus.load_corpus([str(root / "place*.txt")], kind="text")
    write(root / "blank.txt", " \n")  # whitespace only is not 0 bytes: still an error, wherever it came from
    with pytest.raises(UserError, match="blank.txt is empty"):
        corpus.load_corpus([root], kind="text")


def test_empty_directory_and_unmatched_glob_are_one_line_errors(tmp_path):
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(UserError, match=f"directory {re.escape(str(tmp_path / 'empty'))} holds no corpus file"):
        corpus.load_corpus([tmp_path / "empty"], kind="text")
    with pytest.raises(UserError, match=r"data.paths: .*nothing\*.txt matches no file"):
        corpus.load_corpus([str(tmp_path / "nothing*.txt")], kind="text")


def test_a_runs_relative_paths_are_found_where_it_trained_when_they_name_nothing_here(tmp_path, monkeypatch):
    """sources.found_under: a relative entry (file, directory, glob) that names nothing in the current
    directory but something under the run's workdir points there; one that exists here, an absolute
    one, or one found in neither place stays as it stands (and fails as before, naming itself)."""
    trained, here = tmp_path / "trained", tmp_path / "elsewhere"
    for d in (trained / "books", here):
        d.mkdir(parents=True)
    write(trained / "a.txt", "a")
    write(trained / "books" / "b.txt", "b")
    write(here / "c.txt", "c here")
    write(trained / "c.txt", "c there")
    monkeypatch.chdir(here)
    entries = ["a.txt", "books", "books/*.txt", "c.txt", str(tmp_path / "x.txt"), "gone.txt"]
    assert sources.found_under(entries, str(trained)) == [
        str(trained / "a.txt"), str(trained / "books"), str(trained / "books" / "*.txt"), "c.txt",
        str(tmp_path / "x.txt"), "gone.txt"]
    assert sources.found_under(entries, None) == entries  # a checkpoint from before the workdir was kept
    assert sources.found_under(entries, 123) == entries  # a damaged checkpoint's: not a path
    odd = tmp_path / "run[1]"  # a workdir whose name reads as a pattern
    (odd / "books").mkdir(parents=True)
    write(odd / "books" / "b.txt", "odd")
    assert corpus.load_corpus(sources.found_under(["books/*.txt", "sub/../books/b.txt"], str(odd)),
                              kind="text") == "odd\nodd"
    moved = sources.found_under(["a.txt", "books/*.txt", "c.txt"], str(trained))
    assert corpus.load_corpus(moved, kind="text") == "a\nb\nc here"


def _without_root(code: str) -> subprocess.CompletedProcess:
    """Run Python `code` where a directory's mode 000 holds. Root reads through it, so as root the
    code runs in a user namespace (`unshare -r`), where the files of another user (chown'd to
    nobody by the caller) keep their modes."""
    prefix = ["unshare", "-r"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_directory_that_cannot_be_read_is_an_error_not_part_of_the_corpus_left_out(tmp_path):
    """A walk or a glob passed over it without a word (training on part of the corpus), and a file
    beneath it was a PermissionError traceback."""
    (tmp_path / "c" / "locked").mkdir(parents=True)
    write(tmp_path / "c" / "a.txt", "a")
    write(tmp_path / "c" / "locked" / "b.txt", "b")
    locked = tmp_path / "c" / "locked"
    if os.geteuid() == 0:
        for path in (locked, locked / "b.txt"):
            os.chown(path, 65534, 65534)
    locked.chmod(0)
    try:
        for entry in [tmp_path / "c", f"{tmp_path}/c/**", f"{tmp_path}/c/locked/*.txt", locked / "b.txt",
                      f"{tmp_path}/c/**/*.txt", f"{tmp_path}/c/*/*.txt", f"{tmp_path}/c/locked/deep/*.txt"]:
            run = _without_root(f"from rnn_train.data import sources\nsources.resolve_paths([{str(entry)!r}])")
            assert run.returncode == 1 and run.stderr.splitlines()[-1].startswith("rnn_train.errors.UserError: "), \
                run.stderr
            said = run.stderr.splitlines()[-1].split(": ", 1)[1]
            reach = f"data.paths: cannot reach {locked / 'b.txt'}: permission denied on a directory on its path"
            assert said in (f"data.paths: cannot read directory {locked}: permission denied",
                            f"data.paths: cannot read directory {locked / 'deep'}: permission denied", reach)
        glob = str(tmp_path / "c" / "*.txt")
        ok = _without_root(f"from rnn_train.data import sources\nsources.resolve_paths([{glob!r}])")
        assert ok.returncode == 0, ok.stderr  # a glob that searches no locked directory
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("data, says", [
    ("ni hao\n".encode("utf-16-le") * 40, "NUL character at character 1 (UTF-16-LE without a byte-order mark? "
                                          "set data.encoding=utf-16-le)"),
    ("ni hao\n".encode("utf-16-be") * 40, "NUL character at character 0 (UTF-16-BE without a byte-order mark? "
                                          "set data.encoding=utf-16-be)"),
    ("ni hao\n".encode("utf-32-le") * 40, "(UTF-32-LE without a byte-order mark? set data.encoding=utf-32-le)"),
    ("Olá mundo\n".encode("utf-16-le"), "(UTF-16-LE without a byte-order mark? set data.encoding=utf-16-le)"),
    (b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x03\x00>\x00\x01\x00\x00\x00" * 8, "NUL character at character 7 "
                                                                                "(data.paths takes text files)"),
    (b"hello\n" + bytes(4096), "NUL character at character 6 (data.paths takes text files)"),  # a NUL-filled tail
    (b"abc" + bytes(100), "NUL character at character 3 (data.paths takes text files)"),
    ("ni hao\n".encode("utf-32"), "byte 0xff at offset 0 is not valid utf-8 (set data.encoding, e.g. utf-32)"),
])
def test_a_utf16_or_utf32_file_read_as_utf8_gets_a_hint_at_its_encoding_a_binary_file_none(tmp_path, data, says):
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    with pytest.raises(UserError) as err:
        corpus.read_text(path)
    assert str(err.value).endswith(says)


def _zipped(path: Path, data: bytes) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("corpus.txt", data)


@pytest.mark.parametrize("pack, kind", [
    ("gzip", "gzip-compressed, not text: unpack it first (gunzip)"),
    ("bz2", "bzip2-compressed, not text: unpack it first (bunzip2)"),
    ("lzma", "xz-compressed, not text: unpack it first (unxz)"),
    ("zip", "a zip archive, not text: unpack it first (unzip)"),
])
def test_a_compressed_corpus_is_told_to_be_unpacked_not_to_set_an_encoding(tmp_path, pack, kind):
    """A .gz corpus was told `byte 0x8b at offset 1 is not valid utf-8 (set data.encoding, e.g. cp1252 ...)`."""
    import importlib

    data = "To be, or not to be, that is the question:\n".encode() * 200
    path = tmp_path / f"corpus.{pack}"
    if pack == "zip":
        _zipped(path, data)
    else:
        path.write_bytes(importlib.import_module(pack).compress(data))
    with pytest.raises(UserError) as e:
        corpus.read_text(path)
    assert str(e.value) == f"{path} is {kind}"


def test_a_text_that_starts_as_an_archive_signature_does_is_read(tmp_path):
    path = tmp_path / "bzh.txt"
    path.write_text("BZh is how a bzip2 file starts, PK\x03\x04 a zip\n", encoding="utf-8")
    assert corpus.read_text(path).startswith("BZh is")
    path.write_bytes("BZh is a format; café au lait\n".encode("cp1252"))  # another encoding: told so, not bzip2
    with pytest.raises(UserError, match=re.escape("is not valid utf-8 (set data.encoding")):
        corpus.read_text(path)
