"""`expo data`: the data stage alone (load, extract gold answers, filter, dedupe, split).

    expo data --source builtin:math-sample --output out/data --levels 4,5
    expo data --source EleutherAI/hendrycks_math --hub-config algebra --hub-split test --output out/data
    expo data --config ladder.yaml --output out/data     # data.sources: several files as levels 1-4

Flags override the config file's `data` section, which overrides the defaults; `--source` replaces the
config's `data.sources` too. The skip table goes to stderr; the last line on stdout names the output
folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from expo.cli import add_config_arguments

if TYPE_CHECKING:
    from expo.config import DataConfig


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected levels like 4,5, got {text!r}") from None
    if not levels:
        raise argparse.ArgumentTypeError("expected at least one level, e.g. 4,5")
    return levels


def _column(text: str) -> tuple[str, str]:
    ours, sep, theirs = text.partition("=")
    if not sep or not ours.strip() or not theirs.strip():
        raise argparse.ArgumentTypeError(f"expected OURS=THEIRS like question=prompt, got {text!r}")
    return ours.strip(), theirs.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source",
                        help="where the problems are: a Hugging Face hub id (owner/name), a folder (its "
                             ".jsonl/.json/.parquet/.csv files, or a datasets.save_to_disk folder), one such "
                             "file, or builtin:needle | builtin:math-sample | builtin:gsm8k-sample "
                             "(default: the config's data.source, builtin:needle; given, it also replaces "
                             "the config's data.sources list)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for train.jsonl, eval.jsonl and stats.json (created if missing; must "
                             "not be inside a source folder)")
    add_config_arguments(parser)
    parser.add_argument("--schema", choices=["auto", "math", "gsm8k", "custom"],
                        help="column layout: MATH (problem, solution with \\boxed{}, level, type), GSM8K "
                             "(question, answer ending in '#### n'), custom (--column), or auto (from the "
                             "columns; default)")
    parser.add_argument("--column", dest="columns", action="append", type=_column, metavar="OURS=THEIRS",
                        help="for --schema custom: which source column holds our field (question, answer, "
                             "solution, level, subject); repeatable, e.g. --column question=prompt")
    parser.add_argument("--levels", type=_levels, metavar="L,L",
                        help="keep only these difficulty levels (1-5), e.g. 4,5; rows without a level are "
                             "dropped")
    parser.add_argument("--eval-fraction", type=float, metavar="F",
                        help="share of each level held out for eval.jsonl, in [0, 1) (default 0.2)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="seed of the split and of the --max-rows sample (default 0)")
    parser.add_argument("--max-rows", type=int, metavar="N",
                        help="keep a seeded sample of at most N rows (after dedupe, before the split; with "
                             "data.sources, of all entries together: each entry has its own max_rows)")
    parser.add_argument("--hub-config", metavar="NAME", help="hub data set config (load_dataset's name)")
    parser.add_argument("--hub-split", metavar="SPLIT",
                        help="hub split to read, also the split taken from a save_to_disk DatasetDict "
                             "(default train)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


# flag attribute -> DataConfig field; only flags the user gave override the config.
_FLAGS = {"source": "source", "schema": "schema", "levels": "levels", "eval_fraction": "eval_fraction",
          "seed": "seed", "max_rows": "max_rows", "hub_config": "hub_config", "hub_split": "hub_split"}


def data_config(args: argparse.Namespace) -> DataConfig:
    """The config's data section with the flags the user gave applied, validated."""
    from expo.config import load_config

    cfg = load_config(args.config, args.overrides).data
    changes = {name: getattr(args, flag) for flag, name in _FLAGS.items() if getattr(args, flag) is not None}
    if args.columns:
        changes["columns"] = dict(args.columns)
    if args.source is not None:
        changes["sources"] = []  # one source named on the command line: the config's list is not read
    cfg = dataclasses.replace(cfg, **changes)
    cfg.validate("data")
    return cfg


def run(args: argparse.Namespace) -> int:
    from expo.data import prepare_data

    cfg = data_config(args)
    result = prepare_data(cfg, args.output, progress=not args.no_progress)
    empty = result.empty_validation(cfg.eval_fraction)
    if empty and cfg.eval_fraction > 0:
        # Not an error (the train split is whole), but evaluation and validation during training
        # read eval.jsonl: say so now rather than leave the user to find an empty file later.
        print(f"expo data: warning: the validation split (eval.jsonl) is empty: {empty}", file=sys.stderr)
    print(f"{result.rows_out} of {result.rows_in} rows kept (train {result.train}, eval {result.eval}, "
          f"{sum(result.skipped.values())} dropped) -> {result.output_dir}")
    return 0
