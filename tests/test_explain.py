"""The self-explanation sampler: filters, keep limit, statistics by level, cache, and the stage."""

from __future__ import annotations

import argparse

import pytest

from expo.answers import last_boxed
from expo.config import ExplainConfig, ExpoConfig, GenerationConfig, PromptConfig
from expo.explain import (
    HINT_PHRASES,
    ExplanationCache,
    generate_explanations,
    hint_phrase,
    judge_text,
    sample_explanations,
)
from expo.generation import Completion
from expo.io import read_json, read_jsonl, write_jsonl
from expo.tiny import char_tokenizer, tiny_qwen2

HINT = "The correct answer is"  # start of the default hint sentence: marks an explanation prompt

# question -> (explanation samples, solve samples). Expected judgements in the comments.
TEXTS = {
    "q1": (["2+3=5 so \\boxed{5}",  # kept
            "\\boxed{5}",  # no_reasoning
            "The correct answer is 5, so 2+3=5 \\boxed{5}",  # refers_to_hint
            "2+3=6 \\boxed{6}"],  # wrong_answer
           ["\\boxed{5}", "\\boxed{4}"]),  # solved 1 of 2
    "q2": (["3+4=7 \\boxed{7}",  # kept
            "3+4=7 \\boxed{7}",  # duplicate (passed)
            "4+3=7 \\boxed{7}",  # kept
            "no box here"],  # no_boxed_answer
           ["\\boxed{1}", "\\boxed{2}"]),  # solved 0 of 2
    "q3": (["1+8=9 \\boxed{9}", "2+7=9 \\boxed{9}",  # kept, kept
            "3+6=9 \\boxed{9}", "4+5=9 \\boxed{9}"],  # over_keep_limit x2 (passed)
           ["\\boxed{9}", "\\boxed{9}"]),  # solved 2 of 2
}
ROWS = [
    {"id": "a", "question": "q1", "answer": "5", "level": 1},
    {"id": "b", "question": "q2", "answer": "7", "level": 1},
    {"id": "c", "question": "q3", "answer": "9", "level": 2},
]
CFG = ExplainConfig(samples_per_question=4, keep_per_question=2, solve_rate_samples=2, temperature=0.7)


class FakeGenerator:
    """Returns the fixed texts above for each question; counts calls and prompts."""

    def __init__(self) -> None:
        self.calls = 0
        self.prompts: list[str] = []
        self.cfg = GenerationConfig(batch_size=32)

    def generate(self, prompts, n=1, temperature=1.0, max_new_tokens=None, seed=None):
        self.calls += 1
        self.prompts.extend(prompts)
        out = []
        for prompt in prompts:
            question = next(q for q in TEXTS if q in prompt)
            texts = TEXTS[question][0 if HINT in prompt else 1]
            assert len(texts) == n
            out.append([Completion(t, [1] * len(t), -float(len(t)), len(t), False) for t in texts])
        return out

    def load_weights(self, model_or_state_dict) -> None:
        pass


def exact_rewards(completions, golds):
    """A stand-in verifier: the last box equals the gold string."""
    return [float(last_boxed(c) == g) for c, g in zip(completions, golds)]


def run(rows=ROWS, cfg=CFG, cache=None, model_key="m1", generator=None, prompts=None):
    generator = generator or FakeGenerator()
    prompts = prompts or PromptConfig()
    records, stats = sample_explanations(generator, rows, cfg, prompts, char_tokenizer(), cache, model_key,
                                         reward_fn=exact_rewards)
    return generator, records, stats


def test_every_sample_is_a_record_with_its_reason():
    _, records, _ = run()
    reasons = [(r["id"], r["sample"], r["reject_reason"], r["accepted"], r["passed"]) for r in records]
    assert reasons == [
        ("a", 0, None, True, True), ("a", 1, "no_reasoning", False, False),
        ("a", 2, "refers_to_hint", False, False), ("a", 3, "wrong_answer", False, False),
        ("b", 0, None, True, True), ("b", 1, "duplicate", False, True),
        ("b", 2, None, True, True), ("b", 3, "no_boxed_answer", False, False),
        ("c", 0, None, True, True), ("c", 1, None, True, True),
        ("c", 2, "over_keep_limit", False, True), ("c", 3, "over_keep_limit", False, True),
    ]
    first = records[0]
    assert set(first) >= {"id", "question", "answer", "level", "explanation", "logprob", "accepted",
                          "reject_reason"}
    assert first["explanation"] == "2+3=5 so \\boxed{5}" and first["logprob"] == -18.0


def test_acceptance_and_solve_rate_by_level_by_hand():
    _, _, stats = run()
    level1, level2 = stats["by_level"]["1"], stats["by_level"]["2"]
    # level 1: 8 samples, passed = a0 + b0, b1, b2 = 4; kept a0, b0, b2 = 3; solve 1 of 4.
    assert (level1["samples"], level1["passed"], level1["kept"]) == (8, 4, 3)
    assert level1["acceptance_rate"] == 0.5 and level1["solve_rate"] == 0.25
    assert level1["questions"] == 2 and level1["coverage"] == 1.0
    # level 2: 4 samples all pass, 2 kept; solve 2 of 2.
    assert (level2["samples"], level2["passed"], level2["kept"]) == (4, 4, 2)
    assert level2["acceptance_rate"] == 1.0 and level2["solve_rate"] == 1.0
    # overall: 8 of 12 passed, 5 kept, 3 of 6 solved.
    assert stats["acceptance_rate"] == pytest.approx(8 / 12) and stats["kept"] == 5
    assert stats["solve_rate"] == 0.5
    assert stats["reject_reasons"] == {"duplicate": 1, "no_boxed_answer": 1, "no_reasoning": 1,
                                       "over_keep_limit": 2, "refers_to_hint": 1, "wrong_answer": 1}


def test_unverifiable_gold_and_unknown_level():
    rows = [{"id": "x", "question": "q1", "answer": "5", "level": None}]
    gen = FakeGenerator()
    records, stats = sample_explanations(gen, rows, CFG, PromptConfig(), char_tokenizer(), None, "m",
                                         reward_fn=lambda c, g: [None] * len(c))
    assert [r["reject_reason"] for r in records] == ["unverifiable"] * 4
    assert stats["by_level"]["unknown"]["solve_rate"] == 0.0


@pytest.mark.parametrize("phrase", HINT_PHRASES)
def test_each_hint_phrase_is_rejected(phrase):
    text = f"Since 2+3=5, {phrase} 5. \\boxed{{5}}"
    assert hint_phrase(text) == phrase
    assert judge_text(text, 1.0, min_reasoning_chars=5) == "refers_to_hint"
    assert judge_text(text.replace(phrase, phrase.upper()), 1.0, 5) == "refers_to_hint"


def test_reasoning_without_hint_words_passes():
    # "thinking" and "hints" contain "hint" only as part of other words.
    assert judge_text("thinking: 2 plus 3 makes 5 \\boxed{5}", 1.0, 5) is None
    assert hint_phrase("no hints, 2+3=5") is None


@pytest.mark.parametrize("text,reason", [
    ("\\boxed{5}", "no_reasoning"),  # nothing before the box
    ("5 = \\boxed{5}", "no_reasoning"),  # 2 non-space characters < 5
    ("2 + 3 =\n\n 5 \\boxed{5}", None),  # 5 non-space characters
    ("2+3=5 \\boxed{5", "no_boxed_answer"),  # unbalanced braces
    ("2+3=5, so 5", "no_boxed_answer"),
])
def test_reasoning_before_the_box(text, reason):
    assert judge_text(text, 1.0, min_reasoning_chars=5) == reason


def test_wrong_answer_is_reported_before_style_problems():
    assert judge_text("\\boxed{6}", 0.0, 5) == "wrong_answer"


def test_empty_question_and_missing_answer_are_skipped_and_counted():
    rows = ROWS[:1] + [{"id": "e", "question": "  ", "answer": "1", "level": 1},
                       {"id": "f", "question": "q2", "answer": "", "level": 1}]
    gen, records, stats = run(rows=rows)
    assert {r["id"] for r in records} == {"a"}
    assert stats["skipped"] == {"empty_question": 1, "missing_answer": 1}
    assert len(gen.prompts) == 2  # one explanation and one solve prompt, for row "a" only


def test_answer_with_braces_reaches_the_prompt_unchanged():
    rows = [{"id": "a", "question": "q1", "answer": "\\frac{1}{2}", "level": 1}]
    gen, _, _ = run(rows=rows)
    assert "The correct answer is \\frac{1}{2}." in gen.prompts[0]


def test_cache_hits_generate_nothing(tmp_path):
    cache = ExplanationCache(tmp_path / "cache.jsonl")
    gen1, records1, stats1 = run(cache=cache)
    assert gen1.calls == 2 and stats1["cache"] == {"hits": 0, "misses": 6}
    reopened = ExplanationCache(tmp_path / "cache.jsonl")  # from disk
    gen2, records2, stats2 = run(cache=reopened)
    assert gen2.calls == 0 and records2 == records1 and stats2["cache"] == {"hits": 6, "misses": 0}


def test_cache_misses_when_model_settings_or_rows_change(tmp_path):
    cache = ExplanationCache(tmp_path)
    run(cache=cache)
    assert run(cache=cache, model_key="m2")[0].calls == 2  # another model
    hotter = ExplainConfig(**{**vars(CFG), "temperature": 1.0})
    assert run(cache=cache, cfg=hotter)[0].calls == 2  # other sampling settings
    new_row = {"id": "d", "question": "q3", "answer": "9", "level": 2}
    gen, _, _ = run(cache=cache, rows=ROWS + [new_row])
    assert len(gen.prompts) == 2  # only the new question, explained and solved


def test_cache_ignores_a_line_cut_short(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = ExplanationCache(path)
    cache.put("k1", [{"text": "t", "logprob": 0.0, "num_tokens": 1, "truncated": False}])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"key": "k2", "samp')  # a crash mid-write
    again = ExplanationCache(path)
    assert len(again) == 1 and again.get("k1")[0]["text"] == "t" and again.get("k2") is None


def test_no_solve_rate_samples_when_disabled():
    cfg = ExplainConfig(**{**vars(CFG), "solve_rate_samples": 0})
    gen, _, stats = run(cfg=cfg)
    assert gen.calls == 1 and stats["solve_rate"] is None


def test_stage_and_cli_on_a_tiny_model(tmp_path, capsys, monkeypatch):
    tok = char_tokenizer()
    model_dir, data_dir, out = tmp_path / "model", tmp_path / "data", tmp_path / "out"
    tiny_qwen2(tok, hidden=32, layers=1, heads=2).save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    write_jsonl(data_dir / "train.jsonl", [
        {"id": str(i), "question": f"What is {i}+1?", "answer": str(i + 1), "level": 1 + i % 2}
        for i in range(3)])
    from expo.cli import explain as cli

    args = argparse.Namespace(data=str(data_dir), model=str(model_dir), output=str(out), config=None,
                              no_progress=True, overrides=["explain.samples_per_question=2",
                                                           "explain.keep_per_question=1",
                                                           "explain.solve_rate_samples=1",
                                                           "generation.max_new_tokens=6"])
    assert cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "level" in printed and "explanations kept of 6 samples" in printed
    records = read_jsonl(out / "explanations.jsonl")
    stats = read_json(out / "stats.json")
    assert len(records) == 6 and stats["samples"] == 6 and set(stats["by_level"]) == {"1", "2"}
    assert all(r["num_tokens"] <= 6 for r in records)
    # Same inputs again: everything from the cache in out/cache.
    again = generate_explanations(_cfg(args), data_dir, model_dir, tmp_path / "out2")
    assert again["cache"]["misses"] == 6 and again["cache"]["hits"] == 0  # cache is per output dir
    # A configured cache folder is shared through the workspace ($EXPO_WORKSPACE) by every run.
    monkeypatch.setenv("EXPO_WORKSPACE", str(out))
    shared = generate_explanations(_cfg(args, "explain.cache_dir=cache"), data_dir, model_dir, tmp_path / "out3")
    assert shared["cache"] == {"hits": 6, "misses": 0}
    assert read_jsonl(tmp_path / "out3" / "explanations.jsonl") == records


def _cfg(args, *extra) -> ExpoConfig:
    from expo.config import load_config

    return load_config(None, [*args.overrides, *extra])
