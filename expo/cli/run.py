"""`expo run`: the whole pipeline locally through kfp.local (caching on)."""

from __future__ import annotations

import argparse

from expo.cli import add_config_arguments

HELP = "run the whole pipeline locally through kfp.local (embedded default with no arguments)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--output", metavar="DIR",
                        help="run folder (default ./expo-runs/<name>); re-using it serves unchanged "
                             "steps from cache")


def run(args: argparse.Namespace) -> int:
    from expo.config import load_pipeline_config
    from pipelines.local_run import main_run  # kfp lives outside the library

    cfg = load_pipeline_config(args.config, args.overrides)
    return main_run(cfg, args.output)
