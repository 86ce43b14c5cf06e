"""Hints for collapsed groups (expo.train.hints) on a tiny model: which groups get one, the hinted prompt
and the tokens the step trains on, the prefix schedule, the answer check on model-written hints, and a
real run in which no hint reaches validation or evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from expo.config import ExpoConfig, TrainConfig
from expo.evaluate import evaluate_model
from expo.generation.hf import HFGenerator
from expo.io import read_json, read_jsonl, write_jsonl
from expo.prompts import prompt_ids, solve_prompt
from expo.train import train_arm
from expo.train.grpo_training import build_trainer
from expo.train.hints import HINT_WRITER, Hinter, hinted_prompt, prefix_share, solution_prefix, usable_hint
from expo.train.policy import load_policy
from trainkit import boxed_reward, make_folders, run_torchrun, small_config, zero_reward

SOLUTION = "Add the number to itself: one and one make two, written as a digit. \\boxed{{{answer}}}"


def hint_rows(n: int = 2) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "question": f"{i}+{i}=", "answer": str(2 * i), "level": 5, "subject": "toy",
             "solution": SOLUTION.format(answer=2 * i), "source": "test"} for i in range(n)]


def test_the_prefix_shortens_on_its_schedule_and_never_reaches_the_box() -> None:
    tc = TrainConfig(steps=3, hint_prefix=1.0, hint_prefix_schedule="linear")
    assert [prefix_share(s, tc) for s in range(3)] == [1.0, 0.5, 0.0]
    solution = SOLUTION.format(answer=2)  # 15 words, the 15th the box
    assert solution_prefix(solution, 1.0) == solution.split("\\boxed")[0].strip()  # all but the answer
    assert solution_prefix(solution, 0.5) == "Add the number to itself: one and"  # 7 of 15 words
    assert solution_prefix(solution, 0.0) is None  # the last step: no hint left
    # never the answer: the embedded task's solutions open with it, so they give no prefix hint
    assert solution_prefix("179:yes \\boxed{179}", 0.5, "179") is None
    assert solution_prefix("Add 1 and 1 to get 2, so the sum is 2. \\boxed{2}", 1.0, "2") == "Add 1 and 1 to get"
    assert TrainConfig(steps=3, hint_prefix=0.5, hint_prefix_schedule="constant").hint_prefix == 0.5


def test_solution_hints_without_solutions_are_one_error_before_any_work(tmp_path: Path) -> None:
    from expo.errors import DataError

    f = make_folders(tmp_path, n=2, solutions=False)
    cfg = small_config(steps=1, hints=True, hint_source="solution")
    with pytest.raises(DataError, match="train.hint_source': 'solution' hints need reference solutions"):
        train_arm("grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out", reward_fn=zero_reward)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("samples,kept", [
    (["Double it: the answer is 4.", "Think of doubling the number."], "Think of doubling the number."),
    (["It equals \\boxed{4}", " 4 "], None),  # every sample states the answer: no hint
    (["", "   ", "Count on from the first number."], "Count on from the first number."),
])
def test_a_model_hint_that_states_the_answer_is_not_used(samples: list[str], kept: str | None) -> None:
    assert usable_hint(samples, "4") == kept


def hints_trainer(tmp_path: Path, arm: str, **train: Any) -> tuple[Any, ExpoConfig]:
    """Two questions with reference solutions; only q0 has an accepted explanation."""
    f = make_folders(tmp_path, n=2)
    write_jsonl(f["explanations"] / "explanations.jsonl", [
        {"id": "q0", "question": "0+0=", "answer": "0", "level": 5, "explanation": "\\boxed{0}", "logprob": -3.0,
         "accepted": True, "reject_reason": None},
        {"id": "q1", "question": "1+1=", "answer": "2", "level": 5, "explanation": "\\boxed{3}", "logprob": -3.0,
         "accepted": False, "reject_reason": "wrong_answer"}])
    cfg = small_config(steps=2, hints=True, **train)
    model, tok, _ = load_policy(f["model"], cfg)
    trainer = build_trainer(arm, cfg, hint_rows(), model, tok, False, f["explanations"], tmp_path / "ckpt",
                            zero_reward, None, [])
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    return trainer, cfg


def record_generation(trainer: Any) -> list[tuple[list[str], list[list[int]]]]:
    """Wrap the trainer's rollout generation: (prompts, completion ids) of every call."""
    calls: list[tuple[list[str], list[list[int]]]] = []
    real = trainer._generate

    def generate(prompts: list) -> Any:
        out = real(prompts)
        calls.append((list(prompts), [list(ids) for ids in out[1]]))
        return out

    trainer._generate = generate
    return calls


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


@pytest.mark.parametrize("filter_groups", [False, True])
def test_a_collapsed_group_without_explanation_is_rolled_out_again_with_a_hint_and_trained_plain(
        tmp_path: Path, filter_groups: bool) -> None:
    """Both groups are all wrong; q0 has an accepted explanation (its NLL term teaches it), q1 has none:
    q1 alone is rolled out again from the solve prompt plus half its solution (no box), and the step
    trains q1's hinted completions under q1's plain solve prompt tokens; with dynamic sampling too
    (which keeps all-wrong groups for the NLL term)."""
    trainer, cfg = hints_trainer(tmp_path, "exp-grpo", expo_beta=0.1, filter_groups=filter_groups)
    calls = record_generation(trainer)
    G = trainer.num_generations
    batch = [trainer.train_dataset[i] for i in range(2) for _ in range(G)]
    tok = trainer.processing_class
    trainer.model.train()
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)

    assert len(calls) == 2  # the step's rollouts, then one hinted group
    row = hint_rows()[1]
    hint = solution_prefix(row["solution"], prefix_share(0, cfg.train))
    assert hint == "Add the number to itself: one and" and "\\boxed" not in calls[1][0][0]
    assert calls[1][0] == [hinted_prompt(row["question"], hint, tok, cfg)] * G
    assert calls[1][0][0] == solve_prompt(row["question"], tok, cfg.prompts).replace(
        "1+1=\n", "1+1=\n\nA hint: Add the number to itself: one and\n")  # plain template: only the hint added
    plain = [prompt_ids(solve_prompt(r["question"], tok, cfg.prompts), tok) for r in hint_rows()]
    for k in range(2 * G):  # every row trains under its plain solve prompt
        assert unpadded(out["prompt_ids"][k], out["prompt_mask"][k]) == plain[k // G]
    for j in range(G):
        assert unpadded(out["completion_ids"][j], out["completion_mask"][j]) == calls[0][1][j]  # q0: its own
        assert unpadded(out["completion_ids"][G + j], out["completion_mask"][G + j]) == calls[1][1][j]  # q1: hinted
    stats = trainer._step_stats
    assert (stats["hints/groups"], stats["hints/no_hint"], stats["hints/questions"]) == (1.0, 0.0, 1.0)
    assert trainer.hinter.hinted == {"q1": 0}
    # The step trains on it: the loss runs over the spliced batch.
    loss = trainer.compute_loss(trainer.model, out)
    assert torch.isfinite(loss)


def test_a_hinted_rollouts_old_log_probs_are_the_plain_prompts(tmp_path: Path) -> None:
    """With vLLM rollouts TRL keeps pi_old (old_per_token_logps), computed under the prompt it sampled
    from; a hinted rollout's must be under the plain prompt it trains on, or its ratio would be
    pi(o|q) / pi(o|q, hint). Here TRL is made to keep pi_old as it does with vLLM (generation and
    optimizer steps misaligned): the hinted rows' pi_old is the plain prompt's, and the loss's ratio
    starts at 1 on them."""
    trainer, cfg = hints_trainer(tmp_path, "exp-grpo", expo_beta=0.1)
    trainer.num_iterations = 2  # gradient_accumulation_steps % (steps_per_generation * 2) != 0: pi_old kept
    calls = record_generation(trainer)
    G = trainer.num_generations
    batch = [trainer.train_dataset[i] for i in range(2) for _ in range(G)]
    trainer.model.train()
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    assert len(calls) == 2 and "old_per_token_logps" in out

    def logps(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([prompt_ids, out["completion_ids"][G:]], dim=1)
        mask = torch.cat([prompt_mask, out["completion_mask"][G:]], dim=1)
        with torch.no_grad():
            return trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask,
                                                              out["completion_ids"].size(1))[0]

    done = out["completion_mask"][G:].bool()
    plain = logps(out["prompt_ids"][G:], out["prompt_mask"][G:])
    assert torch.allclose(out["old_per_token_logps"][G:][done], plain[done], atol=1e-5)
    tok = trainer.processing_class
    hinted = tok([calls[1][0][0]] * G, return_tensors="pt", add_special_tokens=False)
    under_hint = logps(hinted["input_ids"], hinted["attention_mask"])
    assert not torch.allclose(under_hint[done], plain[done], atol=1e-3)  # the two prompts do differ
    assert torch.isfinite(trainer.compute_loss(trainer.model, out))


def test_plain_grpo_hints_every_collapsed_group_and_none_while_evaluating(tmp_path: Path) -> None:
    """Plain GRPO reads no explanations: both collapsed groups are hinted. With the model in eval mode
    (TRL's evaluation path) the same call generates once, from the plain prompts, and hints nothing."""
    trainer, cfg = hints_trainer(tmp_path, "grpo")
    calls = record_generation(trainer)
    G = trainer.num_generations
    batch = [trainer.train_dataset[i] for i in range(2) for _ in range(G)]
    trainer.model.train()
    trainer._generate_and_score_completions(batch)
    assert len(calls) == 2 and len(calls[1][0]) == 2 * G and trainer._step_stats["hints/groups"] == 2.0
    calls.clear()
    trainer.model.eval()
    trainer._generate_and_score_completions(batch)
    assert len(calls) == 1 and calls[0][0] == [x["prompt"] for x in batch]
    assert not any("A hint:" in p for p in calls[0][0])


def test_a_real_run_writes_hints_and_none_reaches_validation_or_evaluation(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real GRPO steps with model-written hints (the rows have no solutions) and validation every
    step, then the evaluation of the trained model: every prompt the validation and the evaluation
    sample from is a plain solve prompt; the hint writer's prompts are the only others."""
    f = make_folders(tmp_path, n=2, solutions=False)
    write_jsonl(f["data"] / "eval.jsonl", read_jsonl(f["data"] / "train.jsonl"))
    seen: list[str] = []
    real = HFGenerator.generate

    def generate(self: Any, prompts: list[str], *args: Any, **kw: Any) -> Any:
        seen.extend(prompts)
        return real(self, prompts, *args, **kw)

    monkeypatch.setattr(HFGenerator, "generate", generate)
    cfg = small_config(steps=2, hints=True, hint_max_new_tokens=8, eval_every=1, eval_questions=2,
                       eval_samples=1, checkpoint_every=1)
    train_arm("grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out", reward_fn=boxed_reward)
    lines = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [r["hints/groups"] for r in lines] == [2.0, 2.0]  # random weights never solve: both hinted
    state = read_json(tmp_path / "out" / "checkpoints" / "checkpoint-2" / "expo_state.json")
    assert set(state["hints"]["hinted"]) == {"q0", "q1"} and set(state["hints"]["written"]) == {"q0", "q1"}
    model, tok, _ = load_policy(f["model"], cfg)  # a resumed run gets the hints back from the checkpoint
    resumed = build_trainer("grpo", cfg, read_jsonl(f["data"] / "train.jsonl"), model, tok, False, f["explanations"],
                            tmp_path / "ckpt", boxed_reward, None, [])
    resumed.load_expo_state(str(tmp_path / "out" / "checkpoints" / "checkpoint-2"))
    assert resumed.hinter.state_dict() == state["hints"]
    seen_in_training = list(seen)
    evaluate_model(str(tmp_path / "out" / "model"), f["data"], cfg, tmp_path / "eval")
    from expo.modeling import load_tokenizer

    tok = load_tokenizer(f["model"])
    solve = {solve_prompt(q, tok, cfg.prompts) for q in ("0+0=", "1+1=")}
    writer = [p for p in seen if HINT_WRITER.split("{question}")[0] in p]
    assert writer and all(p in writer for p in seen_in_training if p not in solve)  # only the writer's
    others = [p for p in seen if p not in writer]
    assert others and set(others) <= solve and not any("A hint:" in p for p in seen)
    assert len(seen) > len(seen_in_training)  # the evaluation sampled too


def test_a_hinted_question_later_solved_without_a_hint_counts_as_rescued() -> None:
    """A question hinted at step 0 whose plain group has a right rollout at a later step is rescued once."""

    class Trainer:
        num_generations = 2
        _step_stats: dict[str, float] = {}

        class state:
            global_step = 3

        class accelerator:
            device = "cpu"

            @staticmethod
            def gather(t: torch.Tensor) -> torch.Tensor:
                return t

    cfg = small_config(steps=4, hints=True)
    hinter = Hinter(cfg, {r["id"]: r for r in hint_rows()}, None, lambda qid: True)  # all explained
    hinter.hinted = {"q0": 0}
    inputs = [{"id": "q0"}, {"id": "q0"}, {"id": "q1"}, {"id": "q1"}]
    batch = {"completion_mask": torch.ones(4, 3, dtype=torch.long)}
    out = hinter.rescue(Trainer(), inputs, batch, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert out is batch and hinter.rescued == {"q0": 3}
    assert Trainer._step_stats["hints/rescued"] == 1.0 and Trainer._step_stats["hints/groups"] == 0.0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_hint_only_where_a_process_has_a_collapsed_unexplained_group(tmp_path: Path) -> None:
    """Two real processes (torchrun, gloo), one question each per step, all rollouts wrong; q0 and q1
    have accepted explanations, q2 and q3 none (and no solutions: the policy writes their hints). A step
    where one process holds an explained question and the other an unexplained one hints one group:
    both processes still roll out a hinted round together (TRL gathers its rewards), the first process's
    share discarded."""
    f = make_folders(tmp_path, n=4, solutions=False)
    records = read_jsonl(f["explanations"] / "explanations.jsonl")
    for rec in records:
        rec["accepted"] = rec["id"] in ("q0", "q1")
    write_jsonl(f["explanations"] / "explanations.jsonl", records)
    run_torchrun("ddp_hints_worker.py", tmp_path, tmp_path / "out", 4, timeout=600)
    lines = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert len(lines) == 4
    assert 1.0 in [row["hints/groups"] for row in lines]  # one process hinted, the other filled its share
