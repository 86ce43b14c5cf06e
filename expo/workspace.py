"""The workspace: the one folder that outlives a pipeline run, and what lives where in it.

Why: KFP gives every step fresh output folders, so what a later run (or a retry, or `expo run` after
the pipeline ends) must find goes to a folder shared by all steps and runs: `$EXPO_WORKSPACE`, the
run folder's `workspace/` locally (pipelines/local_run.py sets it), the workspace PVC mounted at
`MOUNT_PATH` on a cluster. Stages write it and `expo run` reads it through these functions only, so the
two cannot disagree on a path. Layout:

    <workspace>/runs/<run key>/summary.json, registered.json, report.html, report.md
                                             what `expo run` prints (the report and register steps)
    <workspace>/errors/<pipeline run id>.txt  the run's first stage error, one line
    <workspace>/checkpoints/<arm>-<key>/      resumable training state, keyed by what the arm trains on
    <workspace>/<explain.cache_dir>/          the explanation cache shared by runs, when configured

    root()                                    # Path($EXPO_WORKSPACE) or None outside a pipeline
    run_record_dir(root(), key) / SUMMARY_FILE
"""

from __future__ import annotations

import os
from pathlib import Path

WORKSPACE_ENV = "EXPO_WORKSPACE"
MOUNT_PATH = "/workspace"  # where the workspace PVC is mounted in every pod that moves model folders
SUMMARY_FILE = "summary.json"  # the report step's summary, beside the report
REGISTERED_FILE = "registered.json"  # the register step's version and gate decision
REPORT_FILES = ("report.html", "report.md")


def root() -> Path | None:
    """The workspace of this process ($EXPO_WORKSPACE), None when it has none (a stage run by hand)."""
    value = os.environ.get(WORKSPACE_ENV)
    return Path(value) if value else None


def run_record_dir(workspace: Path, run_key: str) -> Path:
    """Where one run key's summary, registration and report are kept."""
    return workspace / "runs" / run_key


def error_file(workspace: Path, pipeline_run_id: str) -> Path:
    """Where a pipeline run's first stage error is kept."""
    return workspace / "errors" / f"{pipeline_run_id}.txt"


def checkpoints_dir(workspace: Path, name: str) -> Path:
    """A training task's resumable checkpoints (`name`: the arm and a key of its inputs)."""
    return workspace / "checkpoints" / name


__all__ = ["MOUNT_PATH", "REGISTERED_FILE", "REPORT_FILES", "SUMMARY_FILE", "checkpoints_dir",
           "error_file", "root", "run_record_dir", "WORKSPACE_ENV"]
