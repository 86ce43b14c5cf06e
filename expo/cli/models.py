"""`expo models NAME`: a registered model's versions, aliases and key metrics, as a table.

    expo models expo-tiny
    expo models expo-tiny --tracking-uri http://127.0.0.1:5000 --metric hardest_level_pass@1

The store is --tracking-uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db (as every expo command).
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "list a registered model's versions, aliases and key metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="registered model name, e.g. expo-tiny")
    parser.add_argument("--tracking-uri", default="", metavar="URI",
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--metric", dest="metrics", action="append", default=[], metavar="NAME",
                        help="metric column to show (repeatable; default: every metric tagged on a version)")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Columns: version, aliases, arm, gate decision, metrics (4 decimals), created, run id."""
    if not rows:
        return "(no versions)"
    fixed = ["version", "aliases", "arm", "gate"]
    tail = ["created", "run_id"]
    metric_cols = [k for k in rows[0] if k not in fixed + tail + ["fingerprint"]]
    cols = fixed + metric_cols + tail

    def cell(value: Any) -> str:
        if value is None or value == "":
            return "-"  # never a blank cell: every row splits into the same columns
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    table = [cols] + [[cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from expo.config import TrackingConfig
    from expo.errors import TrackingError
    from expo.registry import list_models

    try:
        rows = list_models(args.name, tracking=TrackingConfig(tracking_uri=args.tracking_uri),
                           metrics=tuple(args.metrics))
    except MlflowException as exc:  # refused by the server (permissions, bad name): one line, exit 2
        raise TrackingError(" ".join(str(exc).split())[:300]) from None
    print(format_table(rows))
    return 0
