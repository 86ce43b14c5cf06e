"""The local run folder of `expo run` (`./expo-runs/<name>`): its layout, and which tracking store
`expo models` and `expo promote` talk to, found the way a user expects.

The run folder is local only; the workspace (expo.workspace) is the folder shared by steps and runs,
which `expo run` puts inside it as `workspace/` and a cluster mounts as a PVC. Layout:

    expo-runs/mlflow.db, mlartifacts/   the tracking store every run folder beside it shares (runs
                                        and registry), unless MLFLOW_TRACKING_URI points elsewhere
    expo-runs/<name>/expo-run.json   where the run's tracking store and log are (RUN_RECORD)
                     expo-run.log    kfp.local's full output (LOG_FILE)
                     expo-run.failed.log   a failed run's log, when a finished run's is kept (FinishedRun)
                     workspace/      $EXPO_WORKSPACE (WORKSPACE_DIR)
                     kfp/, kfp-cache/, config.yaml, summary.json, report.html, report.md

Why one store beside the run folders: the registry exists to compare a candidate with the champion of
earlier runs; a store per run folder would hold one run's versions only, and `expo models` would know
nothing of the others. Browse it with `mlflow ui --backend-store-uri sqlite:///expo-runs/mlflow.db`.

Why the store lookup: `expo run` keeps its MLflow store in its run folder, so a plain `./mlflow.db`
default finds nothing after a local run, and opening it would create an empty store as a side effect. The order, first match wins:

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
STORE_FILE = "mlflow.db"  # the SQLite tracking store of a run folder (expo.tracking.resolve_tracking_uri)
LOG_FILE = "expo-run.log"  # kfp.local's full output: executor dumps, task logs, warnings
FAILED_LOG_FILE = "expo-run.failed.log"  # the log of a run that failed after a finished one
SUMMARY_FILE = "summary.json"  # written when a run finishes
# What a run rewrites when it starts; a failed or stopped run puts back a finished run's copies.
KEPT_ON_FAILURE = (RUN_RECORD, LOG_FILE, "config.yaml")
WORKSPACE_DIR = "workspace"  # the run's $EXPO_WORKSPACE


class FinishedRun:
    """What a finished run left in `run_dir` (its `summary.json` marks it finished), read before a new
    run starts there, so a run that fails or is stopped loses nothing of it: `restore` puts back its
    record, log and config, and keeps the failed run's log beside them as `expo-run.failed.log`.
    Summary and report are written only when a run finishes, so a failed one never touches them."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        finished = (run_dir / SUMMARY_FILE).is_file()
        self.saved = {name: (run_dir / name).read_bytes() for name in KEPT_ON_FAILURE
                      if finished and (run_dir / name).is_file()}

    def restore(self) -> Path:
        """Put the finished run's files back; return where the failed run's log now is."""
        log = self.run_dir / LOG_FILE
        if not self.saved:
            return log  # nothing finished here before: the failed run's files are all there is
        failed = self.run_dir / FAILED_LOG_FILE
        if log.is_file():
            os.replace(log, failed)
        for name, data in self.saved.items():
            part = self.run_dir / f".{name}.restoring"
            part.write_bytes(data)
            os.replace(part, self.run_dir / name)  # whole or not at all
        return failed


def default_run_dir(name: str) -> Path:
    """`./expo-runs/<name>`: where `expo run` works without --output."""
    return Path(RUNS_DIR) / name


def local_store_dir(run_dir: Path) -> Path:
    """Where the local tracking store of `run_dir` lives: the folder that holds it, shared by every
    run folder there (`./expo-runs/` for the default ones)."""
    return Path(run_dir).resolve().parent


def workspace_of(run_dir: Path) -> Path:
    """The workspace (expo.workspace) of a local run folder."""
    return run_dir / WORKSPACE_DIR


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
    return _sqlite(run_dir / STORE_FILE) if (run_dir / STORE_FILE).is_file() else None


def last_run(root: Path) -> Path | None:
    """The run folder under `root` whose record (or store) changed last."""
    def stamp(folder: Path) -> float:
        marks = [folder / RUN_RECORD, folder / STORE_FILE]
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
    if (cwd / STORE_FILE).is_file():
        return _sqlite(cwd / STORE_FILE), f"./{STORE_FILE}"
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


__all__ = ["LOG_FILE", "RUN_RECORD", "RUNS_DIR", "STORE_FILE", "WORKSPACE_DIR", "default_run_dir",
           "find_tracking_uri", "last_run", "local_store_dir", "store_of_run", "workspace_of"]
