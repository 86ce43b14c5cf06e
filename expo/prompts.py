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


def render(content: str, tokenizer: Any, cfg: PromptConfig) -> str:
    """`content` as one user turn: the tokenizer's chat template (with the assistant header) when it
    has one and `cfg.use_chat_template`, else the plain template."""
    if cfg.use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    return PLAIN_TEMPLATE.replace("{content}", content)


def solve_prompt(question: str, tokenizer: Any, cfg: PromptConfig) -> str:
    """The prompt the policy solves from (rollouts, evaluation, and the explanation NLL's conditioning)."""
    return render(solve_content(question, cfg), tokenizer, cfg)


def explain_prompt(question: str, answer: str, tokenizer: Any, cfg: PromptConfig) -> str:
    """The answer-conditioned prompt: `solve_prompt` plus the hint sentence, nothing else changed."""
    return render(explain_content(question, answer, cfg), tokenizer, cfg)
