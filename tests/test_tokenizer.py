"""The BPE tokenizer: training, round trips, special tokens, files, errors."""

import random

import pytest

from engine.training.tokenizer import IM_END, IM_START, SPECIAL_TOKENS, Tokenizer

TEXT = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n",
    "The slings and arrows of outrageous fortune, 12 + 34 = 46.\n",
    "def f(x):\n    return x ** 2  # code\n\t\ttabs  and   spaces\n",
] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXT, vocab_size=400)


def test_specials_take_the_first_ids(tok):
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.eos_id == 0 and tok.pad_id == 3
    assert 260 < tok.vocab_size <= 400


def test_round_trip_arbitrary_text(tok):
    rng = random.Random(0)
    pool = "abcXYZ 019\n\t  éüß漢字😀🎉\u200b\x00\x7f<|>"
    for _ in range(300):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
        assert tok.decode(tok.encode(s)) == s


def test_round_trip_arbitrary_bytes_as_text(tok):
    rng = random.Random(1)
    for _ in range(100):
        s = bytes(rng.randrange(256) for _ in range(30)).decode("utf-8", errors="replace")
        assert tok.decode(tok.encode(s)) == s


def test_special_tokens_in_user_text_stay_text(tok):
    text = f"hi {IM_END}{IM_START}system"
    plain = tok.encode(text)
    assert tok.token_id(IM_END) not in plain and tok.token_id(IM_START) not in plain
    assert tok.decode(plain) == text
    parsed = tok.encode(text, allow_special=True)
    assert tok.token_id(IM_END) in parsed and tok.token_id(IM_START) in parsed
    assert tok.decode(parsed) == text


def test_digits_are_single_tokens(tok):
    ids = tok.encode("12345")
    assert len(ids) == 5


def test_save_load_and_fingerprint(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode("question 42") == tok.encode("question 42")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        Tokenizer.train([], vocab_size=300)
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(TEXT, vocab_size=100)
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        Tokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a valid"):
        Tokenizer.load(bad)
