"""Models and tokenizers built from scratch in this process (random weights, no hub): tiny Qwen2 causal
LMs and character-level tokenizers, for tests, benchmarks and the embedded default (expo.toy warms one
up on its task). A standard architecture (Qwen2) so the same code paths serve real models.

    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden=64, layers=2)
"""

from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
# Printable ASCII covers MATH-style LaTeX and GSM8K text; newline and tab included.
DEFAULT_CHARS = string.printable


def char_tokenizer(chars: str = DEFAULT_CHARS, words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """One token per character, except `words`, which are one token each wherever they occur (longest
    first); unknown characters map to <unk>. Left padding (for generation).

    `words` gives numbers their own tokens, as real tokenizers do (Llama 3 and Qwen2.5 split digits
    into groups of up to three): `char_tokenizer("0123456789 ", words=("47",))` reads "147" as 1, 47.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL.values())}
    for piece in [*dict.fromkeys(chars), *words]:
        vocab.setdefault(piece, len(vocab))
    longest_first = sorted(set(words), key=len, reverse=True)
    pattern = "|".join([*(_regex_literal(w) for w in longest_first), "."])
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL["pad"], bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"], unk_token=SPECIAL["unk"],
        padding_side="left",
    )
    return tok


def _regex_literal(text: str) -> str:
    """`text` matched literally by the tokenizers (Rust) regex, which rejects Python's escapes of
    ordinary characters such as a space."""
    return "".join("\\" + ch if ch in _REGEX_META else ch for ch in text)


_REGEX_META = set("\\.+*?()|[]{}^$#&-~")


def tiny_qwen2(tokenizer: PreTrainedTokenizerFast, hidden: int = 64, layers: int = 2, heads: int = 4,
               max_positions: int = 512, seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 sized for CPU tests (hidden=64, layers=2: about 0.1M parameters)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
