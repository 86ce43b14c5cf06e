"""MLflow lineage for the pipeline: one parent run per pipeline run, one nested run per stage.

Why find-or-create: KFP caches a step on its inputs, so no run-varying value (a run id) may enter them.
Every step gets the same deterministic `pipeline_key` (a digest of the resolved config) and looks up the
parent run tagged `expo.pipeline_key=<key>`, creating it if it is missing; its own nested run is found or
created the same way (tags `expo.stage`, `expo.arm`), so a re-run reuses runs instead of piling up copies.

Two stages may run at once (training arms in parallel processes). Against SQLite, find-or-create holds a
file lock beside the database; against a server, a created parent is de-duplicated afterwards (the oldest
run with the key wins and the others are deleted), which needs no lock.

    key = pipeline_key(to_dict(cfg))
    with stage_run(key, "train", cfg.tracking, arm="exp-grpo") as run:
        log_config(to_dict(cfg))
        log_dataset(data_dir / "train.jsonl", "train", "train")
        log_metrics_series(read_jsonl(out / "metrics.jsonl"))
    close_parent(key, "FINISHED", cfg.tracking)   # the KFP exit handler

Platform runs: where the platform creates the runs itself (KFP's MLflow integration puts MLFLOW_RUN_ID,
MLFLOW_EXPERIMENT_ID, MLFLOW_TRACKING_URI and MLFLOW_WORKSPACE into each task's environment), a stage
logs into that run and tags it and its parent as ours; no run is created, and the platform ends the
parent (close_parent only tags it).

The URI: `TrackingConfig.tracking_uri`, else $MLFLOW_TRACKING_URI (the platform's wins when it gave a
run), else `sqlite:///<run_dir>/mlflow.db` with artifacts in `<run_dir>/mlartifacts`. The workspace:
`TrackingConfig.workspace`, else $MLFLOW_WORKSPACE; a bearer token in $MLFLOW_TRACKING_TOKEN is sent by
MLflow itself. Connection errors are retried `cfg.retries` times with exponential backoff, then raise
`TrackingError` naming the URI (credentials stripped).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import json
import os
import re
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

import expo
from expo.artifacts import hash_file
from expo.config import TrackingConfig, flatten
from expo.errors import TrackingError
from expo.run_folder import STORE_FILE

# MLflow 3 phones home at exit by default; pipeline pods often have no egress and it delays every step.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Our own retry loop (cfg.retries, cfg.backoff_s) replaces MLflow's: its default (7 retries, factor 2)
# keeps a step waiting minutes on a dead server before any message.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
# MLflow prints "View run ... at: <tracking URI>/#/..." on every end_run, user:password@ included: a
# credential in MLFLOW_TRACKING_URI would land in every task log.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

KEY_TAG = "expo.pipeline_key"
ROLE_TAG = "expo.role"  # "pipeline" on the parent, "stage" on nested runs
STAGE_TAG = "expo.stage"
ARM_TAG = "expo.arm"
PARENT_TAG = "mlflow.parentRunId"
# What the KFP backend's MLflow integration hands each task (and `expo run` with tracking.platform_runs).
PLATFORM_RUN_ENV = "MLFLOW_RUN_ID"
PLATFORM_EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_ID"
WORKSPACE_ENV = "MLFLOW_WORKSPACE"
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
REDACTED = "***"

Status = Literal["FINISHED", "FAILED", "KILLED"]
T = TypeVar("T")

_CREDENTIAL = re.compile(r"token|passw|secret|credential|(^|[._-])key$|api_?key|access_?key", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)[^/@\s]+@")
_TRANSIENT = ("max retries exceeded", "connection refused", "failed to establish", "connection aborted",
              "connection reset", "read timed out", "timed out", "database is locked",
              "temporarily unavailable", "bad gateway", "service unavailable")
_SAFE_NAME = re.compile(r"^[\w.\-]+$")


# ---------------------------------------------------------------------------------------------
# Names, URIs and redaction


def pipeline_key(config_dict: dict[str, Any]) -> str:
    """A deterministic 16-hex digest of the resolved config: the same config gives the same key."""
    text = json.dumps(config_dict, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def env_pipeline_key() -> str:
    """The key a pipeline step reads from its environment, where a run-varying value costs no cache hit:
    $EXPO_PIPELINE_KEY, else $EXPO_PIPELINE_RUN_ID (the KFP run id, set from a pod label)."""
    for name in ("EXPO_PIPELINE_KEY", "EXPO_PIPELINE_RUN_ID"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise TrackingError("no pipeline key: set EXPO_PIPELINE_KEY (or EXPO_PIPELINE_RUN_ID) or pass one")


def mlflow_key(name: str) -> str:
    """A metric/tag name MLflow accepts: `pass@1` -> `pass_at_1` (MLflow rejects '@' in names)."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def redact_uri(uri: str) -> str:
    """Strip `user:password@` from any URI in `uri`, so logs and messages carry no credentials."""
    return _USERINFO.sub(r"\g<scheme>", uri)


def redact_params(flat: dict[str, Any]) -> dict[str, Any]:
    """Hide values whose key looks like a credential; strip userinfo from URI-looking strings."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        leaf = key.rsplit(".", 1)[-1]
        if _CREDENTIAL.search(leaf) and value not in (None, ""):
            out[key] = REDACTED
        elif isinstance(value, str):
            out[key] = redact_uri(value)
        else:
            out[key] = value
    return out


def _redact_tree(data: dict[str, Any]) -> dict[str, Any]:
    """`redact_params` applied to a nested dict, keeping its shape (for the YAML artifact)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        out[key] = _redact_tree(value) if isinstance(value, dict) else redact_params({key: value})[key]
    return out


def resolve_tracking_uri(cfg: TrackingConfig, run_dir: Path | None = None) -> str:
    """cfg.tracking_uri, else $MLFLOW_TRACKING_URI, else a SQLite store in `run_dir` (or the cwd).
    A platform run in the environment lives where the platform says: its URI wins over the config's."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env and platform_run_id():
        return env
    if cfg.tracking_uri.strip():
        return cfg.tracking_uri.strip()
    if env:
        return env
    folder = Path(run_dir) if run_dir is not None else Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / STORE_FILE).resolve()}"


def platform_run_id() -> str | None:
    """The run the platform created for this task ($MLFLOW_RUN_ID), None when it made none."""
    return os.environ.get(PLATFORM_RUN_ENV, "").strip() or None


def resolve_workspace(cfg: TrackingConfig) -> str:
    """The MLflow workspace: the platform's when it gave a run, else cfg.workspace, else
    $MLFLOW_WORKSPACE; "" for the server's default."""
    env = os.environ.get(WORKSPACE_ENV, "").strip()
    if env and platform_run_id():
        return env
    return cfg.workspace.strip() or env


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


# ---------------------------------------------------------------------------------------------
# Connection: a client, the retry policy and the lock for SQLite


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc).lower()
    if isinstance(exc, MlflowException) and exc.error_code in ("TEMPORARILY_UNAVAILABLE",):
        return True
    return any(marker in text for marker in _TRANSIENT)


@dataclass
class Connection:
    """One tracking store: its URI, a client, and how hard to retry."""

    uri: str
    client: MlflowClient
    retries: int
    backoff_s: float
    experiment: str

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, retried on connection errors; then TrackingError naming the URI."""
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not _transient(exc):
                    raise
                if attempt == self.retries:
                    first = redact_uri(" ".join(str(exc).split()))[:240]
                    raise TrackingError(f"MLflow at {redact_uri(self.uri)} did not answer ({what}) after "
                                        f"{self.retries + 1} attempt(s): {first}") from None
                time.sleep(min(self.backoff_s * 2 ** attempt, 30.0))
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise find-or-create across processes when the store is a SQLite file."""
        db = sqlite_path(self.uri)
        if db is None:
            yield
            return
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def experiment_id(self) -> str:
        """The configured experiment, created if missing (SQLite: artifacts beside the database)."""
        exp = self.call("get experiment", self.client.get_experiment_by_name, self.experiment)
        if exp is not None:
            return exp.experiment_id
        db = sqlite_path(self.uri)
        location = str(db.parent / "mlartifacts") if db is not None else None
        try:
            return self.call("create experiment", self.client.create_experiment, self.experiment,
                             artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.call("get experiment", self.client.get_experiment_by_name, self.experiment).experiment_id


def connect(cfg: TrackingConfig, run_dir: Path | None = None) -> Connection:
    """A connection to the resolved store; makes it the process-wide MLflow URI too (fluent API)."""
    uri = resolve_tracking_uri(cfg, run_dir)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    workspace = resolve_workspace(cfg)
    if workspace:  # also into the environment, so the stage's child processes use it too
        mlflow.set_workspace(workspace)
    conn = Connection(uri=uri, client=MlflowClient(tracking_uri=uri, registry_uri=uri),
                      retries=cfg.retries, backoff_s=cfg.backoff_s, experiment=cfg.experiment)
    if sqlite_path(uri) is not None:
        # The first touch creates the schema; two processes doing it at once would race the migrations.
        with conn.lock():
            conn.call("open store", conn.client.search_experiments, max_results=1)
    return conn


# ---------------------------------------------------------------------------------------------
# Parent and stage runs


def _git_commit() -> str | None:
    """EXPO_GIT_COMMIT (set in images, which carry no .git), else `git rev-parse HEAD` of this checkout."""
    env = os.environ.get("EXPO_GIT_COMMIT", "").strip()
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(expo.__file__).parent, timeout=5,
                             capture_output=True, text=True, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _search(conn: Connection, exp_id: str, filter_string: str) -> list[Any]:
    runs = conn.call("search runs", conn.client.search_runs, [exp_id], filter_string=filter_string,
                     max_results=500, order_by=["attributes.start_time ASC"])
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _check_key(key: str) -> None:
    if not _SAFE_NAME.match(key):
        raise TrackingError(f"pipeline key {key!r} must be letters, digits, '.', '_' or '-'")


def _pipeline_tags(key: str, pipeline: str) -> dict[str, str]:
    """What marks a run as the parent of pipeline run `key`: key, role, pipeline name, version, commit."""
    tags = {KEY_TAG: key, ROLE_TAG: "pipeline", "expo.pipeline": pipeline, "expo.version": expo.__version__}
    commit = _git_commit()
    if commit:
        tags["expo.git_commit"] = commit
    return tags


def tag_run(conn: Connection, run_id: str, tags: dict[str, str]) -> None:
    """Set `tags` on run `run_id` (names made MLflow-safe), 100 to a call."""
    batch = [RunTag(mlflow_key(k), str(v)) for k, v in tags.items()]
    for i in range(0, len(batch), 100):
        conn.call("tag run", conn.client.log_batch, run_id, tags=batch[i:i + 100])


def _platform_stage(conn: Connection, key: str, stage: str, arm: str | None, pipeline: str,
                    run_id: str) -> tuple[str, str]:
    """Make the platform's run for this task our stage run and its parent our pipeline run, by tags
    alone (nothing is created); returns (run id, parent id). A run without a parent is its own."""
    run = conn.call("get platform run", conn.client.get_run, run_id)
    parent_id = run.data.tags.get(PARENT_TAG) or run_id
    tags = {KEY_TAG: key, ROLE_TAG: "stage", STAGE_TAG: stage}
    if arm:
        tags[ARM_TAG] = arm
    tag_run(conn, run_id, tags)
    if parent_id != run_id:
        tag_run(conn, parent_id, _pipeline_tags(key, pipeline))
    return run_id, parent_id


def _parent(conn: Connection, key: str, tags: dict[str, str], pipeline: str) -> str:
    _check_key(key)
    exp_id = conn.experiment_id()
    where = f"tags.`{KEY_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'pipeline'"
    with conn.lock():
        found = _search(conn, exp_id, where)
        if found:
            run_id = found[0].info.run_id
        else:
            mine = conn.call("create parent run", conn.client.create_run, exp_id,
                             tags=_pipeline_tags(key, pipeline), run_name=f"{pipeline}-{key}").info.run_id
            # Another process may have created one meanwhile (server stores have no lock): the oldest wins.
            found = _search(conn, exp_id, where)
            run_id = found[0].info.run_id if found else mine
            if run_id != mine:
                conn.call("delete duplicate parent", conn.client.delete_run, mine)
    for name, value in tags.items():
        conn.call("tag parent run", conn.client.set_tag, run_id, mlflow_key(name), str(value))
    return run_id


def parent_run(key: str, cfg: TrackingConfig, tags: dict[str, str] | None = None, *,
               pipeline: str = "expo", run_dir: Path | None = None) -> str:
    """Find or create the parent run of pipeline run `key`; returns its run id."""
    return _parent(connect(cfg, run_dir), key, dict(tags or {}), pipeline)


def close_parent(key: str, status: Status, cfg: TrackingConfig | None = None, *,
                 tags: dict[str, str] | None = None, run_dir: Path | None = None,
                 pipeline: str = "expo") -> str:
    """End the parent run with the pipeline's status, after adding `tags` (e.g. the KFP run id).
    The exit handler calls it; it creates the parent if no step did (a pipeline that failed early).
    Under a platform run the parent is the platform's: it gets the tags, and the platform ends it."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise TrackingError(f"close_parent: status {status!r} is not FINISHED, FAILED or KILLED")
    conn = connect(cfg or TrackingConfig(), run_dir)
    platform = platform_run_id()
    if platform:
        _, parent_id = _platform_stage(conn, key, "finish_run", None, pipeline, platform)
        tag_run(conn, parent_id, dict(tags or {}))
        return parent_id
    run_id = _parent(conn, key, dict(tags or {}), pipeline)
    conn.call("end parent run", conn.client.set_terminated, run_id, status)
    return run_id


def _stage(conn: Connection, key: str, stage: str, arm: str | None, parent_id: str) -> str:
    """Reuse this stage's FINISHED run; replace FAILED/KILLED/unfinished ones (their logs are partial)."""
    for name in (stage, arm or "x"):
        if not _SAFE_NAME.match(name):
            raise TrackingError(f"stage or arm name {name!r} must be letters, digits, '.', '_' or '-'")
    exp_id = conn.experiment_id()
    where = f"tags.`{KEY_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'stage' and tags.`{STAGE_TAG}` = '{stage}'"
    with conn.lock():
        found = [r for r in _search(conn, exp_id, where) if r.data.tags.get(ARM_TAG) == arm]
        done = [r for r in found if r.info.status == "FINISHED"]
        for stale in (r for r in found if r.info.status != "FINISHED"):
            conn.call("delete stale stage run", conn.client.delete_run, stale.info.run_id)
        if done:
            return done[0].info.run_id
        tags = {KEY_TAG: key, ROLE_TAG: "stage", STAGE_TAG: stage, PARENT_TAG: parent_id}
        if arm:
            tags[ARM_TAG] = arm
        name = f"{stage}-{arm}" if arm else stage
        return conn.call("create stage run", conn.client.create_run, exp_id, tags=tags,
                         run_name=name).info.run_id


@dataclass
class StageRun:
    """The active stage run: what `log_*` below write to."""

    run_id: str
    parent_id: str
    conn: Connection


_ACTIVE: contextvars.ContextVar[StageRun | None] = contextvars.ContextVar("expo_stage_run", default=None)


@contextlib.contextmanager
def stage_run(key: str, stage: str, cfg: TrackingConfig, arm: str | None = None, *,
              pipeline: str = "expo", run_dir: Path | None = None) -> Iterator[StageRun]:
    """Find-or-create the parent and this stage's nested run (or take the platform's run for this task),
    make it MLflow's active run, and end it FINISHED on success, FAILED on an exception (re-raised) or
    KILLED on Ctrl-C."""
    conn = connect(cfg, run_dir)
    platform = platform_run_id()
    if platform:
        run_id, parent_id = _platform_stage(conn, key, stage, arm, pipeline, platform)
    else:
        parent_id = _parent(conn, key, {}, pipeline)
        run_id = _stage(conn, key, stage, arm, parent_id)
    conn.call("start stage run", mlflow.start_run, run_id=run_id, nested=mlflow.active_run() is not None)
    run = StageRun(run_id=run_id, parent_id=parent_id, conn=conn)
    token = _ACTIVE.set(run)
    _SYSTEM_INTERVAL.set(cfg.system_metrics_interval_s)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _ACTIVE.reset(token)
        with contextlib.suppress(Exception):  # never hide the stage's own error behind a tracking one
            conn.call("end stage run", mlflow.end_run, status)


def active_stage() -> StageRun:
    run = _ACTIVE.get()
    if run is None:
        raise TrackingError("no active stage run: call this inside `with expo.tracking.stage_run(...)`")
    return run


# ---------------------------------------------------------------------------------------------
# What a stage logs


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def config_params(cfg_dict: dict[str, Any]) -> dict[str, str]:
    """A config as MLflow params: flattened keys, credentials redacted, long values cut."""
    return {mlflow_key(k): _param_value(v) for k, v in redact_params(flatten(cfg_dict)).items()}


def log_config(cfg_dict: dict[str, Any]) -> dict[str, str]:
    """The config as flattened params (credentials redacted, long values cut) and as `config.yaml`."""
    run = active_stage()
    params = config_params(cfg_dict)
    items = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        run.conn.call("log params", run.conn.client.log_batch, run.run_id, params=items[i:i + 100])
    text = yaml.safe_dump(_redact_tree(cfg_dict), sort_keys=False)
    run.conn.call("log config.yaml", run.conn.client.log_text, run.run_id, text, "config.yaml")
    return params


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, 16 hex characters (the data set digest used in lineage tags)."""
    return hash_file(path).hexdigest()[:16]


def log_dataset(path: str | Path, context: Literal["train", "eval", "test", "explanations"],
                name: str) -> str:
    """Log a JSONL table as a run input with its content digest; returns the digest."""
    import pandas as pd

    from expo.errors import DataError
    from expo.io import read_jsonl

    if context not in ("train", "eval", "test", "explanations"):
        raise TrackingError(f"log_dataset: context {context!r} is not train, eval, test or explanations")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"log_dataset: {path} does not exist")
    run = active_stage()
    digest = file_digest(path)
    frame = pd.DataFrame(read_jsonl(path))
    with warnings.catch_warnings():  # MLflow registers two equivalent local-file sources and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        # ...and hints that integer columns cannot hold missing values: true, and irrelevant to a log.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        dataset = mlflow.data.from_pandas(frame, source=str(path.resolve()), name=name, digest=digest)
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
    run.conn.call("log dataset", run.conn.client.log_inputs, run.run_id, datasets=[entry])
    run.conn.call("tag dataset digest", run.conn.client.set_tag, run.run_id,
                  f"expo.data.{mlflow_key(name)}.digest", digest)
    return digest


def log_metrics_series(rows: list[dict[str, Any]], step_key: str = "step") -> int:
    """One metric point per numeric value of each row, at `row[step_key]` (else the row index).
    Non-numeric values (and None) are skipped. Returns the number of points logged."""
    run = active_stage()
    now = int(time.time() * 1000)
    points: list[Metric] = []
    for i, row in enumerate(rows):
        step = int(row.get(step_key, i))
        for name, value in row.items():
            if name == step_key or isinstance(value, str) or value is None:
                continue
            if isinstance(value, (int, float)):
                points.append(Metric(mlflow_key(name), float(value), now, step))
    for i in range(0, len(points), 1000):  # MLflow takes at most 1000 metrics per batch
        run.conn.call("log metrics", run.conn.client.log_batch, run.run_id, metrics=points[i:i + 1000])
    return len(points)


def log_metrics(values: dict[str, float], step: int | None = None) -> None:
    """A dict of final metrics (names made MLflow-safe: pass@1 -> pass_at_1)."""
    log_metrics_series([{**values, "step": step or 0}])


def log_artifacts(local_dir: str | Path, path: str | None = None) -> None:
    """Upload a folder's files under artifact path `path`."""
    run = active_stage()
    run.conn.call("log artifacts", run.conn.client.log_artifacts, run.run_id, str(local_dir), path)


@contextlib.contextmanager
def system_metrics(run: StageRun, interval_s: float | None = None) -> Iterator[None]:
    """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network, and GPU
    where nvidia-ml-py finds one) sampled into `run` every `interval_s` while the block runs, plus one
    sample at its end so a short stage has them too. Never fails the stage: a monitor that cannot start
    or post is logged and skipped. `interval_s` defaults to the tracking config's; 0 = off."""
    import logging

    interval = _SYSTEM_INTERVAL.get() if interval_s is None else interval_s
    monitor = None
    if interval > 0:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run.run_id, sampling_interval=interval, tracking_uri=run.conn.uri)
            monitor.start()
        except Exception as exc:  # psutil missing, store down: metrics of the stage itself matter more
            logging.getLogger(__name__).warning("system metrics off: %s", " ".join(str(exc).split())[:200])
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()
                # MLflow's monitor posts only after a full sampling interval: take the closing sample.
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()


# The interval stage_run reads from the stage's tracking config, for system_metrics().
_SYSTEM_INTERVAL: contextvars.ContextVar[float] = contextvars.ContextVar("expo_system_interval", default=10.0)


def set_tags(tags: dict[str, Any]) -> None:
    run = active_stage()
    batch = [RunTag(mlflow_key(k), redact_uri(str(v))) for k, v in tags.items()]
    for i in range(0, len(batch), 100):
        run.conn.call("set tags", run.conn.client.log_batch, run.run_id, tags=batch[i:i + 100])


__all__ = [
    "Connection", "StageRun", "active_stage", "close_parent", "config_params", "connect", "env_pipeline_key",
    "file_digest",
    "log_artifacts",
    "log_config", "log_dataset", "log_metrics", "log_metrics_series", "mlflow_key", "parent_run",
    "pipeline_key", "platform_run_id", "redact_params", "redact_uri", "resolve_tracking_uri",
    "resolve_workspace", "set_tags", "sqlite_path", "tag_run",
    "stage_run", "system_metrics",
]
