"""ExP-DPO on TRL's DPOTrainer: prefer the policy's own self-explanation to its own wrong solution.

For every training question a pair is built from the policy itself, under the plain solve prompt:
- chosen: an accepted self-explanation (it ends in the verified gold answer), from the buffer;
- rejected: one of the policy's own solutions to the same question, sampled with the solve prompt at
  the rollout temperature and verified wrong (reward 0; unjudgeable samples are not used).
Questions lacking either side get no pair. Offline (`dpo_rounds = 1`): one round on the initial
policy's explanations. Online (`dpo_rounds = R`): R rounds of `steps / R` DPO steps; before each round
after the first, both sides are regenerated with the current policy (explanations through the same
collapse guard as ExP-GRPO), and the reference model is the policy at the start of the round.

Resume: each round's pairs are saved before it trains (`round-r/pairs.jsonl`) and each finished
round's policy is saved (`round-r/policy/`), so a killed run redoes at most the unfinished part of one
round, from that round's newest intact checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PrinterCallback
from trl import DPOConfig, DPOTrainer

from expo.config import ExpoConfig
from expo.errors import DataError
from expo.io import read_json, read_jsonl, write_json, write_jsonl
from expo.prompts import solve_prompt
from expo.train.explanations import OnlineRegenerator, Regenerate
from expo.train.family import finish, lora_config, load_policy
from expo.train.metrics import MetricsWriter
from expo.train.resume import latest_valid_checkpoint
from expo.train.run import RewardFn, make_buffer

SampleSolutions = Callable[[Any, list[dict[str, Any]]], list[list[str]]]


def round_steps(total: int, rounds: int) -> list[int]:
    """Split `total` steps over `rounds` as evenly as possible, earlier rounds first: (10, 3) -> [4, 3, 3]."""
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def default_sampler(cfg: ExpoConfig, tokenizer: Any) -> SampleSolutions:
    """The policy's own solutions: `explain.samples_per_question` samples per question, solve prompt."""

    def sample(model: Any, rows: list[dict[str, Any]]) -> list[list[str]]:
        from expo.generation import make_generator

        generator = make_generator(model, tokenizer, cfg.generation)
        prompts = [solve_prompt(r["question"], tokenizer, cfg.prompts) for r in rows]
        outs = generator.generate(prompts, n=cfg.explain.samples_per_question, temperature=cfg.train.temperature,
                                  seed=cfg.train.seed)
        return [[c.text for c in completions] for completions in outs]

    return sample


def build_pairs(rows: list[dict[str, Any]], chosen_for: Callable[[str], str | None],
                solutions: list[list[str]], reward_fn: RewardFn, tokenizer: Any, cfg: ExpoConfig
                ) -> list[dict[str, Any]]:
    """One (prompt, chosen, rejected) per question that has an explanation and a verified-wrong solution."""
    flat = [(i, s) for i, sols in enumerate(solutions) for s in sols]
    scores = reward_fn([s for _, s in flat], [str(rows[i]["answer"]) for i, _ in flat]) if flat else []
    wrong: dict[int, str] = {}
    for (i, text), score in zip(flat, scores, strict=True):
        if score is not None and score < 0.5 and text.strip() and i not in wrong:
            wrong[i] = text
    pairs = []
    for i, row in enumerate(rows):
        chosen = chosen_for(str(row["id"]))
        if chosen is not None and i in wrong:
            pairs.append({"id": str(row["id"]), "prompt": solve_prompt(row["question"], tokenizer, cfg.prompts),
                          "chosen": chosen, "rejected": wrong[i]})
    return pairs


def dpo_args(cfg: ExpoConfig, folder: Path, steps: int, on_gpu: bool) -> DPOConfig:
    tc = cfg.train
    return DPOConfig(
        output_dir=str(folder), max_steps=steps, per_device_train_batch_size=tc.prompts_per_step,
        gradient_accumulation_steps=1, learning_rate=tc.learning_rate, lr_scheduler_type="constant",
        beta=tc.dpo_beta, max_grad_norm=tc.max_grad_norm, seed=tc.seed, logging_steps=1,
        save_strategy="steps", save_steps=tc.checkpoint_every, save_total_limit=3, report_to=[],
        use_cpu=not on_gpu, bf16=on_gpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=tc.gradient_checkpointing, disable_tqdm=True,
    )


def train_dpo(cfg: ExpoConfig, rows: list[dict[str, Any]], model_dir: str | Path,
              explanations_dir: str | Path | None, out: Path, *, reward_fn: RewardFn,
              regenerate: Regenerate | None, callbacks: list[Any] | None, checkpoint_dir: Path,
              sample_solutions: SampleSolutions | None = None) -> dict[str, Any]:
    model, tokenizer, on_gpu = load_policy(model_dir, cfg)
    buffer = make_buffer(cfg, explanations_dir)
    regenerate = regenerate or OnlineRegenerator(cfg, tokenizer)
    sample_solutions = sample_solutions or default_sampler(cfg, tokenizer)
    writer = MetricsWriter(out / "metrics.jsonl", "exp-dpo")
    plan = round_steps(cfg.train.steps, cfg.train.dpo_rounds)
    start, resume_ckpt = _resume_point(checkpoint_dir, len(plan), buffer, writer)
    if start > 0:
        model = AutoModelForCausalLM.from_pretrained(checkpoint_dir / f"round-{start - 1}" / "policy").train()
    done_steps = sum(plan[:start])
    for r in range(start, len(plan)):
        folder = checkpoint_dir / f"round-{r}"
        pairs = _round_pairs(folder, r, model, rows, buffer, regenerate, sample_solutions, reward_fn, tokenizer, cfg)
        writer.offset, writer.extra = done_steps, {"round": r, "pairs": len(pairs)}
        # The reference is the policy at the start of the round (TRL would reload the model folder's
        # weights from disk instead); with LoRA, TRL disables the adapter to get it.
        ref = None if cfg.train.lora else copy.deepcopy(model).eval().requires_grad_(False)
        trainer = DPOTrainer(model=model, ref_model=ref, args=dpo_args(cfg, folder, plan[r], on_gpu),
                             train_dataset=Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")}
                                                              for p in pairs]),
                             processing_class=tokenizer, peft_config=lora_config(cfg),
                             callbacks=[writer, *(callbacks or [])])
        trainer.remove_callback(PrinterCallback)
        ckpt = resume_ckpt if r == start else None
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        model = trainer.accelerator.unwrap_model(trainer.model)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # the next round starts (and takes its reference) from here
        model.save_pretrained(folder / "policy", safe_serialization=True)
        write_json(folder / "done.json", {"round": r, "buffer": buffer.state_dict(), "metrics": writer.rows})
        done_steps += plan[r]
    summary = finish("exp-dpo", cfg, model, done_steps, buffer, tokenizer, model_dir, out, writer, resume_ckpt)
    summary["rounds"] = len(plan)
    return summary


def _round_pairs(folder: Path, r: int, model: Any, rows: list[dict[str, Any]], buffer: Any,
                 regenerate: Regenerate, sample_solutions: SampleSolutions, reward_fn: RewardFn,
                 tokenizer: Any, cfg: ExpoConfig) -> list[dict[str, Any]]:
    """This round's pairs: read back when a killed run saved them, else sampled from the policy."""
    saved = folder / "pairs.jsonl"
    if saved.is_file():
        return read_jsonl(saved)
    model.eval()
    with torch.no_grad():
        if r > 0:
            buffer.add_round(regenerate(model, rows), step=r)
        solutions = sample_solutions(model, rows)
    model.train()
    pairs = build_pairs(rows, buffer.pick, solutions, reward_fn, tokenizer, cfg)
    if not pairs:
        raise DataError(f"exp-dpo round {r}: no question has both an accepted explanation and a wrong "
                        "solution of the policy (nothing to prefer)")
    write_jsonl(saved, pairs)
    return pairs


def _resume_point(root: Path, rounds: int, buffer: Any, writer: MetricsWriter) -> tuple[int, Path | None]:
    """(first unfinished round, its newest intact checkpoint or None); restores buffer and metrics."""
    start = 0
    while start < rounds and (root / f"round-{start}" / "done.json").is_file():
        start += 1
    writer.rows = []
    if start > 0:
        state = read_json(root / f"round-{start - 1}" / "done.json")
        buffer.load_state_dict(state["buffer"])
        writer.rows = state["metrics"]
    ckpt = latest_valid_checkpoint(root / f"round-{start}", extra_files=()) if start < rounds else None
    if ckpt is not None and (ckpt / "metrics.jsonl").is_file():
        writer.rows = read_jsonl(ckpt / "metrics.jsonl")  # cumulative: earlier rounds included
    write_jsonl(writer.path, writer.rows)
    return start, ckpt


__all__ = ["round_steps", "build_pairs", "default_sampler", "dpo_args", "train_dpo"]
