"""`expo compile`: the KFP IR YAML of the pipeline for a config."""

from __future__ import annotations

import argparse

from expo.cli import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--output", metavar="FILE", required=True, help="where to write the pipeline YAML")


def run(args: argparse.Namespace) -> int:
    from expo.config import load_pipeline_config
    from pipelines.expo_pipeline import compile_pipeline

    from expo.params import PARAMETERS, defaults

    cfg = load_pipeline_config(args.config, args.overrides)
    path = compile_pipeline(cfg, args.output)
    print(f"compiled pipeline '{cfg.name}' ({', '.join(cfg.train.arms)}) -> {path}")
    values = defaults(cfg)
    print("parameters (set with `expo submit --param NAME=VALUE` or in the KFP UI):")
    for p in PARAMETERS:
        print(f"  {p.name:<19} {p.type.__name__:<5} = {values[p.name]!r:<24} {p.key}")
    return 0
