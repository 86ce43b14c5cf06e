"""The solve prompt and the answer-conditioned (explanation) prompt, which differ only by one sentence.

ExPO samples a self-explanation `c ~ pi(.|q, a*)` with a prompt that states the correct answer and asks
for the reasoning that reaches it, then trains on `c` under the plain solve prompt `q`. For the
explanation to be in-distribution for the solve prompt, the two prompts must be the same text except
for the hint sentence: `explain_prompt` is `solve_prompt` with the hint inserted before or after the
question (and nothing else changed), which tests/test_prompts.py checks character by character.

    solve_prompt("What is 2+3?", tok, PromptConfig())
    explain_prompt("What is 2+3?", "5", tok, PromptConfig())   # + "The correct answer is 5. ..."

Templates are filled by plain substitution of `{question}` / `{answer}`, never `str.format`, so braces
in questions, answers (`\\frac{1}{2}`) and templates (`\\boxed{}`) are kept as they are.

One token sequence per prompt: every path that turns a prompt into ids (generation for explanations,
evaluation and DPO's rejected solutions, TRL's GRPO rollouts, the ExPO NLL, TRL's DPO pairs, the
in-distribution check) must condition on the same ids, or the policy is trained on prompts it is never
evaluated on. TRL tokenizes text prompts with `tokenizer(text)`, special tokens on; a Llama-3-style
chat template already writes `<|begin_of_text|>` into the text, so that call would give [BOS, BOS, ...].
Hence the two forms of a prompt defined here:
- the text (`solve_prompt`, `explain_prompt`): the rendered template, less a leading BOS that the
  tokenizer's own call adds back (`strip_added_bos`); this is what TRL's data sets hold;
- the ids (`prompt_ids`): `tokenizer(text)` with special tokens on, exactly TRL's call, so the text
  round-trips to the same ids through TRL, and a text that still carries the BOS gets it once.
ChatML templates (SmolLM2, Qwen) start with `<|im_start|>` and their tokenizers add nothing: unchanged.
tests/test_prompt_tokens.py checks every path against these ids for both kinds of tokenizer.
"""

from __future__ import annotations

from typing import Any

from expo.config import PromptConfig

HINT_SEPARATOR = "\n\n"  # between the hint sentence and the question
PLAIN_TEMPLATE = "{content}\n"  # without a chat template: the user text, then a newline to answer after


def hint_sentence(answer: str, cfg: PromptConfig) -> str:
    """The one sentence that states the answer and asks for the reasoning that reaches it."""
    return cfg.hint_template.replace("{answer}", str(answer))


def solve_content(question: str, cfg: PromptConfig) -> str:
    """The user message of the solve prompt (before any chat formatting)."""
    return cfg.solve_template.replace("{question}", question)


def explain_content(question: str, answer: str, cfg: PromptConfig) -> str:
    """The solve prompt's user message with the hint sentence inserted before or after it."""
    hint, body = hint_sentence(answer, cfg), solve_content(question, cfg)
    if cfg.hint_position == "before":
        return hint + HINT_SEPARATOR + body
    return body + HINT_SEPARATOR + hint


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True when `tokenizer(text)` (special tokens on, as TRL calls it) puts the BOS token first itself
    (Llama 3, Mistral, Gemma); False for ChatML tokenizers (SmolLM2, Qwen), which add nothing."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    with_special = list(tokenizer("a")["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    return len(with_special) > len(without) and with_special[0] == bos_id


def strip_added_bos(text: str, tokenizer: Any) -> str:
    """`text` without its leading BOS string when the tokenizer's own call adds that BOS back."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and tokenizer_adds_bos(tokenizer):
        return text[len(bos):]
    return text


def prompt_ids(text: str, tokenizer: Any) -> list[int]:
    """The token ids of a prompt, the same for every path: `tokenizer(text)` with special tokens on,
    which is what TRL computes from our prompt texts (GRPO rollouts, DPO pairs). A text that still
    begins with a BOS the tokenizer adds gets it once, not twice."""
    return list(tokenizer(strip_added_bos(text, tokenizer))["input_ids"])


def render(content: str, tokenizer: Any, cfg: PromptConfig) -> str:
    """`content` as one user turn: the tokenizer's chat template (with the assistant header) when it
    has one and `cfg.use_chat_template`, else the plain template. A leading BOS that the tokenizer adds
    by itself is left out of the text (module docstring: the text must round-trip to `prompt_ids`)."""
    if cfg.use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        return strip_added_bos(text, tokenizer)
    return PLAIN_TEMPLATE.replace("{content}", content)


def solve_prompt(question: str, tokenizer: Any, cfg: PromptConfig) -> str:
    """The prompt the policy solves from (rollouts, evaluation, and the explanation NLL's conditioning)."""
    return render(solve_content(question, cfg), tokenizer, cfg)


def explain_prompt(question: str, answer: str, tokenizer: Any, cfg: PromptConfig) -> str:
    """The answer-conditioned prompt: `solve_prompt` plus the hint sentence, nothing else changed."""
    return render(explain_content(question, answer, cfg), tokenizer, cfg)
