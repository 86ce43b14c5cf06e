"""The ExPO term and ExP-DPO train on the whole verified explanation, never a prefix of it.

An explanation may be longer than a rollout: with the real SmolLM2 tokenizer, an accepted explanation
of about 60 tokens against a 16-token rollout budget must reach the NLL with its final-answer tokens
and its EOS, through the trainer's real step (a tiny model with SmolLM2's vocabulary); the chosen side
of a DPO pair, through TRL's own tokenization, likewise. A text over the configured budget is left
out and counted, not cut. (The per-step metrics `expo/tokens` and `expo/too_long` of a whole training
run: tests/test_train_run.py.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from expo.config import ExpoConfig
from expo.io import write_jsonl
from expo.prompts import solve_prompt
from expo.scratch_models import tiny_qwen2

QUESTION = "A box holds 6 rows of 7 eggs. How many eggs are in 3 boxes?"
ANSWER = "126"
EXPLANATION = ("Each box holds 6 rows of 7 eggs, which is 6 * 7 = 42 eggs. Three boxes hold 3 times as "
               "many: 3 * 42 = 126 eggs. So the number of eggs in 3 boxes is \\boxed{126}.")
WRONG = "There are 6 + 7 = 13 eggs, so \\boxed{13}."
ROW = {"id": "q0", "question": QUESTION, "answer": ANSWER, "level": 1}
ROLLOUT_BUDGET = 16


def small_cfg() -> ExpoConfig:
    cfg = ExpoConfig()
    cfg.train.steps, cfg.train.prompts_per_step, cfg.train.num_generations = 1, 1, 2
    cfg.train.expo_beta, cfg.explain.mode = 0.1, "offline"
    cfg.generation.max_new_tokens = ROLLOUT_BUDGET  # rollouts: far shorter than the explanation
    cfg.explain.max_new_tokens = 128  # the explanation budget the explain stage sampled with
    return cfg


def tiny_model(tok: Any) -> Any:
    return tiny_qwen2(tok, hidden=16, layers=1, heads=2, max_positions=512).float()


def answer_ids(tok: Any) -> list[int]:
    """The token ids of the final answer as they end the explanation (the box and its content)."""
    whole = tok(EXPLANATION, add_special_tokens=False)["input_ids"]
    before = tok(EXPLANATION[: EXPLANATION.index("\\boxed")], add_special_tokens=False)["input_ids"]
    return whole[len(before) - 1 :][-6:]  # the last tokens: "{126}." and what precedes it in the box


def contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def one_step(tok: Any, tmp_path: Path, cfg: ExpoConfig) -> Any:
    from expo.train.grpo_training import build_trainer

    write_jsonl(tmp_path / "expl" / "explanations.jsonl", [{**ROW, "explanation": EXPLANATION, "accepted": True}])
    trainer = build_trainer("exp-grpo", cfg, [ROW], tiny_model(tok), tok, False, tmp_path / "expl",
                            tmp_path / "ckpt", lambda completions, **kw: [0.0] * len(completions), None, [])
    trainer._generate_and_score_completions([trainer.train_dataset[0]] * cfg.train.num_generations)
    return trainer


def test_an_explanation_longer_than_a_rollout_is_scored_whole_with_its_eos(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    text_ids = tok(EXPLANATION, add_special_tokens=False)["input_ids"]
    assert len(text_ids) > 3 * ROLLOUT_BUDGET  # the case at hand: far past the rollout budget
    trainer = one_step(tok, tmp_path, small_cfg())
    (prompt, scored), = [row for chunk in trainer._nll_plan.chunks for row in chunk]
    assert prompt == tok(solve_prompt(QUESTION, tok, small_cfg().prompts))["input_ids"]
    assert scored[:-1] == text_ids and scored[-1] == tok.eos_token_id  # whole, then EOS
    assert contains(scored, answer_ids(tok))
    stats = trainer._step_stats
    assert stats["explanations_used"] == 1.0 and stats["expo/tokens"] == len(text_ids) + 1
    assert stats["expo/over_rollout_budget"] == 1.0 and stats["expo/too_long"] == 0.0


def test_an_explanation_over_the_nll_budget_is_left_out_and_counted(smollm2_tokenizer, tmp_path):
    cfg = small_cfg()
    cfg.train.expo_max_tokens = ROLLOUT_BUDGET  # only explanations a rollout could write
    trainer = one_step(smollm2_tokenizer, tmp_path, cfg)
    assert not any(trainer._nll_plan.chunks)  # nothing scored: no prefix of it either
    stats = trainer._step_stats
    assert stats["explanations_used"] == 0.0 and stats["expo/too_long"] == 1.0 and stats["expo/tokens"] == 0.0


def dpo_example(tok: Any, tmp_path: Path, cfg: ExpoConfig) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DPOTrainer

    from expo.train.dpo import build_pairs, dpo_args, fit_pairs

    def reward(completions: list[str], golds: list[str]) -> list[float]:
        return [0.0] * len(completions)

    pairs, too_long = fit_pairs(build_pairs([ROW], {"q0": EXPLANATION}.get, [[WRONG]], reward, tok, cfg),
                                tok, cfg.dpo_max_length())
    assert too_long == 0
    model = tiny_model(tok)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), train_dataset=dataset, processing_class=tok,
                         args=dpo_args(cfg, tmp_path / "dpo", 1, False))
    collated = trainer.data_collator([trainer.train_dataset[0]])
    return {"chosen_ids": trainer.train_dataset[0]["chosen_ids"], "collated": collated}


def test_the_chosen_side_of_a_dpo_pair_keeps_its_answer_and_eos(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    cfg = small_cfg()
    got = dpo_example(tok, tmp_path, cfg)
    chosen = list(got["chosen_ids"])
    assert chosen[-1] == tok.eos_token_id and contains(chosen, answer_ids(tok))
    # TRL's collator cuts at max_length: the trained sequence still holds the whole chosen side
    trained = got["collated"]["input_ids"][0].tolist()
    assert contains(trained, chosen)


def test_a_dpo_pair_over_max_length_is_left_out_and_counted(smollm2_tokenizer):
    from expo.train.dpo import build_pairs, fit_pairs

    tok, cfg = smollm2_tokenizer, small_cfg()
    pairs = build_pairs([ROW], {"q0": EXPLANATION}.get, [[WRONG]], lambda c, g: [0.0] * len(c), tok, cfg)
    prompt_len = len(tok(pairs[0]["prompt"])["input_ids"])
    kept, too_long = fit_pairs(pairs, tok, prompt_len + 20)  # room for the rejected side, not the chosen
    assert kept == [] and too_long == 1
    assert fit_pairs(pairs, tok, cfg.dpo_max_length()) == (pairs, 0)
