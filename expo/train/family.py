"""The GRPO family (grpo, exp-grpo, grpo-sft): config mapping, trainer assembly, resume, final save.

One optimizer step = `prompts_per_step` prompts x `num_generations` rollouts, generated once and
used once (TRL's steps_per_generation = num_iterations = gradient_accumulation = 1), so "step" means
the same thing in our schedule, our logs and TRL's checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback
from trl import GRPOConfig

from expo.config import ExpoConfig, ModelConfig
from expo.io import write_json
from expo.modeling import load_model
from expo.prompts import solve_prompt
from expo.train.explanations import Regenerate
from expo.train.grpo import EXPO_STATE_FILE, ExpoGRPOTrainer, NLLTerm
from expo.train.metrics import MetricsWriter
from expo.train.resume import latest_valid_checkpoint
from expo.train.run import RewardFn, beta_of, make_buffer, write_model_card


def grpo_args(cfg: ExpoConfig, checkpoint_dir: Path, on_gpu: bool) -> GRPOConfig:
    """Our TrainConfig in TRL's terms. Notes on the choices inline."""
    tc = cfg.train
    return GRPOConfig(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=tc.prompts_per_step * tc.num_generations,  # counted in rollouts
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=tc.num_generations,
        max_completion_length=cfg.generation.max_new_tokens,
        temperature=tc.temperature,
        top_p=cfg.generation.top_p,
        learning_rate=tc.learning_rate,
        lr_scheduler_type="constant",  # the ExPO weight has its own schedule; keep the LR out of it
        max_grad_norm=tc.max_grad_norm,
        max_steps=tc.steps,
        beta=tc.kl_beta,  # TRL's KL coefficient, unrelated to expo_beta
        loss_type="grpo",  # per-sequence token mean, then mean over the group (the GRPO paper's form)
        seed=tc.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=tc.checkpoint_every,
        save_total_limit=3,  # the newest may be damaged by a kill; keep earlier ones to fall back to
        report_to=[],
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),  # fp32 master weights, bf16 autocast on GPU
        gradient_checkpointing=tc.gradient_checkpointing,
        disable_tqdm=True,
    )


def lora_config(cfg: ExpoConfig) -> Any:
    """A LoRA adapter on every linear layer (rank lora_r, alpha 2r) when train.lora is on."""
    if not cfg.train.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.train.lora_r, lora_alpha=2 * cfg.train.lora_r, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def load_policy(model_dir: str | Path, cfg: ExpoConfig) -> tuple[Any, Any, bool]:
    """(model, tokenizer, on_gpu). With dtype "auto" weights stay fp32 (mixed precision does bf16)."""
    on_gpu = torch.cuda.is_available()
    model_cfg = cfg.model if cfg.model.dtype != "auto" else ModelConfig(**{**vars(cfg.model), "dtype": "float32"})
    model, tokenizer = load_model(model_dir, model_cfg, device="cuda" if on_gpu else "cpu")
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
    trainer = ExpoGRPOTrainer(
        model=model, reward_funcs=[reward_fn], args=grpo_args(cfg, checkpoint_dir, on_gpu), train_dataset=dataset,
        processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=callbacks,
        nll_term=nll_term(arm, cfg, rows, buffer), buffer=buffer,
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
    writer = MetricsWriter(out / "metrics.jsonl", arm)
    trainer = build_trainer(arm, cfg, rows, model, tokenizer, on_gpu, explanations_dir, checkpoint_dir,
                            reward_fn, regenerate, [writer, *(callbacks or [])], metrics_writer=writer)
    resume = latest_valid_checkpoint(checkpoint_dir, extra_files=(EXPO_STATE_FILE,))
    if resume is not None:
        trainer.load_expo_state(str(resume))
    writer.restore(resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return finish(arm, cfg, trainer.accelerator.unwrap_model(trainer.model), trainer.state.global_step,
                  trainer.buffer, tokenizer, model_dir, out, writer, resume)


def finish(arm: str, cfg: ExpoConfig, model: Any, steps: int, buffer: Any, tokenizer: Any,
           model_dir: str | Path, out: Path, writer: MetricsWriter, resumed_from: Path | None) -> dict[str, Any]:
    """Save the final model folder (LoRA merged into plain weights) and the summary."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    final = out / "model"
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
    write_json(out / "summary.json", summary)
    return summary


__all__ = ["grpo_args", "lora_config", "load_policy", "build_trainer", "train_grpo_family", "finish"]
