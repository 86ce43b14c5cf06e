"""The process each GPU runs: rebuild the config, train one arm with expo.train.

Two launchers start it once per GPU: `accelerate launch` on every node of a TrainJob (trainjob.py's
command), and `torchrun --standalone` inside the train step's own pod when one node has several GPUs
(pod.py). TRL's trainers inside `train_arm` read the distributed setup the launcher put in the
environment, so this file does no distribution of its own; rank 0 alone writes the output folder.
Tracking stays with the pipeline task that launched it, so N x G processes do not open N x G MLflow runs.

    python -m expo.cluster.worker --config-json '{...}' --arm grpo --data /workspace/j/data \
        --model /workspace/j/model --output /workspace/j/output [--explanations /workspace/j/explanations] \
        [--checkpoint-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from expo.config import ExpoConfig
from expo.errors import ConfigError, ExpoError
from expo.sections import partial_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m expo.cluster.worker", description="train one arm inside a Kubeflow Trainer TrainJob"
    )
    parser.add_argument("--config-json", required=True, help="the resolved config as JSON")
    parser.add_argument("--arm", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--explanations", default=None)
    parser.add_argument("--checkpoint-dir", default=None,
                        help="where checkpoints live and a retry resumes from (default: OUTPUT/checkpoints)")
    return parser.parse_args(argv)


def load_config_json(text: str) -> ExpoConfig:
    """The config from its JSON text, with the same strict checks as a YAML file."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config-json: not valid JSON ({exc.msg} at character {exc.pos})") from None
    return partial_config(data)  # the sections the train step was given, as in its own process


def exit_code(work: Callable[[], object]) -> int:
    """Run `work`: 0, or 2 with an ExpoError as the one `expo worker: error:` line that the launching
    step relays (expo.cluster.pod.run_processes)."""
    try:
        work()
    except ExpoError as exc:
        print(f"expo worker: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def train() -> None:
        cfg = load_config_json(args.config_json)
        from expo.train import train_arm  # heavy (torch, TRL): only once the arguments are sound

        if args.checkpoint_dir is None:
            train_arm(args.arm, cfg, args.data, args.model, args.explanations, args.output)
        else:
            train_arm(args.arm, cfg, args.data, args.model, args.explanations, args.output,
                      checkpoint_dir=args.checkpoint_dir)

    return exit_code(train)


if __name__ == "__main__":
    sys.exit(main())
