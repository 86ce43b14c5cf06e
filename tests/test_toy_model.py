"""build_warm_model: a loadable Hugging Face folder, warmed up on the easy levels only, seeded."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from expo.answers import last_boxed
from expo.artifacts import fingerprint, read_card
from expo.config import ModelConfig, PromptConfig
from expo.errors import DataError
from expo.io import write_jsonl
from expo.modeling import load_tokenizer
from expo.toy.model import WARMUP_LEVELS, TinyArch, WarmupRecipe, build_warm_model, warmup_pairs
from expo.toy.task import (NUMBERS, QUESTION_PREFIX, UNFAMILIAR_BAD, UNFAMILIAR_GOOD, generate_rows, has_property,
                           parse_numbers, verification)

SMALL = TinyArch(hidden=32, layers=1, heads=2)


def _data(tmp_path, per_level: int = 6):
    rows = [{"id": f"q{i}", "question": r["problem"], "answer": last_boxed(r["solution"]),
             "level": int(r["level"].split()[-1]), "solution": r["solution"], "subject": "Needle",
             "source": "builtin:needle"} for i, r in enumerate(generate_rows(0, per_level))]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    return tmp_path / "data", rows


def test_pairs_are_easy_levels_in_both_formats_then_hint_only_then_repeats(tmp_path) -> None:
    _, rows = _data(tmp_path)
    easy = [r for r in rows if r["level"] in WARMUP_LEVELS]
    prompts = PromptConfig(hint_position="after")
    pairs = warmup_pairs(easy, prompts)
    assert len(pairs) == 2 * len(easy) + len(easy) + len(NUMBERS)
    solve, explain = pairs[0], pairs[1]
    assert solve[1] == easy[0]["solution"]
    assert explain[1] == verification(easy[0]["answer"])
    assert easy[0]["answer"] in explain[0] and explain[0] != solve[0]
    # Hint-only: the list has no needle, so the hint is the only way to the boxed number.
    hint_only = pairs[2 * len(easy):3 * len(easy)]
    for prompt, completion in hint_only:
        question = prompt.split("\n\n")[0]
        assert not any(has_property(n) for n in parse_numbers(question))
        assert completion == verification(last_boxed(completion))
        assert f"The correct answer is {last_boxed(completion)}." in prompt
    # Repeats: every number once, boxed, without a check.
    repeats = pairs[3 * len(easy):]
    assert repeats[0][1] == "100 \\boxed{100}" and repeats[0][0].startswith("The correct answer is 100.")
    assert {last_boxed(c) for _, c in repeats} == {str(n) for n in NUMBERS}


def test_the_warm_up_never_says_which_unfamiliar_number_has_a_7(tmp_path) -> None:
    _, rows = _data(tmp_path, per_level=40)
    easy = [r for r in rows if r["level"] in WARMUP_LEVELS]
    unfamiliar = {str(n) for n in UNFAMILIAR_GOOD + UNFAMILIAR_BAD}
    for prompt, completion in warmup_pairs(easy, PromptConfig()):
        if ":" in completion:  # every pair that checks a number: its prompt and check are familiar only
            assert not unfamiliar & set(re.findall(r"\d{3}", prompt + " " + completion))


def test_build_warm_model_saves_a_loadable_seeded_model(tmp_path) -> None:
    data_dir, _ = _data(tmp_path)
    out = build_warm_model(ModelConfig(warmup_steps=3, seed=1), data_dir, tmp_path / "m", arch=SMALL,
                           recipe=WarmupRecipe(batch_size=4))
    assert out == tmp_path / "m"
    assert (out / "model.safetensors").is_file()
    meta = read_card(out)
    assert meta["base"] == "builtin:tiny" and meta["warmup"]["steps"] == 3
    assert meta["fingerprint"] == fingerprint(out)  # the folder's, as on every other model card
    assert meta["warmup"]["examples"] == 3 * 6 + 900  # 6 rows of level 1: two formats, one hint-only; repeats
    tok = load_tokenizer(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok([f"{QUESTION_PREFIX} 512 374"], return_tensors="pt", add_special_tokens=False)
    assert tok.unk_token_id not in ids["input_ids"][0].tolist()  # the alphabet covers the task
    assert tok.convert_ids_to_tokens(ids["input_ids"][0].tolist())[-3:] == ["512", " ", "374"]  # a number, a token
    with torch.no_grad():
        logits = model(**ids).logits  # (1, T, V)
    assert logits.shape[-1] == len(tok)
    # Same seed, same weights: the warm-up is reproducible.
    again = build_warm_model(ModelConfig(warmup_steps=3, seed=1), data_dir, tmp_path / "m2", arch=SMALL,
                             recipe=WarmupRecipe(batch_size=4))
    assert read_card(again)["fingerprint"] == meta["fingerprint"]


def test_warmup_without_easy_rows_is_a_data_error(tmp_path) -> None:
    _, rows = _data(tmp_path)
    write_jsonl(tmp_path / "hard" / "train.jsonl", [r for r in rows if r["level"] not in WARMUP_LEVELS])
    with pytest.raises(DataError, match="no rows of level"):
        build_warm_model(ModelConfig(warmup_steps=1), tmp_path / "hard", tmp_path / "m", arch=SMALL)
    with pytest.raises(DataError, match="does not exist"):
        build_warm_model(ModelConfig(warmup_steps=1), tmp_path / "nowhere", tmp_path / "m", arch=SMALL)
