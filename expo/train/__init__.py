"""The train stage: ExP-GRPO, GRPO, GRPO + expert-CoT SFT and ExP-DPO on TRL (see run.py).

    from expo.train import train_arm
    summary = train_arm("exp-grpo", cfg, data_dir, model_dir, explanations_dir, output_dir)

Modules: run (stage entry, checks), arms (the arm table: trainer, NLL term, weight), grpo_training
(the GRPO trainer's arms: config, assembly, resume), grpo (the TRL subclass), dpo (ExP-DPO rounds),
policy (loading the policy: dtype, device, LoRA), final_model (the saved model, its card, the summary),
explanations (buffer + collapse guard), rewards, distributed (rank, world size), resume (checkpoint
checks), metrics_jsonl (metrics.jsonl), validation, timing.
"""

from expo.train.run import train_arm, validate_arm

__all__ = ["train_arm", "validate_arm"]
