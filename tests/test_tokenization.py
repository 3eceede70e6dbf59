"""Tokenization edge cases: BPE training tokens equal `encode` of the whole text however
the text is cut into parallel pieces; decoding an id outside the vocabulary is a clear error."""

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learnpos.data.text import Corpus, _encode, tokenize_cached
from learnpos.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from learnpos.errors import DataError

CODE = ("def f(x):\n    if x:\n        return x  \n\treturn 0\n\n\n\nclass A:\n\t\tpass\n"
        "  \n \n\t\n")
CRLF = "first line\r\n  indented\r\n\r\n\r\n\tTab\r\nlast\r\n"
MIXED = ("To be, or not to be: that's the question.\n学而时习之，不亦说乎？\n"
         "emoji 😀🙂 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 ok\n"
         "lone\rcarriage\r\rreturns 1 2 3.\n")
UNICODE_SPACE = "a\u00a0b\u3000c\u2028d\u2029e\x85f\x1cg\x1fh\u200bi\ufeffj \u00a0\nk\u3000\n\u00a0l\n"


@functools.lru_cache(maxsize=1)
def bpe() -> BPETokenizer:
    # Merges for whitespace runs ("\n    ", "\r\n", "\n\n\n") exist, so a wrong cut changes tokens.
    return BPETokenizer.train((CODE + CRLF + MIXED + UNICODE_SPACE) * 30, vocab_size=400)


TEXTS = {
    "indented code": CODE * 5,
    "blank-line runs": "a\n\n\n\nb\n\n\n\n\n\n    c\n\n \n\n",
    "CRLF": CRLF * 5,
    "lone CR": "one\rtwo\r\r  three\r\n\r",
    "CJK and emoji": MIXED * 3,
    "unicode spaces": UNICODE_SPACE * 3,
    "no newline": "a long line with words, numbers 12345 and 'quotes' it's done " * 5,
    "only whitespace lines": " \n\n\t\n   \n\r\n \t \n" * 5,
    "only whitespace, no newline": "     \t   ",
    "no whitespace at all": "学而时习之😀👨‍👩‍👧x.1'" * 10,
    "empty": "",
    "single char": "x",
}


@pytest.mark.parametrize("name", list(TEXTS))
@pytest.mark.parametrize("piece_chars", [1, 7, 50])
def test_bpe_pieces_encode_like_the_whole_text(name, piece_chars):
    text = TEXTS[name]
    tok = bpe()
    assert _encode(tok, text, piece_chars=piece_chars) == tok.encode(text)


def test_small_pieces_really_cut_the_text():
    """The equality above is only evidence if the text was cut into many pieces."""
    from learnpos.data.text import _pieces

    for name in ("indented code", "CRLF", "CJK and emoji", "no newline", "unicode spaces"):
        pieces = _pieces(TEXTS[name], 50)
        assert "".join(pieces) == TEXTS[name] and len(pieces) >= len(TEXTS[name]) // 100, name
    assert _pieces(TEXTS["no whitespace at all"], 5) == [TEXTS["no whitespace at all"]]
    assert _pieces(TEXTS["only whitespace lines"], 5) == [TEXTS["only whitespace lines"]]
    assert _pieces("", 5) == []


ALPHABET = [" ", "\t", "\n", "\r", "a", "s", "中", "😀", "\u200d", "'", "1", ".", "\u00a0", "\u3000", "\x1c"]


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=ALPHABET, max_size=200), piece_chars=st.integers(1, 40))
def test_bpe_pieces_property(text, piece_chars):
    tok = bpe()
    assert _encode(tok, text, piece_chars=piece_chars) == tok.encode(text)


def test_other_pretokenizer_settings_are_not_cut():
    """Cutting is proven only for GPT-2 byte-level pre-tokenization without a prefix space;
    a tokenizer set up otherwise is encoded whole."""
    from tokenizers import pre_tokenizers

    tok = BPETokenizer(bpe().tok.__class__.from_str(bpe().tok.to_str()))
    tok.tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    text = TEXTS["indented code"]
    assert _encode(tok, text, piece_chars=7) == tok.encode(text)
    tok.tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert _encode(tok, text, piece_chars=7) == tok.encode(text)


def test_tokenize_cached_train_tokens_equal_encode(tmp_path):
    """The public path: cached training tokens are exactly `encode(train_text)`, for a text
    long enough to be cut into pieces by the default piece size (and by the old 1000 lines)."""
    block = CODE + CRLF + MIXED + "    indented after a blank line\n\n\n" + UNICODE_SPACE
    train = block * (3000 // block.count("\n") + 1) * 4
    corpus = Corpus(train, MIXED, "fp")
    tok = bpe()
    tok.save(tmp_path / "tok.json")
    assert tok.cuts_like_gpt2 and load_tokenizer(tmp_path / "tok.json").cuts_like_gpt2  # cut, not encoded whole
    data = tokenize_cached(corpus, tok, tmp_path / "tok.json", tmp_path / "cache")
    assert data.train.tolist() == tok.encode(train)
    assert data.val.tolist() == tok.encode(MIXED)


# ---------------------------------------------------------------------------- decode range


def test_char_decode_out_of_range_is_a_clear_error():
    tok = CharTokenizer.train("abc")
    assert tok.decode([0, 1, 2]) == "abc"
    with pytest.raises(DataError, match=r"token id 3 is outside this character tokenizer's 3 symbols.*"
                                        r"larger than its tokenizer.s: only ids below"):
        tok.decode([0, 3])
    with pytest.raises(DataError, match=r"token id -1 is outside this character tokenizer's 3 symbols"):
        tok.decode([-1])  # not silently the last character


def test_bpe_decode_out_of_range_is_a_clear_error():
    tok = bpe()
    n = tok.vocab_size
    assert tok.decode(tok.encode("ok")) == "ok"
    tok.decode([n - 1])  # the largest id is fine
    with pytest.raises(DataError, match=rf"token id {n} is outside this BPE tokenizer's {n} tokens.*"
                                        r"larger than its tokenizer.s: only ids below"):
        tok.decode([0, n])  # the tokenizers library would silently drop it
    with pytest.raises(DataError, match=rf"token id -2 is outside this BPE tokenizer's {n} tokens"):
        tok.decode([-2])  # the library would raise OverflowError
