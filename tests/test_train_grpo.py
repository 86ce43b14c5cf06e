"""ExpoGRPOTrainer's loss on a tiny model: zero gradient where GRPO is blind, the exact ExPO gradient
(whole and split over micro-batches), a finite-difference check of the combined loss (float64), the
exact token ids the NLL scores, and the mapping to TRL's batch and precision settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from expo.prompts import explain_prompt, solve_prompt
from expo.train.grpo_training import build_trainer
from expo.train.policy import load_policy
from trainkit import (boxed_reward, even_length_reward, explanation, grads, make_folders, manual_nll, rows,
                      small_config, zero_reward)


def make_trainer(tmp_path: Path, arm: str, reward: Any, double: bool = False, **train: Any) -> Any:
    folders = make_folders(tmp_path)
    cfg = small_config(**train)
    model, tok, _ = load_policy(folders["model"], cfg)
    if double:
        model = model.double()
    trainer = build_trainer(arm, cfg, rows(), model, tok, False, folders["explanations"],
                            tmp_path / "out" / "checkpoints", reward, None, [])
    # set by Trainer.train(); these tests call the seams
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
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
    (fed,) = trainer._nll_plan.chunks  # one micro-batch: every row of the step
    by_id = {r["id"]: r for r in rows()}
    for i in range(2):
        row = by_id[batch[i * G]["id"]]
        prompt_ids = tok(solve_prompt(row["question"], tok, cfg.prompts))["input_ids"]
        text_ids = tok(explanation(row), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert fed[i] == (prompt_ids, text_ids)  # scored: exactly the text, after exactly the prompt
        # The conditioning is token-for-token what the rollouts of this group were conditioned on ...
        rollout = inputs["prompt_ids"][i * G][inputs["prompt_mask"][i * G].bool()].tolist()
        assert rollout == prompt_ids
        # ... and not the answer-conditioned prompt that produced the explanation.
        hinted = tok(explain_prompt(row["question"], row["answer"], tok, cfg.prompts))["input_ids"]
        assert hinted != prompt_ids
        assert "correct answer" not in tok.decode(fed[i][0])


def test_expo_on_unsolved_skips_solved_groups(tmp_path: Path) -> None:
    def solves_q0(completions: list[str], answer: list[str], **kw: Any) -> list[float]:
        return [1.0 if a == "0" else 0.0 for a in answer]  # group of q0 solved, q1 not

    trainer, _ = make_trainer(tmp_path, "exp-grpo", solves_q0, expo_beta=0.1, expo_on="unsolved")
    step_loss(trainer)
    assert trainer._step_stats["unsolved_groups"] == 1.0
    assert trainer._step_stats["explanations_used"] == 1.0
    tok = trainer.processing_class
    ((prompt_ids, _),) = trainer._nll_plan.chunks[0]
    assert "1+1=" in tok.decode(prompt_ids)  # q1's explanation only


def test_expo_on_unsolved_without_rewards_is_an_error(tmp_path: Path) -> None:
    """Without this step's rewards, 'unsolved' cannot be decided: an error, not a silent 'all'."""
    from expo.errors import ExpoError

    trainer, _ = make_trainer(tmp_path, "exp-grpo", zero_reward, expo_beta=0.1, expo_on="unsolved")
    with pytest.raises(ExpoError, match="expo_on 'unsolved'"):
        trainer._nll_rows(generation_batch(trainer), None)
    trainer.nll_term.on = "all"
    assert len(trainer._nll_rows(generation_batch(trainer), None)) == 2  # 'all' needs no rewards


def test_micro_batches_add_up_to_the_whole_steps_term(tmp_path: Path) -> None:
    """2 prompts x 4 rollouts in micro-batches of 2: 4 forward/backward passes, one optimizer step.
    Through TRL's own _prepare_inputs (generate once, split in 4), the micro-batches' losses and
    gradients add up to beta x the token-mean NLL of the step's 2 explanations (GRPO part 0 here),
    exactly what one big batch gives; the step logs one line of loss metrics."""
    beta = 0.3
    trainer, cfg = make_trainer(tmp_path, "exp-grpo", zero_reward, expo_beta=beta, rollouts_per_micro_batch=2)
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps,
            trainer.args.steps_per_generation) == (2, 4, 4)
    torch.manual_seed(0)
    batch = generation_batch(trainer)
    model = trainer.model
    model.zero_grad()
    total = 0.0
    for k in range(4):
        trainer._step = k  # TRL's micro-step counter (Trainer.training_step advances it)
        inputs = trainer._prepare_inputs(batch)
        assert inputs["completion_ids"].shape[0] == 2  # one micro-batch of rollouts
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        total += loss.item()
    got = grads(model)
    assert [len(c) for c in trainer._nll_plan.chunks] == [1, 1, 0, 0]  # the 2 explanations, spread
    by_id = {r["id"]: r for r in rows()}
    questions = [batch[0]["id"], batch[trainer.num_generations]["id"]]
    model.zero_grad()
    tok = trainer.processing_class
    nll = manual_nll(model, tok, [solve_prompt(by_id[q]["question"], tok, cfg.prompts) for q in questions],
                     [explanation(by_id[q]) for q in questions])
    (beta * nll).backward()
    want = grads(model)
    assert total == pytest.approx(beta * nll.item(), rel=1e-5)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)
    logged = trainer._metrics["train"]
    assert len(logged["expo_nll"]) == 1 and logged["expo_nll"][0] == pytest.approx(nll.item(), rel=1e-5)


@pytest.mark.parametrize("prompts,G,micro,world,want", [
    (32, 8, 8, 8, (32, 8, 4)),  # a recipe: 256 rollouts / 8 GPUs = 32 each = 4 micro-batches of 8
    (32, 8, None, 8, (32, 32, 1)),  # no micro-batch size: a process's whole share at once
    (2, 4, 2, 1, (8, 2, 4)),  # one process, 4 micro-batches
    (64, 8, 16, 16, (32, 16, 2)),  # 2 nodes x 8 GPUs
])
def test_batch_plan_splits_the_global_batch(prompts: int, G: int, micro: int | None, world: int,
                                            want: tuple[int, int, int]) -> None:
    from expo.config import TrainConfig
    from expo.train.grpo_training import batch_plan

    tc = TrainConfig(prompts_per_step=prompts, num_generations=G, rollouts_per_micro_batch=micro)
    plan = batch_plan(tc, world)
    assert (plan.per_process, plan.micro, plan.accumulation) == want
    assert plan.per_process * world == prompts * G  # the configured batch is the global one


@pytest.mark.parametrize("prompts,G,micro,world,key", [
    (4, 8, None, 8, "train.prompts_per_step"),  # 4 prompts cannot give each of 8 processes whole groups
    (32, 8, 24, 8, "train.rollouts_per_micro_batch"),  # 32 per process do not split into 24s
    (32, 8, 64, 8, "train.rollouts_per_micro_batch"),  # a micro-batch larger than a process's share
])
def test_batch_plan_refuses_uneven_splits(prompts: int, G: int, micro: int | None, world: int,
                                          key: str) -> None:
    from expo.config import TrainConfig
    from expo.errors import ConfigError
    from expo.train.grpo_training import batch_plan

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        batch_plan(TrainConfig(prompts_per_step=prompts, num_generations=G, rollouts_per_micro_batch=micro),
                   world)


def test_grpo_args_follow_the_world_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 2 processes each gets half the prompts: per device x processes x steps per generation is
    the configured global batch. The world size comes from $WORLD_SIZE (torchrun and accelerate set it)."""
    from expo.train.distributed import world_size
    from expo.train.grpo_training import grpo_args

    cfg = small_config(rollouts_per_micro_batch=2)  # 2 prompts x 4 rollouts = 8
    args = grpo_args(cfg, tmp_path, on_gpu=False, world=2)  # not via the env: TRL would init torch.distributed
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 2)
    assert args.per_device_train_batch_size * 2 * args.steps_per_generation == 8
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert world_size() == 8
    monkeypatch.delenv("WORLD_SIZE")
    assert world_size() == 1


@pytest.mark.parametrize("dtype,on_gpu,bf16_ok,want", [
    ("bfloat16", True, True, {"bf16": True, "fp16": False}),  # the recipes: bf16 compute on fp32 weights
    ("auto", True, True, {"bf16": True, "fp16": False}),
    ("auto", True, False, {"bf16": False, "fp16": False}),  # an old GPU: fp32
    ("float16", True, False, {"bf16": False, "fp16": True}),
    ("float32", True, True, {"bf16": False, "fp16": False}),  # asked for fp32 compute
    ("bfloat16", False, False, {"bf16": False, "fp16": False}),  # CPU: fp32 throughout
])
def test_mixed_precision_flags(dtype: str, on_gpu: bool, bf16_ok: bool, want: dict[str, bool]) -> None:
    from expo.train.policy import mixed_precision

    assert mixed_precision(dtype, on_gpu, bf16_ok) == want


def test_bf16_on_a_gpu_without_bf16_is_a_config_error() -> None:
    from expo.errors import ConfigError
    from expo.train.policy import mixed_precision

    with pytest.raises(ConfigError, match="model.dtype"):
        mixed_precision("bfloat16", True, False)


def test_grpo_args_set_bf16_autocast_on_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What grpo_args hands TRL for a bf16 recipe on a bf16 GPU (TRL's own GPU checks are bypassed)."""
    from expo.train import grpo_training

    captured: dict[str, Any] = {}
    monkeypatch.setattr(grpo_training, "GRPOConfig", lambda **kw: captured.update(kw) or kw)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = small_config()
    cfg.model.dtype = "bfloat16"
    grpo_training.grpo_args(cfg, tmp_path, on_gpu=True)
    assert captured["bf16"] is True and captured["fp16"] is False and captured["use_cpu"] is False


@pytest.mark.parametrize("dtype,lora,want", [
    ("bfloat16", False, torch.float32),  # fp32 master weights under bf16 compute
    ("float16", False, torch.float32),
    ("auto", False, torch.float32),
    ("bfloat16", True, torch.bfloat16),  # LoRA: the frozen base stays bf16 (PEFT's adapter is fp32)
])
def test_policy_loaded_for_training_has_master_weights(tmp_path: Path, dtype: str, lora: bool,
                                                       want: torch.dtype) -> None:
    folders = make_folders(tmp_path)
    cfg = small_config(lora=lora)
    cfg.model.dtype = dtype
    model, _, _ = load_policy(folders["model"], cfg)
    assert {p.dtype for p in model.parameters()} == {want}


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
