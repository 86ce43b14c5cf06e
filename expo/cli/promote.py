"""`expo promote NAME VERSION`: move a registry alias (champion by default) to a version by hand.

    expo promote expo-tiny 3 --reason "better on level 5 in the A/B"
    expo promote expo-tiny 2 --alias staging --run expo-runs/expo-embedded

Who (from $USER), when and why are written as tags on the version (`expo.promoted.<alias>.*`), so the
registry keeps the history that the promotion gate would otherwise have recorded. The store is found
as `expo models` finds it (expo.run_folder): after `expo run`, from the same folder, no flag is needed.
"""

from __future__ import annotations

import argparse

from expo.cli.registered_models import add_store_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="registered model name, e.g. expo-tiny")
    parser.add_argument("version", metavar="VERSION", type=int, help="version number to point the alias at")
    parser.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    parser.add_argument("--reason", default="", metavar="TEXT", help="why (recorded on the version)")
    add_store_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from expo.config import TrackingConfig
    from expo.errors import TrackingError
    from expo.registry import promote
    from expo.run_folder import find_tracking_uri

    if args.version < 1:
        raise TrackingError(f"version must be >= 1, got {args.version}")
    uri, _ = find_tracking_uri(args.tracking_uri, args.run)
    try:
        before = promote(args.name, args.version, alias=args.alias, reason=args.reason,
                         tracking=TrackingConfig(tracking_uri=uri))
    except MlflowException as exc:  # refused by the server (permissions, bad name): one line, exit 2
        raise TrackingError(" ".join(str(exc).split())[:300]) from None
    was = f"version {before}" if before is not None else "no version"
    print(f"{args.name}@{args.alias} -> version {args.version} (was {was})")
    return 0
