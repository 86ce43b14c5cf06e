"""The GRPO family (grpo, exp-grpo, grpo-sft): config mapping, trainer assembly, resume, final save.

One optimizer step = `prompts_per_step` prompts x `num_generations` rollouts: the GLOBAL batch, the
same whatever the number of processes. It is generated once and used once: each of the W processes
holds 1/W of the prompts (whole groups), and goes through its share in A micro-batches of
`train.rollouts_per_micro_batch` rollouts (TRL's per_device_train_batch_size), accumulated into one
optimizer step (gradient_accumulation_steps = steps_per_generation = A, num_iterations = 1). So
"step" means the same thing in our schedule, our logs and TRL's checkpoints. For example
32 prompts x 8 rollouts = 256 per step on 8 GPUs = 32 per GPU = 4 micro-batches of 8.

Precision: the policy is trained with fp32 master weights whenever `model.dtype` is a half dtype (or
auto), and bf16 / fp16 is the compute dtype (TRL's autocast flags) on a GPU: AdamW updates of
lr x ~1 are far below bf16's resolution near typical weights, so pure-bf16 weights mostly never move.
With LoRA the frozen base stays in the half dtype (PEFT keeps the adapter itself in fp32).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback
from trl import GRPOConfig

from expo.config import ExpoConfig, ModelConfig, TrainConfig
from expo.errors import ConfigError
from expo.generation.trl_rollouts import rollout_args
from expo.io import write_json
from expo.modeling import load_model
from expo.prompts import solve_prompt
from expo.train.explanations import Regenerate
from expo.train.group_filter import GroupFilter
from expo.train.grpo import EXPO_STATE_FILE, ExpoGRPOTrainer, NLLTerm
from expo.train.metrics import MetricsWriter
from expo.train.progress import StepProgress
from expo.train.resume import latest_valid_checkpoint
from expo.train.run import RewardFn, beta_of, is_main_process, make_buffer, world_size, write_model_card

HALF_DTYPES = ("bfloat16", "float16")


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


def mixed_precision(dtype: str, on_gpu: bool, bf16_supported: bool) -> dict[str, bool]:
    """TRL's `bf16` / `fp16` autocast flags for `model.dtype` (the compute dtype while training).

    CPU: none (fp32 throughout; this project's CPUs have no fast bf16). GPU: the configured half
    dtype, "auto" = bf16 where supported; the weights themselves stay fp32 (`training_dtype`).

    >>> mixed_precision("bfloat16", True, True), mixed_precision("bfloat16", False, False)
    ({'bf16': True, 'fp16': False}, {'bf16': False, 'fp16': False})
    """
    if not on_gpu or dtype == "float32":
        return {"bf16": False, "fp16": False}
    if dtype == "float16":
        return {"bf16": False, "fp16": True}
    if dtype == "bfloat16" and not bf16_supported:
        raise ConfigError("config key 'model.dtype': this GPU does not support bfloat16; "
                          "use float16 or float32")
    return {"bf16": bf16_supported, "fp16": False}


def training_dtype(cfg: ExpoConfig) -> str:
    """The dtype the policy's weights are loaded in for training: fp32 master weights, except the
    frozen base of a LoRA run, which keeps a configured half dtype (its adapter is fp32 anyway)."""
    if cfg.train.lora and cfg.model.dtype in HALF_DTYPES:
        return cfg.model.dtype
    return "float32" if cfg.model.dtype in ("auto", *HALF_DTYPES) else cfg.model.dtype


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
        **precision,  # autocast over fp32 master weights (see training_dtype)
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


def group_filter(tc: TrainConfig, has_nll_term: bool) -> GroupFilter | None:
    """Dynamic sampling for this arm (None when train.filter_groups is off): an arm with an NLL term
    keeps its all-wrong groups for it, plain GRPO drops them as DAPO does."""
    if not tc.filter_groups:
        return None
    return GroupFilter(keep_wrong=has_nll_term, skip_wrong_rollouts=tc.filter_skip_unsolved_rollouts,
                       max_rounds=tc.filter_max_rounds)


def lora_config(cfg: ExpoConfig) -> Any:
    """A LoRA adapter on every linear layer (rank lora_r, alpha 2r) when train.lora is on."""
    if not cfg.train.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.train.lora_r, lora_alpha=2 * cfg.train.lora_r, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def load_policy(model_dir: str | Path, cfg: ExpoConfig) -> tuple[Any, Any, bool]:
    """(model, tokenizer, on_gpu), the model in training mode with weights in `training_dtype(cfg)`
    (fp32 master weights for a configured bf16 / fp16: the trainer's autocast computes in it).
    Under torchrun each process takes its own GPU (LOCAL_RANK)."""
    on_gpu = torch.cuda.is_available()
    model_cfg = ModelConfig(**{**vars(cfg.model), "dtype": training_dtype(cfg)})
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if on_gpu else "cpu"
    model, tokenizer = load_model(model_dir, model_cfg, device=device)
    model.train()
    return model, tokenizer, on_gpu


def nll_term(arm: str, cfg: ExpoConfig, rows: list[dict[str, Any]], buffer: Any) -> NLLTerm | None:
    if arm == "exp-grpo" and cfg.train.expo_beta > 0:
        return NLLTerm("expo", buffer.pick, beta_of(arm, cfg), cfg.train.expo_on)
    if arm == "grpo-sft" and cfg.train.sft_beta > 0:
        solutions = {str(r["id"]): r["solution"] for r in rows if str(r.get("solution") or "").strip()}
        return NLLTerm("sft", solutions.get, beta_of(arm, cfg), cfg.train.expo_on)
    return None


def build_trainer(arm: str, cfg: ExpoConfig, rows: list[dict[str, Any]], model: Any, tokenizer: Any,
                  on_gpu: bool, explanations_dir: str | Path | None, checkpoint_dir: Path, reward_fn: RewardFn,
                  regenerate: Regenerate | None, callbacks: list[Any],
                  metrics_writer: MetricsWriter | None = None) -> ExpoGRPOTrainer:
    dataset = Dataset.from_list([
        {"prompt": solve_prompt(r["question"], tokenizer, cfg.prompts), "id": str(r["id"]), "answer": r["answer"]}
        for r in rows
    ])
    buffer = make_buffer(cfg, explanations_dir) if arm == "exp-grpo" else None
    online = arm == "exp-grpo" and cfg.explain.mode == "online" and cfg.train.expo_beta > 0
    if online and regenerate is None:
        regenerate = default_regenerate(cfg, tokenizer)
    term = nll_term(arm, cfg, rows, buffer)
    trainer = ExpoGRPOTrainer(
        model=model, reward_funcs=[reward_fn], args=grpo_args(cfg, checkpoint_dir, on_gpu), train_dataset=dataset,
        processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=callbacks,
        nll_term=term, buffer=buffer, group_filter=group_filter(cfg.train, term is not None),
        regenerate=regenerate if online else None, regenerate_every=cfg.explain.regenerate_every,
        rows_by_id={str(r["id"]): r for r in rows}, metrics_writer=metrics_writer,
    )
    trainer.remove_callback(PrinterCallback)  # MetricsWriter logs one short line per step instead
    return trainer


def default_regenerate(cfg: ExpoConfig, tokenizer: Any) -> Regenerate:
    """Online explanations from the current policy through expo.explain (cached by model state)."""
    from expo.train.explanations import OnlineRegenerator

    return OnlineRegenerator(cfg, tokenizer)


def train_grpo_family(arm: str, cfg: ExpoConfig, rows: list[dict[str, Any]], model_dir: str | Path,
                      explanations_dir: str | Path | None, out: Path, *, reward_fn: RewardFn,
                      regenerate: Regenerate | None, callbacks: list[Any] | None,
                      checkpoint_dir: Path) -> dict[str, Any]:
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
    summary = finish(arm, cfg, trainer.accelerator.unwrap_model(trainer.model), trainer.state.global_step,
                     trainer.buffer, tokenizer, model_dir, out, writer, resume)
    trainer.accelerator.wait_for_everyone()  # no process exits (ending the job) before rank 0 has saved
    return summary


def finish(arm: str, cfg: ExpoConfig, model: Any, steps: int, buffer: Any, tokenizer: Any,
           model_dir: str | Path, out: Path, writer: MetricsWriter, resumed_from: Path | None) -> dict[str, Any]:
    """Save the final model folder (LoRA merged into plain weights) and the summary; the files are
    written by the main process alone (every process returns the summary)."""
    final = out / "model"
    main = is_main_process()
    if main:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(final, safe_serialization=True)
        tokenizer.save_pretrained(final)
        write_model_card(final, model_dir, arm, cfg)
    summary = {
        "arm": arm, "steps": steps, "model_dir": str(final),
        "metrics_path": str(out / "metrics.jsonl"), "resumed_from": str(resumed_from) if resumed_from else None,
        "final_metrics": writer.rows[-1] if writer.rows else {},
        "expo_beta": cfg.train.expo_beta if arm == "exp-grpo" else 0.0,
    }
    if buffer is not None:
        summary["explanation_rounds"] = [vars(r) for r in buffer.rounds]
    if main:
        write_json(out / "summary.json", summary)
    return summary


__all__ = ["BatchPlan", "batch_plan", "mixed_precision", "training_dtype", "grpo_args", "loss_args",
           "group_filter", "lora_config", "load_policy", "build_trainer", "train_grpo_family", "finish"]
