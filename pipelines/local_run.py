"""`expo run`: the whole pipeline on this machine through kfp.local, caching on.

The run folder (default `./expo-runs/<name>`) holds everything: kfp.local's outputs and cache, the
MLflow store (unless MLFLOW_TRACKING_URI points elsewhere), checkpoints, `expo-run.json` (where the
run's tracking store is: `expo models` and `expo promote` read it), `expo-run.log` (kfp.local's full
output), and at the end `summary.json`, `report.html` and `report.md` with its images. Running again
with the same config serves every step from cache; changing a training setting re-runs training and
what follows it.

The terminal gets one line per stage as it starts and ends, progress inside long stages, then the
summary table (pipelines/local_output.py routes the rest to the log; `verbose` shows it all).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from expo import workspace
from expo.config import ExpoConfig, to_dict
from expo.errors import ExpoError
from expo.io import read_json, write_json
from expo.processes import Interrupted, interrupts_as_exceptions, stop_descendants
from expo.run_folder import LOG_FILE, RUN_RECORD, FinishedRun, default_run_dir, local_store_dir, workspace_of
from expo.terminal import Console, format_table
from pipelines.expo_pipeline import build_pipeline, pipeline_arguments, run_key



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


def run_local(cfg: ExpoConfig, run_dir: Path, console: Console | None = None,
              verbose: bool = False) -> dict[str, Any]:
    """Run the pipeline for `cfg` in `run_dir`; return the summary that is also saved as summary.json.
    Stage lines go to `console` (default: one on stdout); kfp.local's own output to the log file."""
    from kfp import local

    from pipelines.local_output import routed_output
    from pipelines.platform_runs import platform_runs

    run_dir = run_dir.resolve()
    check_writable(run_dir)
    console = console or Console(sys.stdout)
    finished = FinishedRun(run_dir)  # read before this run rewrites the record, log and config
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    _set_run_environment(cfg, run_dir)
    log_file = run_dir / LOG_FILE
    write_run_record(run_dir, os.environ["MLFLOW_TRACKING_URI"], log_file)
    console.line(f"expo run: {cfg.name} in {shown_path(run_dir)} (kfp.local's full output: "
                 f"{shown_path(log_file)})")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "kfp"),
               enable_caching=True, cache_root=str(run_dir / "kfp-cache"), raise_on_error=True)
    started = time.monotonic()
    console.start()
    try:
        mute = lambda: setattr(console, "muted", True)  # noqa: E731 (the killed stages must not print FAILED)
        key = os.environ["EXPO_PIPELINE_RUN_ID"]
        platform = platform_runs(cfg.tracking, f"{cfg.name}-{key}") if cfg.tracking.platform_runs else \
            contextlib.nullcontext(None)
        with interrupts_as_exceptions(on_signal=mute), \
                routed_output(console, log_file, verbose=verbose) as observer, platform as platform_parent:
            pipeline = build_pipeline(cfg, for_cluster=False)
            pipeline(**pipeline_arguments(cfg))  # the config's values as the root parameters, as on a cluster
    except RuntimeError as exc:
        cause = _failure_cause(exc, run_dir)
        raise ExpoError(f"pipeline failed: {cause} (task log: {finished.restore()}; "
                        f"outputs kept in {run_dir})") from None
    except KeyboardInterrupt as exc:
        console.muted = True  # also when the interrupt came some other way than our handler
        raise _stopped(cfg, exc, finished) from None
    finally:
        console.stop()
    summary = collect_summary(cfg, run_dir, [r.as_dict() for r in observer.records])
    summary["mlflow"] = _describe_parent(cfg, summary, platform_parent)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    summary["log_file"] = str(log_file)
    write_json(run_dir / "summary.json", summary)
    return summary


def _describe_parent(cfg: ExpoConfig, summary: dict[str, Any], parent_id: str | None) -> dict[str, str]:
    """The run's parameters, headline metrics and reuse on its MLflow parent; what summary.json says
    of that parent (expo.run_lineage)."""
    from expo.run_lineage import describe_parent

    stages = summary["stages"]
    return describe_parent(os.environ["EXPO_PIPELINE_RUN_ID"], cfg.tracking, pipeline=cfg.name,
                           config=to_dict(cfg), summary=summary, run_key=run_key(cfg), parent_id=parent_id,
                           executed=[s["label"] for s in stages if s["status"] == "done"],
                           cached=[s["label"] for s in stages if s["status"] == "cached"])


def _stopped(cfg: ExpoConfig, exc: KeyboardInterrupt, finished: FinishedRun) -> Interrupted:
    """Stop every child process, close the pipeline's MLflow parent run as KILLED, put back what a
    finished run left; the returned exception's message says all of it in one line."""
    from expo import tracking

    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    stopped = stop_descendants()
    closed = "MLflow parent run KILLED"
    try:
        if not cfg.tracking.platform_runs:  # else pipelines.platform_runs closed it, as the platform would
            tracking.close_parent(os.environ["EXPO_PIPELINE_RUN_ID"], "KILLED", replace(cfg.tracking, retries=0),
                                  pipeline=cfg.name)
    except Exception as err:  # the store may be what failed; the stop itself must still be reported
        closed = f"MLflow parent run not closed ({type(err).__name__})"
    log = finished.restore()
    return Interrupted(signum, f"by {signal.Signals(signum).name}: stopped {stopped} child process(es), "
                               f"{closed}; log: {log}")


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when it is under it (what the user typed), else absolute."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else rel


def write_run_record(run_dir: Path, tracking_uri: str, log_file: Path) -> None:
    """`expo-run.json`: where this run's tracking store and log are, for `expo models`/`expo promote`
    run later from the same folder (expo.run_folder reads it). Credentials never enter it."""
    from expo.tracking import redact_uri

    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json(run_dir / RUN_RECORD, {"tracking_uri": redact_uri(tracking_uri), "log_file": str(log_file),
                                      "started": started})


def _failure_cause(exc: RuntimeError, run_dir: Path) -> str:
    """The failed stage's own one-line error (expo.stages.record_error), else kfp.local's message
    without its colour codes."""
    recorded = workspace.error_file(workspace_of(run_dir), os.environ.get("EXPO_PIPELINE_RUN_ID", ""))
    if recorded.is_file():
        return recorded.read_text(encoding="utf-8").strip()
    return re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0] if str(exc) else repr(exc))


def side_by_side(iterations: int) -> int:
    """How many of a ParallelFor's iterations kfp.local runs at once: all of them up to its executor's
    cap (two), so a third arm starts when one of the first two ends and takes that one's cores."""
    try:
        from kfp.local.orchestrator.enhanced_dag_orchestrator import ParallelExecutor

        cap = ParallelExecutor().conservative_max
    except (ImportError, AttributeError):  # a kfp without the cap: every iteration at once
        cap = iterations
    return max(1, min(iterations, cap))


def _set_run_environment(cfg: ExpoConfig, run_dir: Path) -> None:
    """What stages read from the environment, so no run-varying value enters a step's cache key."""
    from expo.cpu import CONCURRENT_TASKS_ENV
    from expo.tracking import resolve_tracking_uri

    # One store for every run folder side by side, so the registry accumulates (expo.run_folder).
    os.environ["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(cfg.tracking, local_store_dir(run_dir))
    os.environ[workspace.WORKSPACE_ENV] = str(workspace_of(run_dir))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    os.environ["EXPO_PIPELINE_RUN_ID"] = f"local-{stamp}-{uuid.uuid4().hex[:6]}"
    # kfp.local runs the ParallelFor's iterations (one per arm) side by side: they share the cores (expo.cpu).
    os.environ[CONCURRENT_TASKS_ENV] = str(side_by_side(len(cfg.train.arms)))
    # Step subprocesses must import this checkout's packages even when run from elsewhere.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)


def executed_steps(run_dir: Path) -> list[str]:
    """The tasks the newest local pipeline run executed (cached tasks leave no folder behind)."""
    runs = sorted((run_dir / "kfp").glob("*-[0-9][0-9][0-9][0-9]-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return []
    return sorted({out.parent.name for out in runs[-1].rglob("executor_output.json")})


def collect_summary(cfg: ExpoConfig, run_dir: Path,
                    stages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Gather the report's summary, the registration and the stage records into run_dir/summary.json;
    copy the report, with the images report.md links, beside it."""
    from expo.run_lineage import registered_aliases

    record = workspace.run_record_dir(workspace_of(run_dir), run_key(cfg))
    if not (record / workspace.SUMMARY_FILE).is_file():
        raise ExpoError(f"the pipeline finished but left no summary in {record}")
    summary = read_json(record / workspace.SUMMARY_FILE)
    registered = record / workspace.REGISTERED_FILE
    info = read_json(registered) if summary.get("register") and registered.is_file() else {}
    summary["registered_model_uri"] = info.get("uri")
    # Read now, not remembered: a later run's gate or `expo promote` may have moved an alias since.
    summary["registered_aliases"] = registered_aliases(info["uri"], cfg.tracking) if info.get("uri") else []
    summary["model_name"] = cfg.register.model_name
    summary["run_folder"] = str(run_dir)
    summary["executed_steps"] = executed_steps(run_dir)
    summary["stages"] = stages or []
    summary["cached_steps"] = [s["label"] for s in summary["stages"] if s["status"] == "cached"]
    write_json(run_dir / "summary.json", summary)
    for name in workspace.REPORT_FILES:
        if (record / name).is_file():
            shutil.copyfile(record / name, run_dir / name)
            if summary["registered_model_uri"]:
                refresh_registered_line(run_dir / name, summary["registered_model_uri"],
                                        summary["registered_aliases"])
    copy_report_images(run_dir / "report.md", record, *report_folders(summary["stages"]))
    return summary


def refresh_registered_line(report: Path, uri: str, aliases: list[str]) -> None:
    """Put the registry's aliases of today into the report's "Registered model: ..." line (the
    register step wrote the aliases of its own moment)."""
    text = report.read_text(encoding="utf-8")
    line = f"Registered model: {uri}" + (f" (aliases: {', '.join(aliases)})" if aliases else "") + "."
    fresh = re.sub(rf"Registered model: {re.escape(uri)}( \(aliases: [^)]*\))?\.", line, text)
    if fresh != text:
        report.write_text(fresh, encoding="utf-8")


def report_folders(stages: list[dict[str, Any]]) -> list[Path]:
    """The report step's output folder (its `summary` artifact, where it wrote the PNGs), cached or not."""
    return [Path(s["outputs"]["summary"]) for s in stages
            if s["task"] == "report" and s.get("outputs", {}).get("summary")]


def copy_report_images(report_md: Path, *folders: Path) -> list[str]:
    """Copy every image `report_md` links by a relative name from the first of `folders` that has it
    into the report's own folder, so the Markdown stands alone there. Returns the names copied."""
    from expo.report import image_links

    if not report_md.is_file():
        return []
    copied = []
    for name in image_links(report_md.read_text(encoding="utf-8")):
        target = report_md.parent / name
        source = next((f / name for f in folders if (f / name).is_file()), None)
        if source is not None and source.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied.append(name)
    return copied


def pass_k(summary: dict[str, Any]) -> str:
    """pass@k's k as the summary records it (evaluate.samples), "k" when it does not."""
    return str(next((m["k"] for m in summary["models"].values() if "k" in m), "k"))


def summary_table(summary: dict[str, Any]) -> list[str]:
    """pass@1 and pass@k by level for every model, in % as the README and the report give them,
    aligned (expo.terminal.format_table)."""
    models = summary["models"]
    levels = sorted({lv for m in models.values() for lv in m.get("levels", {})}, key=int)
    header = ["model"] + [f"L{lv} {kind}" for lv in levels for kind in ("p@1", f"p@{pass_k(summary)}")]

    def cell(m: dict[str, Any], lv: str, key: str) -> str:
        value = m.get("levels", {}).get(lv, {}).get(key)
        return "-" if value is None else f"{100 * value:.1f}"

    rows = [[name] + [cell(m, lv, key) for lv in levels for key in ("pass@1", "pass@k")]
            for name, m in models.items()]
    return format_table(header, rows)


def format_summary(summary: dict[str, Any]) -> str:
    """What `expo run` prints last: the table and where its numbers come from, which steps ran and which
    came from cache (only those that did), the registered model, the report and the log file."""
    run_folder = Path(shown_path(Path(summary["run_folder"])))
    lines = summary_table(summary)
    k = pass_k(summary)
    lines.append(f"p@1 / p@{k}: pass@1 / pass@{k} in % by level (k = evaluate.samples), held-out split "
                 "(summary.json)")
    lines.append("")
    stages = summary.get("stages") or []
    ran = [s["label"] for s in stages if s["status"] == "done"]
    cached = [s["label"] for s in stages if s["status"] == "cached"]
    if not cached:
        lines.append(f"steps: all {len(ran)} ran (none came from cache)")
    else:
        lines += textwrap.wrap(f"steps ran ({len(ran)}): {', '.join(ran) or 'none'}", 100,
                               subsequent_indent="  ")
        lines += textwrap.wrap(f"from cache ({len(cached)}): {', '.join(cached)}", 100,
                               subsequent_indent="  ")
    uri = summary.get("registered_model_uri")
    if uri:
        aliases = ", ".join(summary.get("registered_aliases") or [])
        lines.append(f"registered model: {uri}" + (f" (aliases: {aliases})" if aliases else ""))
        name = summary.get("model_name") or uri.split("/")[1]
        lines.append(f"  its versions and aliases: expo models {name} (run from this folder; expo is "
                     ".venv/bin/expo)")
    else:
        lines.append("registered model: none (no trained arm beat the base model on the gate metric)")
    lines.append(f"report: {run_folder / 'report.html'} (and report.md)")
    lines.append(f"log: {run_folder / LOG_FILE}")
    return "\n".join(lines)


REFERENCE = "reference.yaml"  # in expo/toy/, installed with the package


def against_reference(summary: dict[str, Any], reference: dict[str, Any]) -> str:
    """One line: this run's figures beside the embedded default's measured spread over seeds, e.g.
    `level 5 pass@1 in %, this run (seeds 0-2 measured): base 0.2 (0.0-1.2), grpo 4.8 (2.7-10.3), ...`;
    a figure outside its range is marked `outside`."""
    parts = []
    for name, (low, high) in reference["models"].items():
        value = summary["models"].get(name, {}).get("levels", {}).get(reference["level"], {}).get("pass@1")
        if value is None:
            continue
        pct = 100 * value
        mark = "" if low <= round(pct, 1) <= high else ", outside"
        parts.append(f"{name} {pct:.1f} ({low:g}-{high:g}{mark})")
    return (f"{reference['metric']} in %, this run (seeds {reference['seeds']} measured on the development "
            f"machine): " + ", ".join(parts))


def is_embedded_default(cfg: ExpoConfig) -> bool:
    """Whether `cfg` is the embedded default as shipped (no file, no --set changed a value)."""
    from expo.config import load_pipeline_config

    return to_dict(cfg) == to_dict(load_pipeline_config(None, []))


def main_run(cfg: ExpoConfig, output: str | None, verbose: bool = False) -> int:
    run_dir = Path(output) if output else default_run_dir(cfg.name)
    console = Console(sys.stdout)
    summary = run_local(cfg, run_dir, console, verbose=verbose)
    console.line()
    lines = format_summary(summary).splitlines()
    if is_embedded_default(cfg):  # where the figures stand against the seeds measured (expo/toy/reference.yaml)
        from importlib import resources

        reference = yaml.safe_load(resources.files("expo").joinpath("toy", REFERENCE).read_text(encoding="utf-8"))
        lines[len(summary_table(summary)) + 1:len(summary_table(summary)) + 1] = textwrap.wrap(
            against_reference(summary, reference), 100, subsequent_indent="  ")
    for line in lines:
        console.line(line)
    return 0
