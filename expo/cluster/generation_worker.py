"""One process of a data-parallel explanations or evaluation stage (expo.cluster.generation starts one
per GPU with torchrun): rebuild the stage's config and run the stage's library call, which samples this
process's share of the questions on its own engine; the main process writes the stage's files.
Tracking stays with the pipeline task that launched it.

    python -m expo.cluster.generation_worker --stage evaluate --config-json '{...}' --data DIR \
        --model DIR --output DIR [--name NAME]
"""

from __future__ import annotations

import argparse
import sys

from expo.cluster.generation import STAGES
from expo.cluster.worker import exit_code, load_config_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m expo.cluster.generation_worker",
                                     description="one GPU's share of an explanations or evaluation stage")
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--config-json", required=True, help="the stage's resolved config as JSON")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--name", default="model", help="the evaluated model's name in its metrics")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def sample_share() -> None:
        cfg = load_config_json(args.config_json)
        if args.stage == "generate_explanations":
            from expo.explain import generate_explanations

            generate_explanations(cfg, args.data, args.model, args.output)
        else:
            from expo.evaluate import evaluate_model

            evaluate_model(args.model, args.data, cfg, args.output, name=args.name)

    return exit_code(sample_share)


if __name__ == "__main__":
    sys.exit(main())
