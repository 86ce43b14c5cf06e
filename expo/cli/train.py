"""`expo train`: one training arm alone (ExP-GRPO, GRPO, GRPO + expert-CoT SFT or ExP-DPO).

    expo train --arm exp-grpo --data out/data --model out/model --explanations out/explanations \\
        --output out/train-exp-grpo --set train.steps=50 --set train.expo_beta=0.04

Run it again with the same --output after a crash and it resumes from the newest intact checkpoint.
The last line on stdout names the trained model folder; one line per step goes to OUTPUT/metrics.jsonl.
"""

from __future__ import annotations

import argparse

from expo.cli import add_config_arguments

# = expo.config.ALGORITHMS (tests/test_train_arms.py checks it); a literal: `expo --help` imports no config
ARMS = ("grpo", "exp-grpo", "grpo-sft", "exp-dpo", "sdft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arm", required=True, choices=ARMS,
                        help="grpo (expo_beta 0), exp-grpo (GRPO + self-explanation NLL), grpo-sft (GRPO + "
                             "reference-solution NLL), exp-dpo (DPO: self-explanation vs own wrong answer)")
    parser.add_argument("--data", required=True, metavar="DIR", help="data stage folder (train.jsonl)")
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder to start from")
    parser.add_argument("--explanations", metavar="DIR",
                        help="explanations stage folder (explanations.jsonl); needed by exp-grpo and exp-dpo")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for model/, metrics.jsonl, checkpoints/ and summary.json")
    parser.add_argument("--checkpoints", metavar="DIR",
                        help="where checkpoints live (default OUTPUT/checkpoints); resumes from there")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import logging

    from expo.config import load_config
    from expo.train import train_arm

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, args.overrides)
    summary = train_arm(args.arm, cfg, args.data, args.model, args.explanations, args.output,
                        checkpoint_dir=args.checkpoints)
    final = summary.get("final_metrics", {})
    shown = {k: final[k] for k in ("total_loss", "reward_mean", "expo_nll", "acceptance") if final.get(k) is not None}
    print(f"{args.arm}: {summary['steps']} steps, " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    if summary.get("resumed_from"):
        print(f"resumed from {summary['resumed_from']}")
    print(summary["model_dir"])
    return 0
