"""The vocab is deterministic, has <unk> at 0, and encodes without a per-character Python loop."""
import numpy as np
import pytest

from rnn_train.data.vocab import UNK, Vocab, smallest_dtype


def test_ids_follow_frequency_then_code_point():
    v = Vocab.build("banana bread")  # a:4, b:2, n:2, e:1, r:1, d:1, ' ':1
    assert v.itos == [UNK, "a", "b", "n", " ", "d", "e", "r"]


def test_build_is_deterministic_whatever_the_order_of_first_appearance():
    assert Vocab.build("abcabc") == Vocab.build("cbacba")


def test_min_freq_and_max_size_send_rare_characters_to_unk():
    text = "aaaabbbcc d"
    assert Vocab.build(text, min_freq=3).itos == [UNK, "a", "b"]
    v = Vocab.build(text, max_size=2)
    assert v.itos == [UNK, "a", "b"]
    assert v.encode("abcd").tolist() == [1, 2, 0, 0]


def test_encode_matches_a_naive_lookup_including_unknown_and_astral_characters():
    text = "中文 pinyin 😀 zhong guo\n" * 50
    v = Vocab.build(text[:40])
    fast = v.encode(text + "☃")
    naive = [v.stoi.get(c, 0) for c in text + "☃"]
    assert fast.tolist() == naive
    assert v.decode(v.encode("zhong")) == "zhong"


def test_decode_takes_arrays_of_any_integer_dtype_lists_and_iterators():
    v = Vocab.build("中文 pinyin 😀")
    ids = v.encode("pin 😀中?")
    want = "pin 😀中" + UNK
    assert v.decode(ids) == v.decode(ids.astype(np.int64)) == v.decode(ids.tolist()) == want
    assert v.decode(iter(ids.tolist())) == want and v.decode([]) == v.decode(np.array([], np.uint8)) == ""


def test_encoded_array_uses_the_smallest_integer_dtype():
    assert Vocab.build("abc").encode("abc").dtype == np.uint8
    big = "".join(chr(0x4E00 + i) for i in range(300))
    assert Vocab.build(big).encode(big).dtype == np.uint16
    assert smallest_dtype(70_000) == np.int32


def test_round_trip_through_plain_list():
    v = Vocab.build("hello world\n")
    assert Vocab.from_list(v.to_list()) == v
    assert all(isinstance(c, str) for c in v.to_list())


def test_unknown_chars_listed_in_order_of_appearance():
    v = Vocab.build("abc")
    assert v.unknown_chars("axbyx") == ["x", "y"]


def test_unknown_characters_are_named_repr_d_the_first_ten_then_an_ellipsis():
    v = Vocab.build("ab")
    assert v.unknown_shown("abab") == ""
    assert v.unknown_shown("a\tb\x1b") == "'\\t', '\\x1b'"
    ten, twelve = "cdefghijkl", "cdefghijklmn"
    assert v.unknown_shown(ten) == ", ".join(repr(c) for c in ten)
    assert v.unknown_shown(twelve) == ", ".join(repr(c) for c in ten) + ", ..."


def test_a_text_the_vocab_cannot_spell_is_quoted_as_typed_with_what_it_lacks():
    v = Vocab.build("ab ")
    assert v.cannot_spell("ab ba") == ""
    assert v.cannot_spell("abc") == "'abc' cannot be spelled with the model's vocab (no 'c')"
    assert v.cannot_spell("xa ", given="xa") == "'xa' cannot be spelled with the model's vocab (no 'x')"


def test_malformed_vocab_lists_are_rejected():
    from rnn_train.errors import UserError

    for bad in ([], ["a", UNK], [UNK, "ab"], [UNK, "a", "a"]):
        with pytest.raises(UserError):
            Vocab(bad)


def test_encoding_code_point_arrays_agrees_with_a_naive_lookup_on_both_paths():
    v = Vocab.build("hello world")  # uint8 ids: ASCII input takes bytes.translate
    ascii_text = "hello, big wide world!\n\x7f"
    cps8 = np.frombuffer(ascii_text.encode("ascii"), np.uint8)
    cps32 = np.frombuffer((ascii_text + "é中😀").encode("utf-32-le"), np.uint32)
    assert v.encode_code_points(cps8).tolist() == [v.stoi.get(c, 0) for c in ascii_text]
    assert v.encode_code_points(cps32).tolist() == [v.stoi.get(c, 0) for c in ascii_text + "é中😀"]
    assert v.encode_code_points(cps8).dtype == v.encode_code_points(cps32).dtype == np.uint8


def test_vocab_from_counts_orders_by_count_then_code_point_and_applies_the_limits():
    counts = np.zeros(200, np.int64)
    counts[[ord("b"), ord("a"), ord("c"), ord("d")]] = [5, 5, 9, 1]
    assert Vocab.from_counts(counts).itos == [UNK, "c", "a", "b", "d"]
    assert Vocab.from_counts(counts, min_freq=2, max_size=2).itos == [UNK, "c", "a"]
    assert Vocab.from_counts(np.zeros(0, np.int64)).itos == [UNK]


def test_an_accent_typed_the_other_way_than_the_corpus_wrote_it_is_named_with_the_form_that_spells():
    decomposed = Vocab.build("cafe\u0301 na\u0308ive\n")  # e + U+0301, as some editors write é
    assert decomposed.cannot_spell("caf\u00e9") == (
        "'caf\u00e9' cannot be spelled with the model's vocab (no '\u00e9'; the corpus writes such accents as a "
        "letter and a combining mark: the text in Unicode NFD can be spelled)")
    precomposed = Vocab.build("caf\u00e9 na\u00efve\n")
    assert precomposed.cannot_spell("cafe\u0301").endswith("the corpus writes such accents precomposed: the text in "
                                                          "Unicode NFC can be spelled)")
    assert precomposed.cannot_spell("cafX") == "'cafX' cannot be spelled with the model's vocab (no 'X')"


def test_a_missing_combining_mark_is_named_by_its_code_point_too():
    """repr leaves a combining mark as it is, and it joins the quote before it: "'\u0301'" showed as one
    unreadable glyph. A tab or a zero-width joiner repr escapes already."""
    vocab = Vocab.build("cafe")
    assert vocab.unknown_shown("cafe\u0301\t\u200d") == "'\u0301' (U+0301), '\\t', '\\u200d'"
