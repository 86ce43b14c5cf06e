"""The arms on the GRPO trainer (grpo, exp-grpo, grpo-sft; see expo.train.arms): TRL's GRPOConfig from
ours, the trainer assembled with the arm's NLL term, resume, the final save.

One optimizer step = `prompts_per_step` prompts x `num_generations` rollouts: the GLOBAL batch, the
same whatever the number of processes. It is generated once and used once: each of the W processes
holds 1/W of the prompts (whole groups), and goes through its share in A micro-batches of
`train.rollouts_per_micro_batch` rollouts (TRL's per_device_train_batch_size), accumulated into one
optimizer step (gradient_accumulation_steps = steps_per_generation = A, num_iterations = 1). So
"step" means the same thing in our schedule, our logs and TRL's checkpoints. For example
32 prompts x 8 rollouts = 256 per step on 8 GPUs = 32 per GPU = 4 micro-batches of 8.

Precision (fp32 master weights, half-precision autocast): expo.train.policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback
from trl import GRPOConfig

from expo.config import ExpoConfig, TrainConfig
from expo.errors import ConfigError
from expo.generation.trl_rollouts import rollout_args
from expo.prompts import solve_prompt
from expo.train.arms import arm_spec
from expo.train.distributed import world_size
from expo.train.explanations import Regenerate, make_buffer
from expo.train.final_model import save_final_model
from expo.train.group_filter import GroupFilter
from expo.train.hints import WriteHints, make_hinter
from expo.train.grpo import EXPO_STATE_FILE, ExpoGRPOTrainer, NLLTerm
from expo.train.metrics_jsonl import MetricsWriter
from expo.train.policy import load_policy, lora_config, mixed_precision
from expo.train.progress import StepProgress
from expo.train.resume import latest_valid_checkpoint
from expo.train.rewards import RewardFn


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's rollouts are split: over processes, then into micro-batches."""

    world: int  # training processes (WORLD_SIZE)
    per_process: int  # rollouts each process generates and trains on per step
    micro: int  # rollouts per forward/backward (TRL's per_device_train_batch_size)
    accumulation: int  # micro-batches per optimizer step (gradient_accumulation_steps)


def batch_plan(tc: TrainConfig, world: int) -> BatchPlan:
    """Split the global batch `prompts_per_step x num_generations` over `world` processes and into
    micro-batches; a split that does not come out even is a config error naming the key.

    >>> tc = TrainConfig(prompts_per_step=32, num_generations=8, rollouts_per_micro_batch=8)
    >>> batch_plan(tc, 8)
    BatchPlan(world=8, per_process=32, micro=8, accumulation=4)
    """
    p, g = tc.prompts_per_step, tc.num_generations
    if p % world:
        raise ConfigError(f"config key 'train.prompts_per_step': {p} prompts do not split evenly over "
                          f"{world} training processes (each needs whole groups of {g} rollouts); "
                          f"use a multiple of {world}")
    per_process = p * g // world
    micro = tc.rollouts_per_micro_batch or per_process
    if per_process % micro:
        raise ConfigError(f"config key 'train.rollouts_per_micro_batch': {micro} does not divide the "
                          f"{per_process} rollouts each of the {world} processes trains on per step "
                          f"({p} prompts x {g} rollouts / {world}); use a divisor of {per_process}")
    return BatchPlan(world=world, per_process=per_process, micro=micro, accumulation=per_process // micro)


def grpo_args(cfg: ExpoConfig, checkpoint_dir: Path, on_gpu: bool, world: int | None = None) -> GRPOConfig:
    """Our TrainConfig in TRL's terms (`world`: training processes, default $WORLD_SIZE). Notes inline."""
    tc = cfg.train
    plan = batch_plan(tc, world if world is not None else world_size())
    precision = mixed_precision(cfg.model.dtype, on_gpu, on_gpu and torch.cuda.is_bf16_supported())
    return GRPOConfig(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=plan.micro,  # counted in rollouts: one forward/backward
        gradient_accumulation_steps=plan.accumulation,  # ... A of them make one optimizer step
        steps_per_generation=plan.accumulation,  # generate the step's rollouts once, then split them
        num_generations=tc.num_generations,
        max_completion_length=cfg.generation.max_new_tokens,
        temperature=tc.temperature,
        top_p=cfg.generation.top_p,
        learning_rate=tc.learning_rate,
        lr_scheduler_type="constant",  # the ExPO weight has its own schedule; keep the LR out of it
        max_grad_norm=tc.max_grad_norm,
        max_steps=tc.steps,
        beta=tc.kl_beta,  # TRL's KL coefficient, unrelated to expo_beta
        weight_decay=tc.weight_decay,
        **loss_args(tc),  # loss_type, clipping, reward scaling, masks (the ExPO term is added apart)
        seed=tc.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=tc.checkpoint_every,
        save_total_limit=3,  # the newest may be damaged by a kill; keep earlier ones to fall back to
        report_to=[],
        use_cpu=not on_gpu,
        **precision,  # autocast over fp32 master weights (expo.train.policy.training_dtype)
        gradient_checkpointing=tc.gradient_checkpointing,
        disable_tqdm=True,
        **rollout_args(cfg),  # vLLM rollouts (colocate or server); none for the transformers backend
    )


def loss_args(tc: TrainConfig) -> dict[str, Any]:
    """The train section's GRPO loss settings in GRPOConfig's names.

    luspo is a sequence-level loss: TRL asks for sequence-level importance ratios with it (the LUSPO
    paper's setup), every other type keeps token-level ones. cispo's epsilon_high is a cap on the ratio
    itself, not a clip range around 1: an unset one is TRL's recommended 5.0, not epsilon (0.2 would
    scale every token's gradient by 0.2).

    >>> loss_args(TrainConfig(loss_type="cispo"))["epsilon_high"], loss_args(TrainConfig())["epsilon_high"]
    (5.0, None)
    """
    high = tc.epsilon_high if tc.epsilon_high is not None or tc.loss_type != "cispo" else 5.0
    return {"loss_type": tc.loss_type, "epsilon": tc.epsilon, "epsilon_high": high,
            "scale_rewards": tc.scale_rewards, "mask_truncated_completions": tc.mask_truncated_completions,
            "top_entropy_quantile": tc.top_entropy_quantile,
            "importance_sampling_level": "sequence" if tc.loss_type == "luspo" else "token"}


def length_rewards(cfg: ExpoConfig) -> list[Any]:
    """The reward functions added to correctness: DAPO's soft overlong punishment when
    train.overlong_buffer is set (TRL's own, summed with the verifier's reward, weight 1)."""
    if cfg.train.overlong_buffer <= 0:
        return []
    from trl.rewards import get_soft_overlong_punishment

    return [get_soft_overlong_punishment(cfg.generation.max_new_tokens, cfg.train.overlong_buffer)]


def group_filter(tc: TrainConfig, has_nll_term: bool) -> GroupFilter | None:
    """Dynamic sampling for this arm (None when train.filter_groups is off): an arm with an NLL term
    keeps its all-wrong groups for it, plain GRPO drops them as DAPO does."""
    if not tc.filter_groups:
        return None
    return GroupFilter(keep_wrong=has_nll_term, skip_wrong_rollouts=tc.filter_skip_unsolved_rollouts,
                       max_rounds=tc.filter_max_rounds)


def nll_term(arm: str, cfg: ExpoConfig, rows: list[dict[str, Any]], buffer: Any) -> NLLTerm | None:
    """The arm's NLL term (None when it has none or its weight is 0): self-explanations from the
    buffer ("expo") or the data set's reference solutions ("sft"), weighted per step by the arm table."""
    spec = arm_spec(arm)
    if not spec.has_nll_term(cfg.train):
        return None
    if spec.nll == "expo":
        text_for = buffer.pick
    else:
        solutions = {str(r["id"]): r["solution"] for r in rows if str(r.get("solution") or "").strip()}
        text_for = solutions.get
    return NLLTerm(spec.nll, text_for, spec.weight_at(cfg.train), cfg.train.expo_on, cfg.nll_max_tokens())


def build_trainer(arm: str, cfg: ExpoConfig, rows: list[dict[str, Any]], model: Any, tokenizer: Any,
                  on_gpu: bool, explanations_dir: str | Path | None, checkpoint_dir: Path, reward_fn: RewardFn,
                  regenerate: Regenerate | None, callbacks: list[Any],
                  metrics_writer: MetricsWriter | None = None, write_hints: WriteHints | None = None
                  ) -> ExpoGRPOTrainer:
    dataset = Dataset.from_list([
        {"prompt": solve_prompt(r["question"], tokenizer, cfg.prompts), "id": str(r["id"]), "answer": r["answer"]}
        for r in rows
    ])
    spec = arm_spec(arm)
    buffer = make_buffer(cfg, explanations_dir) if spec.nll == "expo" else None  # the expo term's texts
    online = spec.nll == "expo" and cfg.explain.mode == "online" and spec.has_nll_term(cfg.train)
    if online and regenerate is None:
        regenerate = default_regenerate(cfg, tokenizer)
    term = nll_term(arm, cfg, rows, buffer)
    hinter = make_hinter(cfg, rows, tokenizer, buffer if term is not None else None, write_hints)
    trainer = ExpoGRPOTrainer(
        model=model, reward_funcs=[reward_fn, *length_rewards(cfg)],  # correctness first: see _calculate_rewards
        args=grpo_args(cfg, checkpoint_dir, on_gpu), train_dataset=dataset,
        processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=callbacks,
        nll_term=term, buffer=buffer, group_filter=group_filter(cfg.train, term is not None),
        regenerate=regenerate if online else None, regenerate_every=cfg.explain.regenerate_every,
        rows_by_id={str(r["id"]): r for r in rows}, metrics_writer=metrics_writer, progress_label=f"train {arm}",
        hinter=hinter,
    )
    trainer.remove_callback(PrinterCallback)  # MetricsWriter logs one short line per step instead
    return trainer


def default_regenerate(cfg: ExpoConfig, tokenizer: Any) -> Regenerate:
    """Online explanations from the current policy through expo.explain (cached by model state)."""
    from expo.train.explanations import OnlineRegenerator

    return OnlineRegenerator(cfg, tokenizer)


def train_grpo(arm: str, cfg: ExpoConfig, rows: list[dict[str, Any]], model_dir: str | Path,
               explanations_dir: str | Path | None, out: Path, *, reward_fn: RewardFn,
               regenerate: Regenerate | None, callbacks: list[Any] | None,
               checkpoint_dir: Path) -> dict[str, Any]:
    """Train one arm on the GRPO trainer (resuming from the newest intact checkpoint) and save it."""
    model, tokenizer, on_gpu = load_policy(model_dir, cfg)
    writer = MetricsWriter(out / "metrics.jsonl", arm)  # writes its file on the main process only
    trainer = build_trainer(arm, cfg, rows, model, tokenizer, on_gpu, explanations_dir, checkpoint_dir,
                            reward_fn, regenerate, [writer, StepProgress(arm), *(callbacks or [])],
                            metrics_writer=writer)
    resume = latest_valid_checkpoint(checkpoint_dir, extra_files=(EXPO_STATE_FILE,))
    if resume is not None:
        trainer.load_expo_state(str(resume))
    writer.restore(resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    summary = save_final_model(arm, cfg, trainer.accelerator.unwrap_model(trainer.model),
                               trainer.state.global_step, trainer.buffer, tokenizer, model_dir, out, writer,
                               resume)
    trainer.accelerator.wait_for_everyone()  # no process exits (ending the job) before rank 0 has saved
    return summary


__all__ = ["BatchPlan", "batch_plan", "grpo_args", "loss_args", "group_filter", "nll_term", "build_trainer",
           "train_grpo"]
