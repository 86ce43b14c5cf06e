"""The train stage: one arm (grpo, exp-grpo, grpo-sft, exp-dpo, sdft) from folders to a model folder.

    summary = train_arm("exp-grpo", cfg, "data/", "model/", "explanations/", "out/")

Reads `data_dir/train.jsonl`, the model folder, and (exp-grpo, exp-dpo)
`explanations_dir/explanations.jsonl`. Writes `output_dir/metrics.jsonl` (one line per step),
`checkpoint-N/` folders every `train.checkpoint_every` steps (under `checkpoint_dir`, default
`output_dir/checkpoints`), `output_dir/model/` (safetensors, tokenizer, the model card) and
`output_dir/summary.json`. A killed run called again with the same arguments resumes from its newest
intact checkpoint and ends where an uninterrupted run ends. Every argument is checked before any work.

Which trainer an arm runs on, which text its NLL term scores with which weight, and whether it needs
the explanations stage is the arm table's (expo.train.arms): grpo, exp-grpo and grpo-sft are one code
path (`ExpoGRPOTrainer`, expo.train.grpo_training), exp-dpo runs DPO rounds (expo.train.dpo), sdft
self-distils on TRL's SDFT trainer (expo.train.sdft).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from expo.artifacts import card_path, read_table
from expo.config import ExpoConfig
from expo.errors import ConfigError, DataError
from expo.io import write_json
from expo.losses import SCHEDULES
from expo.train.arms import arm_spec
from expo.train.distributed import is_main_process
from expo.train.explanations import Regenerate, load_offline
from expo.train.rewards import RewardFn, default_reward
from expo.train.trainer_status import finish_open

log = logging.getLogger(__name__)


def validate_arm(arm: str, cfg: ExpoConfig, data_dir: str | Path, model_dir: str | Path,
                 explanations_dir: str | Path | None) -> list[dict[str, Any]]:
    """Every check that can fail before training starts; returns the training rows."""
    spec = arm_spec(arm)
    tc = cfg.train.for_arm(arm)
    tc.validate("train")
    cfg.explain.validate("explain")
    if tc.expo_beta_schedule not in SCHEDULES:
        raise ConfigError(f"config key 'train.expo_beta_schedule': unknown schedule {tc.expo_beta_schedule!r}")
    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(f"model folder {str(model_dir)!r} has no config.json")
    rows = _train_rows(data_dir)
    has_solutions = any(str(r.get("solution") or "").strip() for r in rows)
    if spec.trainer == "grpo" and tc.hints and tc.hint_source == "solution" and not has_solutions:
        raise DataError(f"config key 'train.hint_source': 'solution' hints need reference solutions, and no row of "
                        f"{data_dir}/train.jsonl has a 'solution' (use hint_source auto or model)")
    if spec.needs_solutions and not has_solutions:
        raise DataError(f"arm {arm!r} needs reference solutions: no row of {data_dir}/train.jsonl has a "
                        "'solution'")
    if spec.needs_explanations(tc):
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
    # The trainers import TRL, so they load here: `import expo.train` (stages read its file names) stays TRL-free.
    if arm_spec(arm).trainer == "dpo":
        from expo.train.dpo import train_dpo

        summary = train_dpo(cfg, rows, model_dir, explanations_dir, out, reward_fn=reward_fn,
                            regenerate=regenerate, callbacks=callbacks, checkpoint_dir=checkpoints)
        finish_open()  # the TrainJob's status: 100 % once the arm has trained (its last round may be skipped)
        return summary
    from expo.train.validation import Validator, select_checkpoint

    if cfg.train.eval_every > 0:  # validation during training: a learning curve, the best checkpoint
        from expo.modeling import load_tokenizer

        callbacks = [*(callbacks or []), Validator(cfg, load_tokenizer(model_dir), data_dir, out)]
    if arm_spec(arm).trainer == "sdft":
        from expo.train.sdft import train_sdft

        summary = train_sdft(cfg, rows, model_dir, out, reward_fn=reward_fn, callbacks=callbacks,
                             checkpoint_dir=checkpoints)
    else:
        from expo.train.grpo_training import train_grpo

        summary = train_grpo(arm, cfg, rows, model_dir, explanations_dir, out, reward_fn=reward_fn,
                             regenerate=regenerate, callbacks=callbacks, checkpoint_dir=checkpoints)
    if is_main_process():  # which weights out/model holds: the last, or the best validated
        summary["selection"] = select_checkpoint(cfg, out, summary["steps"])
        write_json(out / "summary.json", summary)
    finish_open()  # the TrainJob's status: 100 % once the arm's model is saved
    return summary


def arm_config(cfg: ExpoConfig, arm: str) -> ExpoConfig:
    """The config one arm trains with: `train.arm_overrides[arm]` (its own learning rate, loss
    settings, ...) over the train section, so every later reader of `cfg.train` sees the arm's values."""
    return dataclasses.replace(cfg, train=cfg.train.for_arm(arm))


__all__ = ["train_arm", "validate_arm", "arm_config"]
