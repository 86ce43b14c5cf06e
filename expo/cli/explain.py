"""`expo explain`: the generate_explanations stage alone.

    expo explain --data out/data --model out/model --output out/explanations
    expo explain --data out/data --model out/model --output out/x --set explain.samples_per_question=8
    torchrun --nproc-per-node 8 -m expo explain --data out/data --model out/model --output out/x   # one process per GPU: each samples a share

Samples answer-conditioned explanations of the train split, verifies and filters them, and writes
`explanations.jsonl` (every sample) and `stats.json` (acceptance and solve rate by level). A progress
bar on stderr shows questions done, acceptance so far and tokens/s; stdout ends with a by-level table.
"""

from __future__ import annotations

import argparse

from expo.cli import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="data stage folder (train.jsonl)")
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder (prepare_model or train)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for explanations.jsonl and stats.json (the cache goes to DIR/cache "
                             "unless explain.cache_dir is set)")
    add_config_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from expo.config import load_config
    from expo.explain import generate_explanations

    cfg = load_config(args.config, args.overrides)
    stats = generate_explanations(cfg, args.data, args.model, args.output, progress=not args.no_progress)
    print(format_table(stats))
    print(f"{stats['kept']} explanations kept of {stats['samples']} samples "
          f"(acceptance {stats['acceptance_rate']:.1%}) -> {args.output}")
    return 0


def format_table(stats: dict) -> str:
    """Acceptance beside the unconditioned solve rate, one line per level."""
    lines = [f"{'level':>7} {'questions':>9} {'samples':>7} {'accept':>7} {'kept':>5} {'covered':>7} {'solve':>6}"]
    for level, s in stats["by_level"].items():
        solve = "-" if s["solve_rate"] is None else f"{s['solve_rate']:.1%}"
        lines.append(f"{level:>7} {s['questions']:>9} {s['samples']:>7} {s['acceptance_rate']:>7.1%} "
                     f"{s['kept']:>5} {s['coverage']:>7.1%} {solve:>6}")
    return "\n".join(lines)
