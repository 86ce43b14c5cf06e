"""`expo evaluate`: verifier-based accuracy and pass@k of one model by level, plus its report.

    expo evaluate --model runs/model --data runs/data --output runs/eval --name base
    expo evaluate --model models:/expo-tiny@champion --data runs/data --output runs/eval-champion

Writes metrics.json, samples.jsonl, report.html, report.md and the plots into --output, then prints a
table by level. With --explanations DIR, also in_distribution.json and those sections of the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from expo.cli import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR_OR_URI",
                        help="model folder, or an MLflow URI: models:/NAME@alias, models:/NAME/VERSION")
    parser.add_argument("--data", required=True, metavar="DIR", help="the data stage's folder (eval.jsonl)")
    parser.add_argument("--output", required=True, metavar="DIR", help="where metrics and the report go")
    parser.add_argument("--name", default="model", help="the model's name in tables and the report")
    parser.add_argument("--explanations", metavar="DIR",
                        help="an explanations stage folder: adds its acceptance statistics and the "
                             "in-distribution check (self-explanations vs expert solutions) to the report")
    add_config_arguments(parser)


def format_table(metrics: dict) -> str:
    """A plain-text table by level: questions, pass@1, pass@k, greedy (percent, 95% CI for pass@1)."""
    k = metrics["samples"]
    lines = [f"{'level':<8} {'questions':>9} {'pass@1':>8} {'95% CI':>15} {f'pass@{k}':>8} {'greedy':>8}"]
    groups = [("all", metrics["overall"])] + list(metrics["by_level"].items())
    for level, s in groups:
        p1, pk, g = s["pass@k"]["1"], s["pass@k"][str(k)], s.get("greedy")
        ci = f"[{100 * p1['lo']:.1f}, {100 * p1['hi']:.1f}]"
        greedy = f"{100 * g['mean']:.1f}%" if g else "-"
        lines.append(f"{level:<8} {s['questions']:>9} {100 * p1['mean']:>7.1f}% {ci:>15} "
                     f"{100 * pk['mean']:>7.1f}% {greedy:>8}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from expo.config import load_config
    from expo.evaluate import evaluate_model
    from expo.report import write_report

    cfg = load_config(args.config, args.overrides)
    metrics = evaluate_model(args.model, args.data, cfg, args.output, name=args.name)
    stats = in_dist = None
    if args.explanations:
        from expo.evaluate import in_distribution_for
        from expo.io import read_json, write_json

        stats_file = Path(args.explanations) / "stats.json"
        stats = read_json(stats_file) if stats_file.is_file() else None
        in_dist = in_distribution_for(args.model, args.data, args.explanations, cfg)
        write_json(Path(args.output) / "in_distribution.json", in_dist)
    report = write_report(args.output, {args.name: metrics}, explanation_stats=stats, in_distribution=in_dist,
                          title=f"Evaluation of {args.name}")
    print(format_table(metrics))
    if metrics.get("unscored"):
        print(f"{metrics['unscored']} completions could not be judged by the verifier (counted wrong)")
    print(f"metrics: {args.output}/metrics.json  report: {report}")
    return 0
