"""The train stage: ExP-GRPO, GRPO, GRPO + expert-CoT SFT and ExP-DPO on TRL (see run.py).

    from expo.train import train_arm
    summary = train_arm("exp-grpo", cfg, data_dir, model_dir, explanations_dir, output_dir)

Modules: run (stage entry, checks), family (GRPO-family assembly), grpo (the TRL subclass), dpo,
explanations (buffer + collapse guard), resume (checkpoint checks), metrics (metrics.jsonl), timing.
"""

from expo.train.run import train_arm, validate_arm

__all__ = ["train_arm", "validate_arm"]
