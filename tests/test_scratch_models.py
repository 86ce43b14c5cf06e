"""The local tokenizers and tiny models: words as single tokens survive a save and reload."""

from __future__ import annotations

from transformers import AutoTokenizer

from expo.scratch_models import char_tokenizer


def test_words_are_single_tokens_longest_first(tmp_path):
    tok = char_tokenizer("0123456789 :\\{}boxed\n", words=("\\boxed", "47", "147"))
    ids = tok("147 47 1470 \\boxed{47}", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces == ["147", " ", "47", " ", "147", "0", " ", "\\boxed", "{", "47", "}"]
    assert tok.decode(ids) == "147 47 1470 \\boxed{47}"


def test_words_survive_save_and_reload(tmp_path):
    tok = char_tokenizer("0123456789 .+*?()[]|", words=("a+b", "(x)", "123"))
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "a+b (x) 1234 a+"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.convert_ids_to_tokens(again(text, add_special_tokens=False)["input_ids"])[:5] == [
        "a+b", " ", "(x)", " ", "123"]


def test_without_words_every_character_is_a_token():
    tok = char_tokenizer("ab")
    assert tok.convert_ids_to_tokens(tok("abba", add_special_tokens=False)["input_ids"]) == list("abba")
    assert tok.convert_ids_to_tokens(tok("abc", add_special_tokens=False)["input_ids"])[-1] == "<unk>"
