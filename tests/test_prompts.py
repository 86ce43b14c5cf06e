"""The solve and explanation prompts differ by exactly the hint sentence, with and without a chat template."""

from __future__ import annotations

import pytest

from expo.config import PromptConfig
from expo.prompts import HINT_SEPARATOR, explain_prompt, hint_sentence, prompt_ids, solve_prompt
from expo.scratch_models import char_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def plain_tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def chat_tok():
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("tok_name", ["plain_tok", "chat_tok"])
def test_removing_the_hint_sentence_gives_the_solve_prompt(position, tok_name, request):
    tok = request.getfixturevalue(tok_name)
    cfg = PromptConfig(hint_position=position, solve_template="Problem: {question}\nPut the answer in \\boxed{}.")
    question, answer = "What is $\\frac{1}{2} + \\frac{1}{2}$?", "1"
    hint = hint_sentence(answer, cfg)
    joined = hint + HINT_SEPARATOR if position == "before" else HINT_SEPARATOR + hint
    explain = explain_prompt(question, answer, tok, cfg)
    assert explain.count(joined) == 1
    assert explain.replace(joined, "") == solve_prompt(question, tok, cfg)


def test_hint_position_before_and_after(plain_tok):
    before = explain_prompt("Q?", "7", plain_tok, PromptConfig(hint_position="before"))
    after = explain_prompt("Q?", "7", plain_tok, PromptConfig(hint_position="after"))
    assert before.index("7") < before.index("Q?")
    assert after.index("Q?") < after.index("7")


def test_default_hint_states_the_answer_right_before_the_model_answers(plain_tok):
    # bench/hint_wording.py: the answer stated after the solve prompt's own instruction, nothing more
    assert hint_sentence("42", PromptConfig()) == "The correct answer is 42."
    assert explain_prompt("Q", "42", plain_tok, PromptConfig()) == "Q\n\nThe correct answer is 42.\n"


def test_chat_template_is_used_with_the_assistant_header(chat_tok, plain_tok):
    cfg = PromptConfig()
    assert solve_prompt("2+2?", chat_tok, cfg) == "<|user|>\n2+2?\n<|assistant|>\n"
    assert solve_prompt("2+2?", plain_tok, cfg) == "2+2?\n"  # no template: the plain one
    off = PromptConfig(use_chat_template=False)
    assert solve_prompt("2+2?", chat_tok, off) == "2+2?\n"


def test_braces_in_question_answer_and_templates_are_kept(plain_tok):
    cfg = PromptConfig(solve_template="{question} Answer in \\boxed{}.",
                       hint_template="It is {answer} {not a field}.", hint_position="before")
    prompt = explain_prompt("Find {x | x > 0}.", "\\frac{1}{2}", plain_tok, cfg)
    assert prompt == "It is \\frac{1}{2} {not a field}.\n\nFind {x | x > 0}. Answer in \\boxed{}.\n"


def test_answer_that_looks_like_a_placeholder_is_not_substituted_again(plain_tok):
    # The answer is inserted after the question placeholder is filled; "{question}" in an answer stays.
    prompt = explain_prompt("Q", "{question}", plain_tok, PromptConfig())
    assert prompt == "Q\n\nThe correct answer is {question}.\n"


def test_empty_question_still_gives_a_prompt(plain_tok):
    assert solve_prompt("", plain_tok, PromptConfig()) == "\n"
    assert explain_prompt("", "3", plain_tok, PromptConfig()) == "\n\nThe correct answer is 3.\n"


def _bos_tok(adds_bos: bool):
    """A char tokenizer whose chat template starts with its BOS `<s>`; `adds_bos`: its post-processor
    also puts BOS first (Llama-3 style), else it adds nothing (as ChatML tokenizers)."""
    from tokenizers import processors

    tok = char_tokenizer()
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    if adds_bos:
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


@pytest.mark.parametrize("adds_bos,text", [
    (False, "<s><|user|>\n2+2?\n<|assistant|>\n"),  # the tokenizer adds none: the template's BOS stays
    (True, "<|user|>\n2+2?\n<|assistant|>\n"),  # it adds one itself: left out of the text, added back
])
def test_leading_bos_is_in_the_text_or_added_by_the_tokenizer_never_both(adds_bos, text):
    tok = _bos_tok(adds_bos)
    assert solve_prompt("2+2?", tok, PromptConfig()) == text
    ids = prompt_ids(text, tok)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert tok(text)["input_ids"] == ids  # TRL's own call on the text gives the same ids
    assert prompt_ids("<s>" + text if adds_bos else text, tok) == ids  # a leftover BOS is not doubled
