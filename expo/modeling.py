"""Loading models and tokenizers safely (safetensors only, no remote code unless asked)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Tokenizers saved from a bare `tokenizers.Tokenizer` (our character tokenizer) declare one of these.
# AutoTokenizer would swap in the model type's own class (Qwen2Tokenizer beside a Qwen2 config) and
# replace the pre-tokenizer, so load them as they were saved.
_PLAIN_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `path` (a folder or hub id), left-padded for batched generation."""
    config_file = Path(path) / "tokenizer_config.json"
    declared = None
    if config_file.is_file():
        declared = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
    if declared in _PLAIN_TOKENIZER_CLASSES:
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
