"""Which tracking store `expo models` and `expo promote` talk to, found the way a user expects.

Why: `expo run` keeps its MLflow store in its run folder (`expo-runs/<name>/mlflow.db`), so a plain
`./mlflow.db` default finds nothing after a local run, and opening it would create an empty store as
a side effect. The order, first match wins:

1. `--tracking-uri URI`;
2. `--run DIR`: the store that run folder's `expo-run.json` names, else its `mlflow.db`;
3. `$MLFLOW_TRACKING_URI`;
4. the newest run folder under `./expo-runs/` (by its `expo-run.json` or `mlflow.db`);
5. `./mlflow.db`, if it exists.

A SQLite store that does not exist is an error here (one line naming what was looked at), never
created. `expo run` writes `expo-run.json` (pipelines/local_run.py).

    uri, why = find_tracking_uri(tracking_uri="", run=None)   # ("sqlite:///.../mlflow.db", "last run ...")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from expo.errors import TrackingError

RUN_RECORD = "expo-run.json"  # written by `expo run` in its run folder
RUNS_DIR = "expo-runs"


def _sqlite(db: Path) -> str:
    return f"sqlite:///{db.resolve()}"


def store_of_run(run_dir: Path) -> str | None:
    """The tracking URI a run folder recorded, else its own mlflow.db; None when it has neither."""
    record = run_dir / RUN_RECORD
    if record.is_file():
        try:
            uri = str(json.loads(record.read_text(encoding="utf-8")).get("tracking_uri") or "")
        except (OSError, ValueError):
            uri = ""
        if uri:
            return uri
    return _sqlite(run_dir / "mlflow.db") if (run_dir / "mlflow.db").is_file() else None


def last_run(root: Path) -> Path | None:
    """The run folder under `root` whose record (or store) changed last."""
    def stamp(folder: Path) -> float:
        marks = [folder / RUN_RECORD, folder / "mlflow.db"]
        return max((m.stat().st_mtime for m in marks if m.is_file()), default=-1.0)

    folders = [f for f in root.glob("*") if f.is_dir() and stamp(f) >= 0] if root.is_dir() else []
    return max(folders, key=stamp, default=None)


def find_tracking_uri(tracking_uri: str = "", run: str | None = None,
                      cwd: Path | None = None) -> tuple[str, str]:
    """(URI, where it came from) by the order of the module docstring; TrackingError when none is found."""
    cwd = cwd or Path.cwd()
    if tracking_uri.strip():
        return _checked(tracking_uri.strip(), "--tracking-uri")
    if run:
        folder = Path(run)
        uri = store_of_run(folder)
        if uri is None:
            raise TrackingError(f"run folder {str(folder)!r} has no {RUN_RECORD} and no mlflow.db "
                                "(is it an `expo run --output` folder?)")
        return _checked(uri, f"run folder {folder}")
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return _checked(env, "$MLFLOW_TRACKING_URI")
    newest = last_run(cwd / RUNS_DIR)
    if newest is not None:
        uri = store_of_run(newest)
        if uri is not None:
            return _checked(uri, f"last run {os.path.relpath(newest, cwd)}")
    if (cwd / "mlflow.db").is_file():
        return _sqlite(cwd / "mlflow.db"), "./mlflow.db"
    raise TrackingError(f"no tracking store found: no --tracking-uri, --run, $MLFLOW_TRACKING_URI, run "
                        f"folder under ./{RUNS_DIR}/ or ./mlflow.db "
                        "(run `expo run` first, or pass --run DIR)")


def _checked(uri: str, why: str) -> tuple[str, str]:
    """A SQLite store must exist already: connecting would create an empty one and report no models."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        if not db.is_file():
            raise TrackingError(f"tracking store {str(db)!r} ({why}) does not exist")
    return uri, why


__all__ = ["RUN_RECORD", "RUNS_DIR", "find_tracking_uri", "last_run", "store_of_run"]
