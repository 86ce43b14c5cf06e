"""ExP-DPO: pair building, rounds, and a real two-round run on a tiny model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from expo.config import ExpoConfig
from expo.errors import DataError
from expo.io import read_json, read_jsonl
from expo.scratch_models import char_tokenizer
from expo.train import train_arm
from expo.train.dpo import build_pairs, round_steps
from trainkit import boxed_reward, make_folders, rows, small_config


@pytest.mark.parametrize("total,rounds,expected", [
    (10, 1, [10]),  # offline: one round takes every step
    (10, 3, [4, 3, 3]),  # 10 = 3 * 3 + 1: the first round takes the remainder
    (7, 3, [3, 2, 2]),  # 7 = 3 * 2 + 1
    (4, 2, [2, 2]),
    (2, 3, [1, 1, 0]),  # fewer steps than rounds: the last round gets 0 and is not trained
    (0, 2, [0, 0]),
])
def test_round_steps(total: int, rounds: int, expected: list[int]) -> None:
    assert round_steps(total, rounds) == expected and sum(expected) == total


@pytest.mark.parametrize("total,rounds", [(3, 0), (-1, 2)])
def test_round_steps_rejects_bad_input(total: int, rounds: int) -> None:
    with pytest.raises(ValueError, match="round_steps"):
        round_steps(total, rounds)


def test_build_pairs_takes_a_verified_wrong_solution_and_an_explanation() -> None:
    data = rows(3)
    explanations = {"q0": "\\boxed{0}", "q1": "\\boxed{2}"}  # q2 has none: no pair

    def reward(completions: list[str], answer: list[str], **kw: Any) -> list[float | None]:
        return [None if c == "??" else boxed_reward([c], [a])[0] for c, a in zip(completions, answer)]

    solutions = [["\\boxed{0}", "??", "wrong0"],  # right, unjudgeable, then wrong -> "wrong0"
                 ["\\boxed{2}", "\\boxed{2}"],  # never wrong -> no pair for q1
                 ["wrong2"]]
    pairs = build_pairs(data, explanations.get, solutions, reward, char_tokenizer(), small_config())
    # Both sides end with exactly one EOS (the char tokenizer's </s>), so TRL adds none of its own.
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [("q0", "\\boxed{0}</s>", "wrong0</s>")]
    assert pairs[0]["prompt"].startswith("0+0=")  # the plain solve prompt, no hint


def regenerate_all(model: Any, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": r["id"], "explanation": f"so \\boxed{{{r['answer']}}}", "accepted": True} for r in batch]


@pytest.mark.slow
def test_two_online_rounds(tmp_path: Path) -> None:
    f = make_folders(tmp_path)
    cfg = small_config(steps=4, learning_rate=1e-3)
    cfg.train.dpo_rounds = 2
    calls: list[int] = []

    def regenerate(model: Any, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append(len(batch))
        return regenerate_all(model, batch)

    summary = train_arm("exp-dpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out",
                        reward_fn=boxed_reward, regenerate=regenerate)
    assert calls == [4]  # before round 1 only; round 0 uses the explanations stage's
    lines = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [(r["step"], r["round"]) for r in lines] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    # Each round's reference is the policy at its start: its first step's loss is exactly ln 2.
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert lines[2]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert lines[1]["rewards/margins"] > 0 and lines[3]["rewards/margins"] > 0
    pairs = read_jsonl(tmp_path / "out" / "checkpoints" / "round-1" / "pairs.jsonl")
    assert all(p["chosen"].startswith("so \\boxed{") for p in pairs)  # round 1 used the regenerated ones
    assert summary["steps"] == 4 and (tmp_path / "out" / "model" / "model.safetensors").is_file()
    log = [(e["planned_steps"], e["steps"], e["skipped"]) for e in summary["round_log"]]
    assert log == [(2, 2, None)] * 2


@pytest.mark.slow
def test_a_round_planned_with_zero_steps_does_not_train(tmp_path: Path) -> None:
    """steps 2 over 3 rounds -> [1, 1, 0]: two trained steps in all; round 2 neither samples nor trains."""
    f = make_folders(tmp_path)
    cfg = small_config(steps=2, learning_rate=1e-3)
    cfg.train.dpo_rounds = 3
    calls: list[int] = []

    def regenerate(model: Any, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append(len(batch))
        return regenerate_all(model, batch)

    summary = train_arm("exp-dpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out",
                        reward_fn=boxed_reward, regenerate=regenerate)
    assert calls == [4]  # before round 1 only: round 2 has nothing to train
    lines = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [(r["step"], r["round"]) for r in lines] == [(1, 0), (2, 1)]
    assert summary["steps"] == 2 and summary["planned_steps"] == [1, 1, 0]
    log = [(e["steps"], e["skipped"] is None) for e in summary["round_log"]]
    assert log == [(1, True), (1, True), (0, False)]
    assert "0 steps planned" in summary["round_log"][2]["skipped"]
    round2 = tmp_path / "out" / "checkpoints" / "round-2"
    assert not (round2 / "policy").exists() and not list(round2.glob("checkpoint-*"))
    assert read_json(tmp_path / "out" / "summary.json")["round_log"] == summary["round_log"]


class RightAfterFirstCall:
    """A reward that finds the policy's solutions wrong on its first call (round 0) and right after:
    a later round has no wrong solution left to reject."""

    def __init__(self, first_call_wrong: bool = True) -> None:
        self.calls = 0
        self.first_call_wrong = first_call_wrong

    def __call__(self, completions: list[str], answer: list[str], **kw: Any) -> list[float]:
        self.calls += 1
        wrong = self.first_call_wrong and self.calls == 1
        return [0.0 if wrong else 1.0 for _ in completions]


@pytest.mark.slow
def test_an_online_round_without_pairs_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = make_folders(tmp_path)
    cfg = small_config(steps=4, learning_rate=1e-3)
    cfg.train.dpo_rounds = 2
    with caplog.at_level("WARNING", logger="expo.train.dpo"):
        summary = train_arm("exp-dpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out",
                            reward_fn=RightAfterFirstCall(), regenerate=regenerate_all)
    assert [r["step"] for r in read_jsonl(tmp_path / "out" / "metrics.jsonl")] == [1, 2]
    assert summary["steps"] == 2 and summary["planned_steps"] == [2, 2]
    skipped = summary["round_log"][1]
    assert (skipped["pairs"], skipped["steps"]) == (0, 0) and "wrong solution" in skipped["skipped"]
    assert "exp-dpo round 1 of 2 skipped" in caplog.text
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_no_pair_in_any_round_is_one_clear_error(tmp_path: Path) -> None:
    f = make_folders(tmp_path)
    cfg = small_config(steps=2)
    cfg.train.dpo_rounds = 2
    with pytest.raises(DataError, match=r"^exp-dpo: none of its 2 round\(s\) had a pair: no question") as err:
        train_arm("exp-dpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out",
                  reward_fn=RightAfterFirstCall(first_call_wrong=False), regenerate=regenerate_all)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_dpo_kill_in_round_two_and_resume(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class KillAt(TrainerCallback):
        def __init__(self) -> None:
            self.seen = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.seen += 1
            if self.seen == 4:  # round 1's second step, after its checkpoint-1
                raise KeyboardInterrupt("killed")

    f = make_folders(tmp_path)
    cfg = small_config(steps=4, learning_rate=1e-3, checkpoint_every=1)
    cfg.train.dpo_rounds = 2

    def regenerate(model: Any, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": r["id"], "explanation": f"so \\boxed{{{r['answer']}}}", "accepted": True} for r in batch]

    args = (cfg, f["data"], f["model"], f["explanations"])
    train_arm("exp-dpo", *args, tmp_path / "whole", reward_fn=boxed_reward, regenerate=regenerate)
    with pytest.raises(KeyboardInterrupt):
        train_arm("exp-dpo", *args, tmp_path / "cut", reward_fn=boxed_reward, regenerate=regenerate,
                  callbacks=[KillAt()])
    resumed = train_arm("exp-dpo", *args, tmp_path / "cut2", reward_fn=boxed_reward, regenerate=regenerate,
                        checkpoint_dir=tmp_path / "cut" / "checkpoints")
    assert resumed["resumed_from"].endswith("round-1/checkpoint-1") and resumed["steps"] == 4
    assert [r["step"] for r in read_jsonl(tmp_path / "cut2" / "metrics.jsonl")] == [1, 2, 3, 4]
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut2" / "model" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_the_dpo_batch_is_global_split_over_processes(tmp_path):
    from expo.errors import ConfigError
    from expo.train.dpo import dpo_args

    cfg = ExpoConfig()
    cfg.train.prompts_per_step = 8
    assert dpo_args(cfg, tmp_path, steps=1, on_gpu=False, world=4).per_device_train_batch_size == 2
    assert dpo_args(cfg, tmp_path, steps=1, on_gpu=False).per_device_train_batch_size == 8  # alone
    with pytest.raises(ConfigError, match="train.prompts_per_step"):
        dpo_args(cfg, tmp_path, steps=1, on_gpu=False, world=3)
