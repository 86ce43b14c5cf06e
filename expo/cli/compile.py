"""`expo compile`: the KFP IR YAML of the pipeline for a config."""

from __future__ import annotations

import argparse
from pathlib import Path

from expo.cli import add_config_arguments
from expo.errors import ExpoError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--output", metavar="FILE", required=True, help="where to write the pipeline YAML")


def _check_output(path: str) -> Path:
    """The file `--output` names, refused in one line when its folder is missing or it is a folder:
    a typo in a path must not create folders (the compiler would make the whole chain)."""
    output = Path(path)
    if output.is_dir():
        raise ExpoError(f"--output {path}: is a folder; name the YAML file to write "
                        f"(e.g. {output / 'expo.yaml'})")
    if not output.parent.is_dir():
        raise ExpoError(f"--output {path}: folder {output.parent} does not exist")
    return output


def run(args: argparse.Namespace) -> int:
    from expo.cli.plan import preflight
    from expo.config import load_pipeline_config
    from pipelines.expo_pipeline import compile_pipeline

    from expo.params import PARAMETERS, defaults

    output = _check_output(args.output)
    cfg = load_pipeline_config(args.config, args.overrides)
    preflight(cfg, "compile")  # a config that cannot fit its GPUs is refused before it is compiled
    path = compile_pipeline(cfg, output)
    print(f"compiled pipeline '{cfg.name}' ({', '.join(cfg.train.arms)}) -> {path}")
    values = defaults(cfg)
    print("parameters (set with `expo submit --param NAME=VALUE` or in the KFP UI):")
    for p in PARAMETERS:
        print(f"  {p.name:<19} {p.type.__name__:<5} = {values[p.name]!r:<24} {p.key}")
    return 0
