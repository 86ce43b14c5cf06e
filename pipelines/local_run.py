"""`expo run`: the whole pipeline on this machine through kfp.local, caching on.

The run folder (default `./expo-runs/<name>`) holds everything: kfp.local's outputs and cache, the
MLflow store (unless MLFLOW_TRACKING_URI points elsewhere), checkpoints, and at the end
`summary.json`, `report.html` and `report.md`. Running again with the same config serves every step
from cache; changing a training setting re-runs training and what follows it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from expo.config import ExpoConfig, to_dict
from expo.errors import ExpoError
from expo.io import read_json, write_json
from pipelines.expo_pipeline import build_pipeline, pipeline_arguments, run_key


def default_run_dir(cfg: ExpoConfig) -> Path:
    return Path("expo-runs") / cfg.name


def check_writable(run_dir: Path) -> None:
    """Fail before any work when the run folder cannot be written (nothing is half-done then)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ExpoError(f"run folder {str(run_dir)!r} is not writable ({exc.strerror or exc}); "
                        "choose another with --output") from None


def run_local(cfg: ExpoConfig, run_dir: Path) -> dict[str, Any]:
    """Run the pipeline for `cfg` in `run_dir`; return the summary that is also saved as summary.json."""
    from kfp import local

    run_dir = run_dir.resolve()
    check_writable(run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    _set_run_environment(cfg, run_dir)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "kfp"),
               enable_caching=True, cache_root=str(run_dir / "kfp-cache"), raise_on_error=True)
    pipeline = build_pipeline(cfg, for_cluster=False)
    try:
        pipeline(**pipeline_arguments(cfg))  # the config's values as the root parameters, as on a cluster
    except RuntimeError as exc:
        raise ExpoError(f"pipeline failed: {_failure_cause(exc, run_dir)} (task logs above; "
                        f"outputs kept in {run_dir})") from None
    return collect_summary(cfg, run_dir)


def _failure_cause(exc: RuntimeError, run_dir: Path) -> str:
    """The failed stage's own one-line error (expo.stages.record_error), else kfp.local's message
    without its colour codes."""
    recorded = run_dir / "workspace" / "errors" / f"{os.environ.get('EXPO_PIPELINE_RUN_ID', '')}.txt"
    if recorded.is_file():
        return recorded.read_text(encoding="utf-8").strip()
    return re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0] if str(exc) else repr(exc))


def _set_run_environment(cfg: ExpoConfig, run_dir: Path) -> None:
    """What stages read from the environment, so no run-varying value enters a step's cache key."""
    from expo.cpu import CONCURRENT_TASKS_ENV
    from expo.tracking import resolve_tracking_uri

    os.environ["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(cfg.tracking, run_dir)
    os.environ["EXPO_WORKSPACE"] = str(run_dir / "workspace")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    os.environ["EXPO_PIPELINE_RUN_ID"] = f"local-{stamp}-{uuid.uuid4().hex[:6]}"
    # kfp.local runs the ParallelFor's iterations (one per arm) at once: they share the cores (expo.cpu).
    os.environ[CONCURRENT_TASKS_ENV] = str(max(1, len(cfg.train.arms)))
    # Step subprocesses must import this checkout's packages even when run from elsewhere.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)


def executed_steps(run_dir: Path) -> list[str]:
    """The tasks the newest local pipeline run executed (cached tasks leave no folder behind)."""
    runs = sorted((run_dir / "kfp").glob("*-[0-9][0-9][0-9][0-9]-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return []
    return sorted({out.parent.name for out in runs[-1].rglob("executor_output.json")})


def collect_summary(cfg: ExpoConfig, run_dir: Path) -> dict[str, Any]:
    """Gather the report's summary and the registration into run_dir/summary.json."""
    record = run_dir / "workspace" / "runs" / run_key(cfg)
    if not (record / "summary.json").is_file():
        raise ExpoError(f"the pipeline finished but left no summary in {record}")
    summary = read_json(record / "summary.json")
    registered = record / "registered.json"
    summary["registered_model_uri"] = read_json(registered)["uri"] if (
        summary.get("register") and registered.is_file()) else None
    summary["run_folder"] = str(run_dir)
    summary["executed_steps"] = executed_steps(run_dir)
    write_json(run_dir / "summary.json", summary)
    for name in ("report.html", "report.md"):
        if (record / name).is_file():
            shutil.copyfile(record / name, run_dir / name)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The table `expo run` prints: pass@1 and pass@k by level for every model."""
    models = summary["models"]
    levels = sorted({lv for m in models.values() for lv in m.get("levels", {})}, key=int)
    head = f"{'model':<12}" + "".join(f"  L{lv} p@1  L{lv} p@k" for lv in levels)
    lines = [head, "-" * len(head)]
    for name, m in models.items():
        cells = "".join(f"  {m['levels'].get(lv, {}).get('pass@1', float('nan')):7.3f}"
                        f"  {m['levels'].get(lv, {}).get('pass@k', float('nan')):7.3f}" for lv in levels)
        lines.append(f"{name:<12}{cells}")
    uri = summary.get("registered_model_uri")
    lines.append("")
    executed = summary.get("executed_steps", [])
    lines.append(f"steps run: {', '.join(executed) or 'none'}; every other step came from cache")
    lines.append(f"registered model: {uri}" if uri else
                 "registered model: none (no trained arm beat the base model on the gate metric)")
    lines.append(f"report: {Path(summary['run_folder']) / 'report.html'}")
    return "\n".join(lines)


def main_run(cfg: ExpoConfig, output: str | None) -> int:
    run_dir = Path(output) if output else default_run_dir(cfg)
    summary = run_local(cfg, run_dir)
    print(format_summary(summary), file=sys.stdout)
    return 0
