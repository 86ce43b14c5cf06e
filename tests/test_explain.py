"""The self-explanation sampler: filters, keep limit, statistics by level, cache, and the stage."""

from __future__ import annotations

import argparse

import pytest

from expo.answers import last_boxed
from expo.config import ExplainConfig, ExpoConfig, GenerationConfig, PromptConfig
from expo.explain import (
    HINT_PATTERNS,
    ExplanationCache,
    answer_value,
    derived,
    generate_explanations,
    generator_config,
    hint_phrase,
    judge_text,
    normalise_latex,
    reasoning_chars,
    sample_explanations,
    through_final_answer,
)
from expo.generation import Completion
from expo.io import read_json, read_jsonl, write_jsonl
from expo.scratch_models import char_tokenizer, tiny_qwen2

HINT = "The correct answer is"  # start of the default hint sentence: marks an explanation prompt

# question -> (explanation samples, solve samples). Expected judgements in the comments.
TEXTS = {
    "q1": (["2+3=5 so \\boxed{5}",  # kept
            "\\boxed{5}",  # no_reasoning
            "The correct answer is 5, so 2+3=5 \\boxed{5}",  # refers_to_hint (opens with the answer)
            "2+3=6 \\boxed{6}"],  # wrong_answer
           ["\\boxed{5}", "\\boxed{4}"]),  # solved 1 of 2
    "q2": (["3+4=7 \\boxed{7}",  # kept
            "3+4=7 \\boxed{7}",  # duplicate (passed)
            "4+3=7 \\boxed{7}",  # kept
            "no box here"],  # no_answer
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
        self.budgets: list[tuple[str, int | None]] = []  # (explain / solve, max_new_tokens) per call
        self.cfg = GenerationConfig(batch_size=32)

    def generate(self, prompts, n=1, temperature=1.0, max_new_tokens=None, seed=None):
        self.calls += 1
        self.prompts.extend(prompts)
        self.budgets.append(("explain" if HINT in prompts[0] else "solve", max_new_tokens))
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
        ("b", 2, None, True, True), ("b", 3, "no_answer", False, False),
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
    assert level1["reject_reasons"] == {"duplicate": 1, "no_answer": 1, "no_reasoning": 1,
                                        "refers_to_hint": 1, "wrong_answer": 1}
    assert level2["reject_reasons"] == {"over_keep_limit": 2}
    assert stats["reject_reasons"] == {"duplicate": 1, "no_answer": 1, "no_reasoning": 1,
                                       "over_keep_limit": 2, "refers_to_hint": 1, "wrong_answer": 1}


def test_unverifiable_gold_and_unknown_level():
    rows = [{"id": "x", "question": "q1", "answer": "5", "level": None}]
    gen = FakeGenerator()
    records, stats = sample_explanations(gen, rows, CFG, PromptConfig(), char_tokenizer(), None, "m",
                                         reward_fn=lambda c, g: [None] * len(c))
    assert [r["reject_reason"] for r in records] == ["unverifiable"] * 4
    assert stats["by_level"]["unknown"]["solve_rate"] == 0.0


JUDGE = [
    # (explanation, reason with reward 1.0 and min_reasoning_chars 5)
    # -- the answer treated as given: refers_to_hint
    ("Since the answer is 42, we check 6*7 = 42. \\boxed{42}", "refers_to_hint"),  # a premise
    ("We are given that the answer is 42, and 6*7 = 42. \\boxed{42}", "refers_to_hint"),  # told it
    ("Given the answer 42, note 6*7 = 42. \\boxed{42}", "refers_to_hint"),
    ("The expected answer is 42: 6*7 = 42. \\boxed{42}", "refers_to_hint"),  # someone expects it
    ("To reach the stated answer of 42, multiply 6*7. \\boxed{42}", "refers_to_hint"),  # working toward it
    # -- answer boilerplate is not reasoning: no_reasoning
    ("The answer is \\boxed{42}.", "no_reasoning"),  # the statement alone
    ("**Final Answer**\n\\boxed{42}", "no_reasoning"),  # a markdown header alone
    # -- ordinary solutions: accepted
    ("2 + 3 = 5. Therefore, the correct answer is $\\boxed{5}$.", None),  # an ordinary conclusion
    ("As stated in the problem, 2 + 3 = 5, so \\boxed{5}", None),  # the problem's own givens
    ("Squaring gives 49, so the desired answer is 49. \\boxed{49}", None),  # MATH-500 solution wording
    ("Using the information given in the problem, 2+3=5. \\boxed{5}", None),  # ditto (a 0.5B model's)
    ("Therefore, the correct answer is $\\boxed{5}$.", "no_reasoning"),  # ... but a conclusion alone is none
    # more of the answer treated as given
    ("We were told the answer is 5; indeed 2+3=5. \\boxed{5}", "refers_to_hint"),
    ("The provided answer checks out: 2+3=5. \\boxed{5}", "refers_to_hint"),
    ("2+3=5, which matches the given answer. \\boxed{5}", "refers_to_hint"),
    ("The answer is given as 5, and 2+3=5. \\boxed{5}", "refers_to_hint"),
    ("Let me explain why the answer is 5: 2+3=5. \\boxed{5}", "refers_to_hint"),
    ("The problem says the answer is 5, and 2+3=5. \\boxed{5}", "refers_to_hint"),
    ("Using the hint, 2+3=5. \\boxed{5}", "refers_to_hint"),
    ("As you told me, 2+3=5. \\boxed{5}", "refers_to_hint"),  # addresses whoever gave the answer
    ("Knowing the answer is 5, we see 2+3=5. \\boxed{5}", "refers_to_hint"),
    ("The correct answer is 5. Indeed 2+3=5, so \\boxed{5}", "refers_to_hint"),  # opens with the hint's words
    ("**Answer: 5** Because 2+3=5. \\boxed{5}", "refers_to_hint"),  # opens with the answer
    # more ordinary wording that must pass
    ("2+3=5, so the answer is 5.", None),  # no box: the answer statement is the final answer
    ("2+3=5, so 5", None),  # no box: the last number, as the reward reads it
    ("We are given that x + 2 = 7, so x = 5. \\boxed{5}", None),  # a given of the problem, not the answer
    ("Given the equation x + 2 = 7, x = 5. \\boxed{5}", None),
    ("Since x + 2 = 7, x = 5, and the answer is 5. \\boxed{5}", None),  # "since" about a step
    ("Since the answer must be positive, x = 5. \\boxed{5}", None),  # a constraint, not a value
    ("The answer given by the formula 2+3 is \\boxed{5}", None),  # "answer given by" a computation
    ("No hints needed: thinking it through, 2+3=5. \\boxed{5}", None),  # "hints", "thinking": other words
    ("2 + 3 =\n\n 5 \\boxed{5}", None),  # exactly 5 non-space characters of reasoning
    ("5 = \\boxed{5}", "no_reasoning"),  # 2 < 5
    ("\\boxed{5}", "no_reasoning"),
    ("So the final answer is: $\\boxed{5}$", "no_reasoning"),
    # no final answer
    ("2+3=5 \\boxed{5", "no_answer"),  # the last box never closes
    ("I cannot tell.", "no_answer"),  # nothing that reads as an answer
]


@pytest.mark.parametrize(("text", "reason"), JUDGE)
def test_judge_table(text, reason):
    assert judge_text(text, 1.0, min_reasoning_chars=5) == reason


TOY_QUESTION = "Which has a seven? 512 903 374 118"


@pytest.mark.parametrize(("text", "reason"), [
    ("374:yes \\boxed{374}", None),  # 7 characters of check before the box; 374 is one of the givens
    ("374 \\boxed{374}", "no_reasoning"),  # a bare repeat, 3 characters
])
def test_the_embedded_defaults_explanations(text, reason):
    # expo.toy.task.verification: the answer is among the question's numbers, so naming it first is
    # restating a given, not leaning on the hint
    assert judge_text(text, 1.0, min_reasoning_chars=5, question=TOY_QUESTION) == reason
    assert judge_text(text, 1.0, 5, require_derivation=True, question=TOY_QUESTION) == reason  # 374 occurs


# The structure, not the wording: an explanation that names the answer before it has worked anything
# out, or names it and then works toward it, leans on the answer being given. (explanation, question,
# reason with reward 1.0.) None of these is matched by a phrase of HINT_PATTERNS.
PREMISE = [
    # -- the answer named first, as something known
    ("To confirm the correct answer of 42, we compute 6 * 7 = 42. \\boxed{42}", "", "refers_to_hint"),
    ("Since 42 is the target, we need 6 * 7 = 42. \\boxed{42}", "", "refers_to_hint"),
    ("42 is our answer; let us check: 6 times 7 gives 42. \\boxed{42}", "", "refers_to_hint"),
    ("Let's verify that 42 works: 6 * 7 = 42. So the answer is 42.", "", "refers_to_hint"),
    ("Answer 42. Reason: six sevens, 6 * 7 = 42.", "", "refers_to_hint"),
    ("With 3/4 as the goal, note that 6/8 = 3/4, so \\boxed{\\frac{3}{4}}", "", "refers_to_hint"),
    ("Working backwards from 120 minutes: 2 hours * 60 = 120. \\boxed{120}", "", "refers_to_hint"),
    ("For the correct answer of x^2+1, expand: (x^2+1) = x^2+1. \\boxed{x^2+1}", "", "refers_to_hint"),
    ("We know the total should be 42, and indeed 6 * 7 = 42. \\boxed{42}", "", "refers_to_hint"),
    ("Let's check that 42 is correct: 6 * 7 = 42. \\boxed{42}", "", "refers_to_hint"),
    ("Starting from 42 and dividing by 6 gives 7, so 6 * 7 = 42. \\boxed{42}", "", "refers_to_hint"),
    # -- named after work, as its result or the conclusion: derived
    ("To get the answer of this problem we compute 6 * 7 = 42. \\boxed{42}", "", None),
    ("There are 6 shirts and 7 pants, giving 42 outfits. \\boxed{42}", "", None),
    ("Six boxes of seven is 42 pencils in all. \\boxed{42}", "", None),
    ("6 * 7 = 42, and 42 is the answer. \\boxed{42}", "", None),
    ("First, 6 * 7 = 42. Since 42 is even, the answer stays 42. \\boxed{42}", "", None),
    ("She has 6 bags, 7 each, so she has 42 in total. \\boxed{42}", "", None),
    ("The product of six and seven makes 42. So the answer is \\boxed{42}.", "", None),
    ("Halving 84 leaves 42 for each. \\boxed{42}", "", None),
    ("We multiply: \\( 6 \\times 7 = 42 \\). The answer is $\\boxed{42}$.", "", None),
    ("1. Count the rows: 6.\n2. Count per row: 7.\n3. Multiply: 42.\n\\boxed{42}", "", None),
    ("Step 1: 6 rows. Step 2: 7 per row. Total = \\boxed{42}", "", None),
    ("x + 2 = 7 so x = 5. The answer is 5. \\boxed{5}", "", None),
    ("Half of 84 is 42. \\boxed{42}", "", None),
    ("Tom had 50 apples and ate 8, so 42 apples remain. \\boxed{42}", "", None),
    ("6 rows of 7 seats: in total 42 seats. \\boxed{42}", "", None),
    ("Each of 6 rows holds 7 seats, so we check 6 * 7 = 42 and the total should be 42. \\boxed{42}", "", None),
    # -- the answer is one of the question's givens: restating it is not a premise
    ("Tom keeps all 42 of his apples: nothing is given away. \\boxed{42}", "Tom has 42 apples ...", None),
]


@pytest.mark.parametrize(("text", "question", "reason"), PREMISE)
def test_an_answer_named_before_any_work_is_a_premise(text, question, reason):
    assert hint_phrase(text) is None  # the structure decides, not a phrase
    assert judge_text(text, 1.0, min_reasoning_chars=5, question=question) == reason


def test_every_hint_pattern_has_a_case():
    import re

    rejected = [t for t, r in JUDGE if r == "refers_to_hint"]
    for pattern in HINT_PATTERNS:
        assert any(re.search(pattern, t, re.IGNORECASE) for t in rejected), pattern
    assert hint_phrase("SINCE THE ANSWER IS 42, ...") == "since the answer is 4"  # any case; the match itself


@pytest.mark.parametrize(("text", "chars"), [
    ("The answer is ", 0),  # boilerplate only
    ("**Final Answer**\n", 0),
    ("Therefore, the correct answer is $", 0),
    ("So the final answer is: ", 0),
    ("2+3=5. So the answer is ", 6),  # "2+3=5."
    ("374:yes ", 7),  # the toy's check: nothing removed
])
def test_reasoning_chars_leave_out_answer_boilerplate(text, chars):
    assert reasoning_chars(text) == chars


@pytest.mark.parametrize(("text", "truncated", "reason"), [
    ("2+3=5 so the answer is 5", True, "truncated"),  # cut before a box: its "answer" is unfinished work
    ("We need 2+3, which is", True, "truncated"),  # cut with no answer at all
    ("2+3=5 \\boxed{5", True, "truncated"),  # cut inside the box
    ("2+3=5 \\boxed{5} and then more", True, None),  # a complete box before the cut still counts
    ("2+3=5 so the answer is 5", False, None),  # the same text, finished
])
def test_truncated_explanations(text, truncated, reason):
    assert judge_text(text, 1.0, 5, truncated=truncated) == reason


def test_explanations_rewards_and_evaluation_read_one_final_answer():
    # The filter finds the answer where the reward and evaluation find it (expo.verify.extract_answer):
    # a plain "the answer is 5" counts for all three, a box wins over anything before it.
    from expo.verify import extract_answer

    for text in ("2+3=5, so the answer is 5", "2+3=5 \\boxed{5}", "Answer 4? No: 2+3=5, \\boxed{5}"):
        assert extract_answer(text) == "5"
        assert judge_text(text, 1.0, 5) is None


def test_wrong_answer_is_reported_before_style_problems():
    assert judge_text("\\boxed{6}", 0.0, 5) == "wrong_answer"


def test_an_answer_the_reward_accepts_is_not_rejected_for_its_form():
    # An explanation whose answer the reward accepts through the verifier's fallback is not rejected as
    # `no_boxed_answer`: judged with the real verifier, both read the same answer.
    from expo.verify import rewards

    texts = ["First 2 + 3 = 5. The answer is 5.", "She has 2 + 3 = 5 apples in all (see step 1).",
             "2 + 3 = 5 \\boxed{5}"]
    scores = rewards(texts, ["5"] * len(texts))
    assert scores == [1.0, 1.0, 1.0]
    assert [judge_text(t, r, 5) for t, r in zip(texts, scores)] == [None, None, None]


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
    # The paper's check is scored beside: these rows carry no reference solution, so no pair
    in_dist = read_json(out / "in_distribution.json")
    assert in_dist["overall"]["paired"]["pairs"] == 0 and in_dist["unpaired"]["expert_only"] == 0
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


def test_explanations_have_their_own_token_budget(tmp_path):
    # A hint makes chat models verbose; explanations get explain.max_new_tokens, solves keep
    # generation.max_new_tokens (the fake generator's config: 64).
    cfg = ExplainConfig(**{**vars(CFG), "max_new_tokens": 100})
    gen, _, _ = run(cfg=cfg)
    assert gen.budgets == [("explain", 100), ("solve", 64)]
    gen, _, _ = run()
    assert gen.budgets == [("explain", 64), ("solve", 64)]  # unset: the rollouts' budget


def test_the_explanation_budget_is_part_of_the_cache_key(tmp_path):
    cache = ExplanationCache(tmp_path)
    run(cache=cache)
    same = ExplainConfig(**{**vars(CFG), "max_new_tokens": 64})  # the budget it had: same key, all hits
    assert run(cache=cache, cfg=same)[0].calls == 0
    longer = ExplainConfig(**{**vars(CFG), "max_new_tokens": 100})
    gen = run(cache=cache, cfg=longer)[0]
    assert gen.calls == 1 and all(HINT in p for p in gen.prompts)  # explanations again; solves from the cache


def test_generator_config_fits_the_longer_budget():
    generation = GenerationConfig(max_new_tokens=64)
    assert generator_config(generation, ExplainConfig()) is generation
    assert generator_config(generation, ExplainConfig(max_new_tokens=32)) is generation
    assert generator_config(generation, ExplainConfig(max_new_tokens=256)).max_new_tokens == 256


class TruncatingGenerator(FakeGenerator):
    """Every explanation hits the token limit."""

    def generate(self, prompts, n=1, temperature=1.0, max_new_tokens=None, seed=None):
        out = super().generate(prompts, n, temperature, max_new_tokens, seed)
        if HINT in prompts[0]:
            out = [[Completion(c.text, c.token_ids, c.logprob, c.num_tokens, True) for c in per]
                   for per in out]
        return out


def test_truncated_explanations_are_counted_as_their_own_reason():
    rows = [{"id": "b", "question": "q2", "answer": "7", "level": 1}]
    _, records, stats = run(rows=rows, generator=TruncatingGenerator())
    # q2's samples: three complete boxes (cut after the box: judged as usual) and "no box here".
    assert [r["reject_reason"] for r in records] == [None, "duplicate", None, "truncated"]
    assert stats["reject_reasons"] == {"duplicate": 1, "truncated": 1}
    assert all(r["truncated"] for r in records)


def test_explain_config_keys():
    from expo.config import load_config
    from expo.errors import ConfigError

    cfg = load_config(None, ["explain.max_new_tokens=256"])
    assert cfg.explain.max_new_tokens == 256
    assert load_config(None, []).explain.max_new_tokens is None
    with pytest.raises(ConfigError, match="explain.max_new_tokens"):
        load_config(None, ["explain.max_new_tokens=0"])


@pytest.mark.parametrize("text", [
    "since the " * 100_000 + "answer",  # premise openings that never finish
    "to reach the " + "a" * 1_000_000,  # one endless word where a qualifier may stand
    "the answer is " * 100_000,  # boilerplate everywhere
    " " * 1_000_000 + "answer",
])
def test_filter_stays_linear_on_hostile_input(text):
    import time

    t0 = time.perf_counter()
    judge_text(text, 1.0, 5)
    reasoning_chars(text)
    assert time.perf_counter() - t0 < 5.0  # well under a second here; a quadratic scan takes minutes


# --- explain.require_derivation: the final answer must be a result of the reasoning, not pasted after it.
DERIVATION = [
    # (explanation, reason with reward 1.0, min_reasoning_chars 5 and require_derivation)
    # -- pasted: SmolLM2-135M-Instruct given the answer (the ladder run, trimmed): not_derived
    ("Each room takes 5 hours, so 5 hours * 6 rooms = 25 hours. It will take him 2 * 2 = 4 hours. "
     "So, the answer is 20.", "not_derived"),  # gold 20, computed nowhere
    ("3. Calculate: 42 (total allowance) + 26 = 58, so the answer is 29.\n\nThe correct answer is 29.\n"
     "The answer is 29.", "not_derived"),  # 29 only inside earlier answer statements
    ("1. Add the blocks.\n2. Count them.\n3. Check.\nSo the answer is 3.", "not_derived"),  # list numbers
    ("From step 3, 4 + 4 = 8. So the answer is 3.", "not_derived"),  # a reference, not a value
    ("We solve x^3 + 1 = 9 for x. So the answer is 3.", "not_derived"),  # an exponent
    ("We count 1 + 1 = 2 units, and the answer is 3 units. So the answer is 3.", "not_derived"),
    ("We add 5 * 6 = 30 hours. So, the answer = 20.", "not_derived"),  # "answer =" computes nothing
    ("We have 124 + 6 = 130 apples, so \\boxed{24}", "not_derived"),  # 24 only inside 124
    # -- computed before it is stated: passes
    ("13 * 6 = 78. So the answer is 78.", None),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
     "altogether in April and May.\n#### 72", None),  # GSM8K's calculator notes
    ("He earns 1,200 + 34 = 1,234 dollars. The answer is 1234.", None),  # same value, other spelling
    ("Tom pays 2 + 3 = $5.00 in all. The answer is $5.", None),
    ("Half of 1.5 is 0.75, so \\boxed{\\frac34}", None),  # 0.75 = 3/4
    ("We get $x = \\dfrac{3}{4}$ after dividing. \\boxed{\\frac34}", None),  # \dfrac{3}{4} = \frac34
    ("$124 + x + x = 180$, so $x = \\boxed{28}$.", None),  # the answer is itself the right-hand side
    ("This simplifies to $100 \\cdot 80 = \\boxed{8000}$.", None),
    ("So $81 + 27 \\equiv 108 \\equiv \\boxed{9} \\pmod{11}$.", None),
    ("We have $r = \\sqrt{0^2 + 3^2} = 3$ and the angle is $\\frac{\\pi}{2}$. So the polar coordinates are "
     "$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.", None),  # a tuple: each part derived
    ("Evelyn covered more distance in less time, so $\\boxed{\\text{Evelyn}}$ is our answer.", None),
    ("By the quadratic formula $x = 1 \\pm \\sqrt{19}$, so \\boxed{1\\pm\\sqrt{19}}", None),  # spaces aside
    # -- a known false reject: a MATH solution that counts in the answer sentence (bench/derivation_check.py)
    ("The factors of 24 greater than 1 are 2, 3, 4, 6, 8, 12 and 24, so there are $\\boxed{7}$ of them.",
     "not_derived"),
    # -- the other reasons come first
    ("5 * 6 = 25. So, the answer is 21.", "not_derived"),  # (reward 1.0 given: the verifier is not asked)
    ("Since the answer is 20, 5 * 6 = 25. So, the answer is 20.", "refers_to_hint"),
    ("\\boxed{20}", "no_reasoning"),
]


@pytest.mark.parametrize(("text", "reason"), DERIVATION)
def test_derivation_table(text, reason):
    assert judge_text(text, 1.0, 5, require_derivation=True) == reason


def test_derivation_is_off_by_default_and_judged_last():
    pasted = DERIVATION[0][0]
    assert judge_text(pasted, 1.0, 5) is None  # the default filters accept the pasted answer
    assert judge_text(pasted, 0.0, 5, require_derivation=True) == "wrong_answer"  # the verifier first


@pytest.mark.parametrize(("answer", "value"), [
    ("1,234", 1234), ("\\$5.00", 5), ("75\\%", 75), ("\\dfrac{3}{4}", 0.75), ("\\frac34", 0.75),
    ("30^\\circ", 30), ("864 inches", 864), ("-0.5", -0.5), ("3/4", 0.75),
    ("2x", None), ("\\sqrt{2}", None), ("(1, 2)", None), ("\\text{Evelyn}", None),
])
def test_answer_value(answer, value):
    assert answer_value(answer) == value


@pytest.mark.parametrize(("text", "normal"), [
    ("\\dfrac{3}{4}", "\\frac{3}{4}"), ("\\frac34", "\\frac{3}{4}"), ("$\\left( 3, 4 \\right)$", "(3,4)"),
    ("\\text{Evelyn}", "Evelyn"), ("x = \\pi for", "x=\\pi for"), ("11,\\! 111", "11,111"),
])
def test_normalise_latex(text, normal):
    assert normalise_latex(text) == normal


def test_derived_reads_the_same_answer_as_the_filter():
    from expo.verify import locate_answer

    text = "We add 2 + 2 = 4. The answer is 4."
    found = locate_answer(text)
    assert found.kind == "statement" and derived(text, found)


def test_not_derived_is_counted_by_level(monkeypatch):
    monkeypatch.setitem(TEXTS, "q1", (["2+3=5 so \\boxed{5}", "2+2=4 so \\boxed{5}",  # kept, not_derived
                                       "1+1=2, \\boxed{5}", "2+3=6 \\boxed{6}"],  # not_derived, wrong
                                      ["\\boxed{5}", "\\boxed{4}"]))
    cfg = ExplainConfig(samples_per_question=4, keep_per_question=2, solve_rate_samples=2,
                        require_derivation=True)
    _, records, stats = run(rows=ROWS[:1], cfg=cfg)
    assert [r["reject_reason"] for r in records] == [None, "not_derived", "not_derived", "wrong_answer"]
    assert stats["reject_reasons"] == {"not_derived": 2, "wrong_answer": 1}
    assert stats["by_level"]["1"]["reject_reasons"] == {"not_derived": 2, "wrong_answer": 1}


def test_require_derivation_config_key():
    from expo.config import load_config
    from expo.errors import ConfigError

    assert load_config(None, []).explain.require_derivation is False
    assert load_config(None, ["explain.require_derivation=true"]).explain.require_derivation is True
    with pytest.raises(ConfigError, match="explain.require_derivation"):
        load_config(None, ["explain.require_derivation=maybe"])


@pytest.mark.parametrize("text", [
    "1 " * 500_000 + "so the answer is 1",  # a value everywhere, every one a candidate
    "= " * 500_000 + "\\boxed{2}",
    "\\text{" * 200_000 + "\\boxed{x}",  # an unclosed wrapper the normalisation looks into
    "(" + "1, " * 300_000 + "2) so \\boxed{(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)}",
    "answer " * 200_000 + "is 7",
])
def test_derivation_stays_linear_on_hostile_input(text):
    import time

    t0 = time.perf_counter()
    judge_text(text, 1.0, 5, require_derivation=True)
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize(("text", "kept"), [
    ("2+3 = $\\boxed{5}$. Now let us also check", "2+3 = $\\boxed{5}$."),
    ("so \\boxed{\\frac{1}{2}} and then we", "so \\boxed{\\frac{1}{2}}"),  # nested braces
    ("the set \\[\\boxed{\\{1,2\\}}\\] is all", "the set \\[\\boxed{\\{1,2\\}}\\]"),  # escaped braces, display math
    ("2+3=5 \\boxed{5}", "2+3=5 \\boxed{5}"),
])
def test_an_explanation_cut_after_its_box_is_kept_through_the_box(text, kept):
    # what follows the box of a sample cut at the token limit is unfinished work: the explanation
    # trained on ends with its verified answer
    from expo.answers import last_boxed_span

    assert through_final_answer(text, last_boxed_span(text).end) == kept


def test_a_truncated_sample_that_passed_on_its_box_is_recorded_through_the_box():
    from expo.explain import _judge

    rows = [{"id": "a", "question": "What is 2+3?", "answer": "5", "level": 1}]
    samples = [[{"text": "2+3=5 so \\boxed{5}. Next we could", "logprob": -1.0, "num_tokens": 9,
                 "truncated": True}]]
    (record,) = _judge(rows, samples, ExplainConfig(), lambda texts, golds: [1.0] * len(texts))
    assert record["accepted"] and record["explanation"] == "2+3=5 so \\boxed{5}."
