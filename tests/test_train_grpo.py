"""ExpoGRPOTrainer's loss on a tiny model: zero gradient where GRPO is blind, the exact ExPO gradient,
a finite-difference check of the combined loss (float64), and the exact token ids the NLL scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from expo.prompts import explain_prompt, solve_prompt
from expo.train.family import build_trainer, load_policy
from trainkit import boxed_reward, even_length_reward, explanation, make_folders, rows, small_config, zero_reward


def make_trainer(tmp_path: Path, arm: str, reward: Any, double: bool = False, **train: Any) -> Any:
    folders = make_folders(tmp_path)
    cfg = small_config(**train)
    model, tok, _ = load_policy(folders["model"], cfg)
    if double:
        model = model.double()
    trainer = build_trainer(arm, cfg, rows(), model, tok, False, folders["explanations"],
                            tmp_path / "out" / "checkpoints", reward, None, [])
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); these tests call the seams
    return trainer, cfg


def generation_batch(trainer: Any, questions: int = 2) -> list[dict[str, Any]]:
    """What TRL's RepeatSampler yields: each prompt repeated G times, group by group."""
    G = trainer.num_generations
    return [trainer.train_dataset[i] for i in range(questions) for _ in range(G)]


def step_loss(trainer: Any) -> tuple[torch.Tensor, dict[str, Any], list[dict[str, Any]]]:
    torch.manual_seed(0)
    batch = generation_batch(trainer)
    inputs = trainer._generate_and_score_completions(batch)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    return loss, inputs, batch


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters() if p.requires_grad}


def manual_nll(model: torch.nn.Module, tok: Any, prompts: list[str], texts: list[str]) -> torch.Tensor:
    """Token-mean NLL of each text after its prompt, one unpadded sequence at a time."""
    total, count = 0.0, 0
    for prompt, text in zip(prompts, texts, strict=True):
        p = tok(prompt)["input_ids"]
        t = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + t])
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)  # (T-1, V)
        targets = ids[0, 1:]
        token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[len(p) - 1:]  # text tokens only
        total = total - token_logps.sum()
        count += len(t)
    return total / count


@pytest.mark.parametrize("arm,beta", [("grpo", 0.04), ("exp-grpo", 0.0)])
def test_equal_rewards_and_no_expo_give_zero_gradient(tmp_path: Path, arm: str, beta: float) -> None:
    trainer, _ = make_trainer(tmp_path, arm, zero_reward, expo_beta=beta)
    loss, inputs, _ = step_loss(trainer)
    assert inputs["advantages"].abs().sum().item() == 0.0
    loss.backward()
    assert all(g.abs().max().item() == 0.0 for g in grads(trainer.model).values())


def test_expo_gradient_is_beta_times_explanation_nll_gradient(tmp_path: Path) -> None:
    beta = 0.3
    trainer, cfg = make_trainer(tmp_path, "exp-grpo", zero_reward, expo_beta=beta)
    loss, _, batch = step_loss(trainer)
    loss.backward()
    got = grads(trainer.model)

    model, tok = trainer.model, trainer.processing_class
    questions = [batch[0]["id"], batch[trainer.num_generations]["id"]]
    by_id = {r["id"]: r for r in rows()}
    model.zero_grad()
    nll = manual_nll(model, tok, [solve_prompt(by_id[q]["question"], tok, cfg.prompts) for q in questions],
                     [explanation(by_id[q]) for q in questions])
    (beta * nll).backward()
    want = grads(model)
    assert loss.item() == pytest.approx(beta * nll.item(), rel=1e-5)  # GRPO part is exactly 0 here
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)
    assert any(g.abs().max().item() > 0 for g in want.values())


def test_combined_loss_matches_finite_differences_float64(tmp_path: Path) -> None:
    """L = GRPO (non-zero advantages, old log-probs held fixed) + beta * NLL, checked coordinate-wise.

    The model runs in float64, but TRL's fused log-prob kernel and Qwen2's RMSNorm compute in float32,
    so the loss carries ~1e-7 relative rounding: central differences use h = 1e-3 (rounding error
    ~1e-4 absolute) at the largest-gradient coordinate of each tensor, where the gradient dwarfs it.
    A missing beta, a per-row instead of token mean or a wrong sign each miss by far more than 5%."""
    trainer, _ = make_trainer(tmp_path, "exp-grpo", even_length_reward, double=True, expo_beta=0.5)
    torch.manual_seed(1)
    inputs = trainer._generate_and_score_completions(generation_batch(trainer))
    assert inputs["advantages"].abs().sum().item() > 0, "rewards must vary for the GRPO part to matter"
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad():
        old, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask,
                                                                inputs["completion_ids"].size(1))
    inputs["old_per_token_logps"] = old  # fixed, so L(theta) is a function of theta alone
    model = trainer.model
    model.zero_grad()
    trainer.compute_loss(model, inputs).backward()
    h, checked = 1e-3, 0
    for name, param in model.named_parameters():
        if not name.endswith(("q_proj.weight", "down_proj.weight", "embed_tokens.weight", "up_proj.weight")):
            continue
        flat, grad = param.data.view(-1), param.grad.view(-1)
        idx = int(grad.abs().argmax())
        orig = flat[idx].item()
        with torch.no_grad():
            flat[idx] = orig + h
            up = trainer.compute_loss(model, inputs).item()
            flat[idx] = orig - h
            down = trainer.compute_loss(model, inputs).item()
            flat[idx] = orig
        assert grad[idx].item() == pytest.approx((up - down) / (2 * h), rel=5e-2, abs=3e-4), (name, idx)
        checked += 1
    assert checked >= 7


def test_explanation_is_scored_under_the_solve_prompt_without_hint(tmp_path: Path) -> None:
    trainer, cfg = make_trainer(tmp_path, "exp-grpo", zero_reward, expo_beta=0.1)
    _, inputs, batch = step_loss(trainer)
    tok, G = trainer.processing_class, trainer.num_generations
    fed = trainer._nll_batch
    by_id = {r["id"]: r for r in rows()}
    for i in range(2):
        row = by_id[batch[i * G]["id"]]
        prompt_ids = tok(solve_prompt(row["question"], tok, cfg.prompts))["input_ids"]
        text_ids = tok(explanation(row), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(prompt_ids) + len(text_ids)
        assert fed["input_ids"][i, :n].tolist() == prompt_ids + text_ids
        assert fed["target_mask"][i].tolist() == [0] * len(prompt_ids) + [1] * len(text_ids) + \
            [0] * (fed["input_ids"].shape[1] - n)
        # The conditioning is token-for-token what the rollouts of this group were conditioned on ...
        rollout = inputs["prompt_ids"][i * G][inputs["prompt_mask"][i * G].bool()].tolist()
        assert rollout == prompt_ids
        # ... and not the answer-conditioned prompt that produced the explanation.
        hinted = tok(explain_prompt(row["question"], row["answer"], tok, cfg.prompts))["input_ids"]
        assert hinted != prompt_ids
        assert "correct answer" not in tok.decode(fed["input_ids"][i, :len(prompt_ids)])


def test_expo_on_unsolved_skips_solved_groups(tmp_path: Path) -> None:
    def solves_q0(completions: list[str], answer: list[str], **kw: Any) -> list[float]:
        return [1.0 if a == "0" else 0.0 for a in answer]  # group of q0 solved, q1 not

    trainer, _ = make_trainer(tmp_path, "exp-grpo", solves_q0, expo_beta=0.1, expo_on="unsolved")
    step_loss(trainer)
    assert trainer._step_stats["unsolved_groups"] == 1.0
    assert trainer._step_stats["explanations_used"] == 1.0
    tok = trainer.processing_class
    assert "1+1=" in tok.decode(trainer._nll_batch["input_ids"][0])  # q1's explanation only


def test_boxed_reward_is_zero_for_random_model(tmp_path: Path) -> None:
    """Premise of the learning test: a random tiny model never earns the boxed reward."""
    trainer, _ = make_trainer(tmp_path, "grpo", boxed_reward)
    _, inputs, _ = step_loss(trainer)
    assert inputs["advantages"].abs().sum().item() == 0.0


@pytest.mark.parametrize("arm", ["grpo", "exp-grpo"])
def test_shared_prefill_generation_gives_trls_samples(tmp_path: Path, arm: str) -> None:
    """Our generation seam (one prefill per distinct prompt) samples exactly what TRL's would, same seed."""
    from trl import GRPOTrainer

    trainer, _ = make_trainer(tmp_path, arm, zero_reward)
    prompt_ids, images, fields = trainer._tokenize_prompts([r["prompt"] for r in generation_batch(trainer)])
    G = trainer.num_generations
    torch.manual_seed(5)
    ours, _ = trainer._generate_single_turn(prompt_ids, images, fields, G)
    torch.manual_seed(5)
    trls, _ = GRPOTrainer._generate_single_turn(trainer, prompt_ids, images, fields, G)
    assert ours == trls
    assert len(ours) == len(prompt_ids) and len({tuple(c) for c in ours}) > 1  # sampled, not all alike
