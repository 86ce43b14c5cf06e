"""`expo models NAME`: a registered model's versions, aliases and key metrics, as a table.

    expo models expo-tiny                           # after `expo run`, from the same folder
    expo models expo-tiny --run expo-runs/expo-embedded --wide
    expo models expo-tiny --tracking-uri http://127.0.0.1:5000 --metric hardest_level_pass@1 --json
    expo models expo-tiny --history                 # who moved which alias, when and why

The store: --tracking-uri, else --run DIR's store, else $MLFLOW_TRACKING_URI, else the newest run folder
under ./expo-runs/, else ./mlflow.db if it exists (expo.run_folder); a store that does not exist is an
error, never created. The table fits 100 columns: it shows as many metric columns as fit (the gate's
`hardest_level_*` first) and says how many it left out; `--wide` shows them all with the run id,
`--json` prints every field of every version. `--history` lists the promotion records instead, newest
first: the gate's decisions with their numbers and each `expo promote` with who and why.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

WIDTH = 100  # columns the default table fits in
FIXED = ("version", "aliases", "arm", "gate")
TAIL = ("created",)
WIDE_TAIL = ("created", "run_id", "fingerprint")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """--tracking-uri and --run, shared with `expo promote`."""
    parser.add_argument("--tracking-uri", default="", metavar="URI",
                        help="MLflow tracking/registry URI (default: --run's store, else "
                             "$MLFLOW_TRACKING_URI, else the newest run under ./expo-runs/, else "
                             "./mlflow.db)")
    parser.add_argument("--run", metavar="DIR",
                        help="an `expo run` folder: use the tracking store it recorded")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="registered model name, e.g. expo-tiny")
    add_store_arguments(parser)
    parser.add_argument("--metric", dest="metrics", action="append", default=[], metavar="NAME",
                        help="metric column to show (repeatable; default: every metric tagged on a version)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--wide", action="store_true", help="every metric column, the run id and fingerprint")
    shown.add_argument("--json", action="store_true",
                       help="every field of every version (or of every --history record), as JSON")
    parser.add_argument("--history", action="store_true",
                        help="the promotion records, newest first: when, alias, version, the version it "
                             "replaced, by whom (the gate or a user) and why")


HISTORY = (("when", "at"), ("alias", "alias"), ("version", "version"), ("was", "from_version"),
           ("by", "by"), ("decision", "decision"), ("why", "reason"))


def _cell(value: Any) -> str:
    if isinstance(value, list):
        value = ",".join(map(str, value))
    if value is None or value == "":
        return "-"  # never a blank cell: every row splits into the same columns
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_history(events: list[dict[str, Any]]) -> str:
    """One line per promotion record (expo.registry.promotion_history), the reason last."""
    from expo.terminal import format_table as align

    if not events:
        return "(no promotion recorded)"
    return "\n".join(align([title for title, _ in HISTORY],
                           [[_cell(e.get(key)) for _, key in HISTORY] for e in events]))


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Metric keys in the rows' order, the gate's usual metric (hardest level) first."""
    keys = [k for k in rows[0] if k not in FIXED + WIDE_TAIL]
    return sorted(keys, key=lambda k: (not k.startswith("hardest_level"), keys.index(k)))


def format_table(rows: list[dict[str, Any]], wide: bool = False, width: int = WIDTH) -> str:
    """version, aliases, arm, gate decision, metrics (4 decimals), created [, run id, fingerprint].
    Not wide: metric columns are dropped from the right until the table fits `width` columns, and a
    last line says how many were left out."""
    from expo.terminal import format_table as align

    if not rows:
        return "(no versions)"
    metrics = _metric_columns(rows)
    tail = WIDE_TAIL if wide else TAIL

    def render(metric_cols: list[str]) -> list[str]:
        cols = list(FIXED) + metric_cols + list(tail)
        return align(cols, [[_cell(row.get(c)) for c in cols] for row in rows])

    shown = list(metrics)
    lines = render(shown)
    while not wide and shown and max(map(len, lines)) > width:
        shown.pop()
        lines = render(shown)
    left_out = len(metrics) - len(shown)
    if left_out:
        lines.append(f"({left_out} more metric column{'s' if left_out > 1 else ''}: --wide or --json)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from expo.config import TrackingConfig
    from expo.errors import ExpoError, TrackingError
    from expo.registry import list_models, promotion_history
    from expo.run_folder import find_tracking_uri

    if args.history and (args.wide or args.metrics):
        raise ExpoError("--history lists promotion records; --wide and --metric apply to the "
                        "version table")
    uri, where = find_tracking_uri(args.tracking_uri, args.run)
    tracking = TrackingConfig(tracking_uri=uri)
    try:
        if args.history:
            rows = promotion_history(args.name, tracking=tracking)
        else:
            rows = list_models(args.name, tracking=tracking, metrics=tuple(args.metrics))
    except MlflowException as exc:  # refused by the server (permissions, bad name): one line, exit 2
        raise TrackingError(" ".join(str(exc).split())[:300]) from None
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(format_history(rows) if args.history else format_table(rows, wide=args.wide))
    from expo.tracking import redact_uri

    print(f"store: {redact_uri(uri)} ({where})")
    return 0
