"""`expo run`: the whole pipeline locally through kfp.local (caching on).

    expo run                                   # the embedded default, in ./expo-runs/expo-embedded
    expo run --config expo/toy/smoke.yaml --verbose

It prints one line per stage as it starts and ends, progress inside long stages, the summary table,
the registered model and the path of the log file that holds kfp.local's full output.
"""

from __future__ import annotations

import argparse

from expo.cli import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--output", metavar="DIR",
                        help="run folder (default ./expo-runs/<name>); re-using it serves unchanged "
                             "steps from cache")
    parser.add_argument("--verbose", action="store_true",
                        help="also print kfp.local's full output (executor dumps, task logs, warnings); "
                             "by default it goes to <run folder>/expo-run.log and the terminal gets one "
                             "line per stage and progress")


def run(args: argparse.Namespace) -> int:
    from expo.config import load_pipeline_config
    from pipelines.local_run import main_run  # kfp lives outside the library

    cfg = load_pipeline_config(args.config, args.overrides)
    return main_run(cfg, args.output, verbose=args.verbose)
