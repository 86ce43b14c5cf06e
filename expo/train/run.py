"""The train stage: one arm (grpo, exp-grpo, grpo-sft, exp-dpo) from folders to a model folder.

    summary = train_arm("exp-grpo", cfg, "data/", "model/", "explanations/", "out/")

Reads `data_dir/train.jsonl`, the model folder, and (exp-grpo, exp-dpo) `explanations_dir/explanations.jsonl`.
Writes `output_dir/metrics.jsonl` (one line per step), `checkpoint-N/` folders every
`train.checkpoint_every` steps (under `checkpoint_dir`, default `output_dir/checkpoints`), `output_dir/model/` (safetensors, tokenizer, the model card) and
`output_dir/summary.json`. A killed run called again with the same arguments resumes from its newest
intact checkpoint and ends where an uninterrupted run ends. Every argument is checked before any work.

The three GRPO-family arms are one code path (`ExpoGRPOTrainer`): grpo has no NLL term, exp-grpo scores
self-explanations with weight `expo_beta_at(step)`, grpo-sft scores the data set's reference solutions
with constant weight `sft_beta`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expo.artifacts import card_path, fingerprint, read_card, read_table, write_card
from expo.config import ALGORITHMS, ExpoConfig
from expo.errors import ConfigError, DataError
from expo.io import write_json
from expo.losses import SCHEDULES, expo_beta_at
from expo.train.explanations import ExplanationBuffer, Regenerate, load_offline

log = logging.getLogger(__name__)

RewardFn = Callable[..., list[float | None]]


def validate_arm(arm: str, cfg: ExpoConfig, data_dir: str | Path, model_dir: str | Path,
                 explanations_dir: str | Path | None) -> list[dict[str, Any]]:
    """Every check that can fail before training starts; returns the training rows."""
    if arm not in ALGORITHMS:
        raise ConfigError(f"unknown arm {arm!r} (known: {', '.join(ALGORITHMS)})")
    tc = cfg.train.for_arm(arm)
    tc.validate("train")
    cfg.explain.validate("explain")
    if tc.expo_beta_schedule not in SCHEDULES:
        raise ConfigError(f"config key 'train.expo_beta_schedule': unknown schedule {tc.expo_beta_schedule!r}")
    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(f"model folder {str(model_dir)!r} has no config.json")
    rows = _train_rows(data_dir)
    if arm == "grpo-sft" and not any(str(r.get("solution") or "").strip() for r in rows):
        raise DataError(f"arm 'grpo-sft' needs reference solutions: no row of {data_dir}/train.jsonl has a "
                        "'solution'")
    needs_explanations = arm == "exp-dpo" or (arm == "exp-grpo" and tc.expo_beta > 0)
    if needs_explanations:
        if explanations_dir is None:
            raise ConfigError(f"arm {arm!r} needs self-explanations: give --explanations DIR "
                              "(the explanations stage output)")
        accepted, _ = load_offline(explanations_dir)
        ids = {str(r["id"]) for r in rows}
        if not any(str(a["id"]) in ids for a in accepted):
            raise ConfigError(f"arm {arm!r}: {explanations_dir}/explanations.jsonl has no accepted explanation "
                              "of a training question")
    return rows


def _train_rows(data_dir: str | Path) -> list[dict[str, Any]]:
    return read_table(data_dir, "train.jsonl", ("id", "question", "answer"), nonempty=True)


def train_arm(arm: str, cfg: ExpoConfig, data_dir: str | Path, model_dir: str | Path,
              explanations_dir: str | Path | None, output_dir: str | Path, *,
              reward_fn: RewardFn | None = None, regenerate: Regenerate | None = None,
              callbacks: list[Any] | None = None, checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one arm and return its summary (final metrics included); see the module docstring.

    `reward_fn(completions, answer, **kw)` defaults to the Math-Verify reward; `regenerate(model, rows)`
    (online explanations) defaults to expo.explain's sampler; `callbacks` are extra HF TrainerCallbacks;
    `checkpoint_dir` (default `output_dir/checkpoints`) may live outside the output folder, so a retry
    with a fresh output folder still resumes.
    """
    rows = validate_arm(arm, cfg, data_dir, model_dir, explanations_dir)
    cfg = arm_config(cfg, arm)
    out = Path(output_dir)
    if card_path(out / "model").is_file():
        raise ConfigError(f"output folder {str(out)!r} already holds a trained model; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    reward_fn = reward_fn or default_reward()
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else out / "checkpoints"
    if arm == "exp-dpo":
        from expo.train.dpo import train_dpo

        return train_dpo(cfg, rows, model_dir, explanations_dir, out, reward_fn=reward_fn,
                         regenerate=regenerate, callbacks=callbacks, checkpoint_dir=checkpoints)
    from expo.train.family import train_grpo_family
    from expo.train.validation import Validator, select_checkpoint

    if cfg.train.eval_every > 0:  # validation during training: a learning curve, the best checkpoint
        from expo.modeling import load_tokenizer

        callbacks = [*(callbacks or []), Validator(cfg, load_tokenizer(model_dir), data_dir, out)]
    summary = train_grpo_family(arm, cfg, rows, model_dir, explanations_dir, out, reward_fn=reward_fn,
                                regenerate=regenerate, callbacks=callbacks, checkpoint_dir=checkpoints)
    if is_main_process():  # which weights out/model holds: the last, or the best validated
        summary["selection"] = select_checkpoint(cfg, out, summary["steps"])
        write_json(out / "summary.json", summary)
    return summary


def arm_config(cfg: ExpoConfig, arm: str) -> ExpoConfig:
    """The config one arm trains with: `train.arm_overrides[arm]` (its own learning rate, loss
    settings, ...) over the train section, so every later reader of `cfg.train` sees the arm's values."""
    return dataclasses.replace(cfg, train=cfg.train.for_arm(arm))


def world_size() -> int:
    """Training processes of this run: $WORLD_SIZE, which torchrun and accelerate launch set (1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or a run without a launcher): the one process that writes the output folder."""
    return int(os.environ.get("RANK", "0")) == 0


def default_reward() -> RewardFn:
    """The verifier reward: 1.0 when a completion's final answer is equivalent to the gold one."""
    from expo.verify import math_reward

    return math_reward


def make_buffer(cfg: ExpoConfig, explanations_dir: str | Path | None) -> ExplanationBuffer:
    """The buffer seeded with the initial policy's accepted explanations (the collapse guard's floor)."""
    buffer = ExplanationBuffer(capacity=max(cfg.explain.keep_per_question, 1) * 2,
                               acceptance_floor=cfg.train.acceptance_floor)
    if explanations_dir is not None:
        accepted, samples = load_offline(explanations_dir)
        buffer.seed(accepted, samples)
    return buffer


def write_model_card(model_dir: Path, parent_dir: str | Path, arm: str, cfg: ExpoConfig) -> None:
    """The model card beside the weights: lineage (base, parent), arm and the ExPO weight."""
    parent_card = read_card(parent_dir)
    write_card(model_dir, {
        "base": parent_card.get("base", str(parent_dir)), "parent": str(parent_dir), "arm": arm,
        "expo_beta": cfg.train.expo_beta if arm == "exp-grpo" else 0.0,
        "expo_beta_schedule": cfg.train.expo_beta_schedule, "steps": cfg.train.steps,
        "fingerprint": fingerprint(model_dir),
    })


def beta_of(arm: str, cfg: ExpoConfig) -> Callable[[int], float]:
    """The NLL weight per step for an arm (0 for grpo)."""
    tc = cfg.train
    if arm == "exp-grpo":
        return lambda step: expo_beta_at(step, tc.steps, tc.expo_beta, tc.expo_beta_schedule)
    if arm == "grpo-sft":
        return lambda step: tc.sft_beta
    return lambda step: 0.0


__all__ = ["train_arm", "validate_arm", "arm_config",
           "default_reward", "make_buffer", "write_model_card", "beta_of",
           "world_size", "is_main_process"]
