"""The MLflow Model Registry: register a trained model with its lineage, move aliases, load it back.

Registration (`log_and_register`) logs the model folder as an MLflow model of the transformers flavor
(task text-generation, with a signature, and the tokenizer and its chat template as the flavor's
component), which makes a LoggedModel of the stage's run; the evaluation metrics are logged on that
LoggedModel, and the version is registered from it (`models:/<model_id>`), so
`mlflow.transformers.load_model("models:/NAME@champion")` and `mlflow models serve` take it as it is.
The weights are copied from the folder, never loaded. A LoRA adapter folder (no config.json; the train
stage merges LoRA arms, so only a hand-registered adapter is one) is registered as plain files with its
base as a tag, and `load_model_from_registry` loads it onto that base. The version carries its lineage
as tags: source run, content fingerprint (`expo.artifacts.fingerprint`), data digests, arm, expo_beta,
base model, evaluation metrics (`expo.metric.<name>`). It gets alias `candidate`. The same content
registered twice (same `expo.fingerprint`) returns the existing version.

The promotion gate (`gate_and_promote`; the rule is expo.gates.candidate_vs_champion) moves alias
`champion` only when the candidate beats the current champion on `cfg.gate_metric` by more than
`cfg.gate_margin`; every decision and its numbers are written on the candidate (`expo.gate.*`). MLflow
has no compare-and-set for aliases (a gate that read a stale champion would overwrite a better one), so
every alias move holds `registry_lock`: a file lock for SQLite, and for a server a lock registered model `<name>.expo-lock` (creating a name is atomic on the server).

    info = log_and_register(out, "expo-tiny", cfg.register, tags, metrics, run_id, tracking=cfg.tracking)
    gate_and_promote("expo-tiny", info.version, cfg.register, tracking=cfg.tracking)
    model, tok = load_model_from_registry("models:/expo-tiny@champion")
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expo import gates
from expo.artifacts import find_model_folder, read_card
from expo.artifacts import fingerprint as model_fingerprint
from expo.config import RegisterConfig, TrackingConfig
from expo.errors import ModelError, TrackingError
from expo.tracking import Connection, connect, mlflow_key, redact_uri, sqlite_path

FINGERPRINT_TAG = "expo.fingerprint"
SERVING_TASK = "text-generation"  # the transformers pipeline task of a registered model
# transformers' from_pretrained is not safe across threads (meta-device init): one model logged at a time.
_LOG_LOCK = threading.Lock()
LOCK_SUFFIX = ".expo-lock"
LOCK_STALE_S = 120.0  # a registry lock older than this was left by a crashed process
METRIC_PREFIX = "expo.metric."
GATE_PREFIX = "expo.gate."
PROMOTED_PREFIX = "expo.promoted."  # + <alias>.by / .reason / .from_version / .at (a move by hand)
# Not part of a registered model: resumable training state is large and useless to a consumer.
_SKIP_DIRS = ("checkpoints",)
_SKIP_PREFIXES = ("checkpoint-", ".")


@dataclass
class VersionInfo:
    """A registered model version, as registration returns it."""

    name: str
    version: int
    uri: str  # models:/NAME/VERSION
    run_id: str
    fingerprint: str
    created: bool  # False when the same content was already registered
    aliases: list[str] = field(default_factory=list)


@dataclass
class GateDecision:
    """What the promotion gate decided, with its numbers (also written as tags on the candidate)."""

    decision: str  # promoted | kept (not better by the margin) | no-metric | already-champion
    candidate_version: int
    champion_version: int | None
    candidate_value: float | None
    champion_value: float | None
    metric: str


# ---------------------------------------------------------------------------------------------
# Helpers


def _model_files(model_dir: Path) -> list[Path]:
    """The files that make up the model: everything but checkpoints and hidden files, sorted."""
    files = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        top = rel.parts[0]
        if top in _SKIP_DIRS or any(part.startswith(_SKIP_PREFIXES) for part in rel.parts):
            continue
        if path.is_file():
            files.append(path)
    return files


def _check_name(name: str) -> None:
    if not name.strip() or "'" in name or "\n" in name:
        raise TrackingError(f"registered model name {name!r} must be non-empty, without quotes or newlines")


def _versions(conn: Connection, name: str, where: str = "") -> list[Any]:
    filt = f"name='{name}'" + (f" and {where}" if where else "")
    found = conn.call("search model versions", conn.client.search_model_versions, filt, max_results=1000)
    return sorted(found, key=lambda v: int(v.version))


def _aliases(conn: Connection, name: str) -> dict[str, int]:
    model = conn.call("get registered model", conn.client.get_registered_model, name)
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


def _ensure_model(conn: Connection, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        conn.call("get registered model", conn.client.get_registered_model, name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        conn.call("create registered model", conn.client.create_registered_model, name)
    except MlflowException as exc:  # another process created it between our two calls
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _metric_value(conn: Connection, name: str, version: int, metric: str) -> float | None:
    """The gate metric of a version: its `expo.metric.<metric>` tag, else its source run's metric."""
    mv = conn.call("get model version", conn.client.get_model_version, name, str(version))
    key = mlflow_key(metric)
    raw = mv.tags.get(METRIC_PREFIX + key)
    if raw is not None:
        return float(raw)
    if mv.run_id:
        run = conn.call("get run", conn.client.get_run, mv.run_id)
        if key in run.data.metrics:
            return float(run.data.metrics[key])
    return None


def _set_version_tags(conn: Connection, name: str, version: int, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        conn.call("tag model version", conn.client.set_model_version_tag, name, str(version),
                  mlflow_key(key), "" if value is None else str(value))


def _connect(tracking: TrackingConfig | None, run_dir: Path | None) -> Connection:
    return connect(tracking or TrackingConfig(), run_dir)


@contextlib.contextmanager
def registry_lock(conn: Connection, name: str, timeout_s: float = 180.0,
                  stale_s: float = LOCK_STALE_S) -> Iterator[None]:
    """Mutual exclusion for alias moves on `name`. SQLite: a file lock. A server has no compare-and-set
    for aliases, but creating a registered model is atomic (unique name), so the lock is a registered
    model `<name>.expo-lock` that exists while held; one left by a crashed holder expires after stale_s."""
    from mlflow.exceptions import MlflowException

    if sqlite_path(conn.uri) is not None:
        with conn.lock():
            yield
        return
    lock = f"{name}{LOCK_SUFFIX}"
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            conn.call("take registry lock", conn.client.create_registered_model, lock,
                      description=f"held by expo while moving aliases of {name}; safe to delete if stale")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        with contextlib.suppress(MlflowException):
            held = conn.call("read registry lock", conn.client.get_registered_model, lock)
            if time.time() - int(held.creation_timestamp) / 1000 > stale_s:
                conn.call("break stale lock", conn.client.delete_registered_model, lock)
                continue
        if time.monotonic() > deadline:
            raise TrackingError(f"registry lock {lock!r} at {redact_uri(conn.uri)} still held after "
                                f"{timeout_s:.0f} s; delete that registered model if no expo run holds it")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            conn.call("release registry lock", conn.client.delete_registered_model, lock)


# ---------------------------------------------------------------------------------------------
# Registration


def _lineage_tags(model_dir: Path, tags: dict[str, Any], metrics: dict[str, float], run_id: str,
                  fingerprint: str) -> dict[str, str]:
    """Version tags: caller's lineage tags, what the model card / adapter_config.json say, metrics."""
    out: dict[str, str] = {FINGERPRINT_TAG: fingerprint, "expo.source_run": run_id}
    meta = read_card(model_dir)
    for src, dst in (("base", "expo.base_model"), ("arm", "expo.arm"),
                     ("selected_step", "expo.checkpoint_step"), ("selected_by", "expo.checkpoint")):
        if meta.get(src) is not None:
            out[dst] = str(meta[src])
    adapter = model_dir / "adapter_config.json"
    if adapter.is_file():  # a LoRA adapter is useless without its base: record which one
        out["expo.adapter"] = "lora"
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            out["expo.base_model"] = str(base)
    out.update({mlflow_key(k): redact_uri(str(v)) for k, v in tags.items()})
    out.update({METRIC_PREFIX + mlflow_key(k): repr(float(v)) for k, v in metrics.items()})
    return out


def _stage_files(model_dir: Path, dst: Path) -> Path:
    """The model's files (not checkpoints) linked into `dst`: what gets uploaded."""
    for path in _model_files(model_dir):
        target = dst / path.relative_to(model_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)  # no copy of multi-GB weights when on the same file system
        except OSError:
            shutil.copy2(path, target)
    return dst


def _upload(conn: Connection, model_dir: Path, run_id: str, artifact_path: str) -> str:
    """Upload the model's files (not checkpoints) under `artifact_path`; returns the artifact URI."""
    with tempfile.TemporaryDirectory(prefix="expo-register-") as tmp:
        conn.call("upload model", conn.client.log_artifacts, run_id, str(_stage_files(model_dir, Path(tmp))),
                  artifact_path)
    run = conn.call("get run", conn.client.get_run, run_id)
    return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"


@contextlib.contextmanager
def _active_run(run_id: str) -> Iterator[None]:
    """`run_id` as MLflow's active run for the block (the stage's run usually already is)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        yield


def _model_card(model_dir: Path, fingerprint: str) -> Any:
    """A model card from what we know (MLflow would otherwise ask the hub for one, which a pod without
    egress answers only after timeouts)."""
    from huggingface_hub import ModelCard

    meta = read_card(model_dir)
    lines = ["# ExPO-trained model", "", f"- arm: {meta.get('arm', 'unknown')}",
             f"- base model: {meta.get('base', 'unknown')}"]
    if meta.get("dtype"):
        lines.append(f"- weights: {meta['dtype']}")
    lines += [f"- content fingerprint: {fingerprint}", "", "Trained by expo-pipeline (self-explanation-guided RL)."]
    return ModelCard("\n".join(lines))


def _flavor_input(folder: Path) -> Any:
    """What mlflow.transformers.log_model gets: the folder itself (weights copied, never loaded), or,
    for a tokenizer saved from a bare `tokenizers.Tokenizer` (the embedded tiny model's), the loaded
    model and tokenizer: from a folder MLflow would pick the tokenizer with AutoTokenizer, which swaps in
    the model type's class and its pre-tokenizer (expo.modeling.load_tokenizer says why)."""
    from expo.modeling import _PLAIN_TOKENIZER_CLASSES, load_tokenizer

    config = folder / "tokenizer_config.json"
    declared = json.loads(config.read_text("utf-8")).get("tokenizer_class") if config.is_file() else None
    if declared not in _PLAIN_TOKENIZER_CLASSES:
        return str(folder)
    from transformers import AutoModelForCausalLM

    return {"model": AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True),
            "tokenizer": load_tokenizer(folder)}


def _requirements() -> list[str]:
    """The serving environment, given (MLflow would otherwise load the model in a subprocess to infer it)."""
    import mlflow
    import transformers

    return [f"mlflow=={mlflow.__version__}", f"transformers=={transformers.__version__}", "torch",
            "safetensors", "accelerate"]


def _servable(model_dir: Path) -> bool:
    """A full model with its tokenizer: what the transformers flavor can log and serve."""
    return (model_dir / "config.json").is_file() and any(
        (model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


def _log_servable(conn: Connection, model_dir: Path, run_id: str, fingerprint: str,
                  metrics: dict[str, float]) -> Any:
    """Log `model_dir` as a transformers-flavor MLflow model (a LoggedModel of run `run_id`) and its
    metrics on it; returns MLflow's ModelInfo."""
    import mlflow

    tokenizer_config = model_dir / "tokenizer_config.json"
    chat = (model_dir / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and "chat_template" in json.loads(tokenizer_config.read_text("utf-8")))
    with tempfile.TemporaryDirectory(prefix="expo-register-") as tmp, _active_run(run_id), _LOG_LOCK:
        staged = _stage_files(model_dir, Path(tmp) / "checkpoint")
        info = conn.call("log model", mlflow.transformers.log_model, _flavor_input(staged),
                         name=f"expo-{fingerprint}", task=SERVING_TASK,
                         model_card=_model_card(model_dir, fingerprint), pip_requirements=_requirements(),
                         metadata={"expo.fingerprint": fingerprint, "expo.chat_template": chat},
                         tags={FINGERPRINT_TAG: fingerprint})
    if metrics:  # the LoggedModel carries the arm's evaluation metrics (MLflow 3's model view)
        values = {mlflow_key(k): float(v) for k, v in metrics.items()}
        conn.call("log model metrics", mlflow.log_metrics, values, run_id=run_id, model_id=info.model_id)
    return info


def _move_candidate(conn: Connection, name: str, version: int) -> None:
    """`candidate` only moves forward: racing registrations leave it on the newest version."""
    with registry_lock(conn, name):
        current = _aliases(conn, name).get("candidate")
        if current is None or current < version:
            conn.call("set alias", conn.client.set_registered_model_alias, name, "candidate", str(version))


def _register(conn: Connection, model_dir: Path, name: str, tags: dict[str, Any],
              metrics: dict[str, float], run_id: str) -> VersionInfo:
    fingerprint = model_fingerprint(model_dir)
    where = f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
    _ensure_model(conn, name)
    existing = _versions(conn, name, where)
    if existing:
        mv = existing[0]
        _move_candidate(conn, name, int(mv.version))  # in case a first attempt died before the alias
        held = sorted(a for a, v in _aliases(conn, name).items() if v == int(mv.version))
        return VersionInfo(name, int(mv.version), f"models:/{name}/{mv.version}", mv.run_id or "",
                           fingerprint, False, held)
    lineage = _lineage_tags(model_dir, tags, metrics, run_id, fingerprint)
    if _servable(model_dir):
        info = _log_servable(conn, model_dir, run_id, fingerprint, metrics)
        lineage["expo.model_id"] = info.model_id
        import mlflow

        # mlflow.register_model also links the version back on the LoggedModel (mlflow.modelVersions).
        mv = conn.call("register model", mlflow.register_model, f"models:/{info.model_id}", name,
                       tags=lineage)
    else:  # a LoRA adapter (or no tokenizer): plain files; load_model_from_registry loads an adapter
        source = _upload(conn, model_dir, run_id, f"registered/{fingerprint}")
        mv = conn.call("create model version", conn.client.create_model_version, name, source=source,
                       run_id=run_id, tags=lineage)
    mine = int(mv.version)
    # Two registrations of the same content may race past the search above: versions are numbered by
    # the server in creation order, so every racer agrees that the lowest one is the registered model.
    same = _versions(conn, name, where)
    first = int(same[0].version) if same else mine
    if first != mine:
        conn.call("delete duplicate version", conn.client.delete_model_version, name, str(mine))
        return VersionInfo(name, first, f"models:/{name}/{first}", same[0].run_id or "", fingerprint, False)
    _move_candidate(conn, name, mine)
    return VersionInfo(name, mine, f"models:/{name}/{mine}", run_id, fingerprint, True, ["candidate"])


def _register_later_hint(model_dir: Path, name: str, uri: str) -> str:
    return (f"the trained model stays at {model_dir}; register it later with: "
            f"MLFLOW_TRACKING_URI={redact_uri(uri)} python -c \"from expo.registry import register_dir; "
            f"register_dir('{model_dir}', '{name}')\"")


def log_and_register(model_dir: str | Path, name: str, cfg: RegisterConfig, tags: dict[str, Any],
                     metrics: dict[str, float], run_id: str, *, tracking: TrackingConfig | None = None,
                     run_dir: Path | None = None) -> VersionInfo:
    """Upload `model_dir` to run `run_id` and register it as a version of `name` with lineage tags and
    alias `candidate`; the same content registered again returns the existing version."""
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").is_file():
        raise ModelError(f"{model_dir} is not a model folder (no config.json or adapter_config.json)")
    _check_name(name)
    conn = _connect(tracking, run_dir)
    try:
        return _register(conn, model_dir, name, tags, metrics, run_id)
    except TrackingError as exc:
        raise TrackingError(f"{exc}; {_register_later_hint(model_dir, name, conn.uri)}") from None


def register_dir(model_dir: str | Path, name: str, tracking_uri: str = "",
                 tags: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> VersionInfo:
    """Register a model folder after the fact (when the server was down during the pipeline): a run of
    its own in experiment `expo`, then `log_and_register`. Metrics come from `metrics.json` beside it."""
    cfg = TrackingConfig(tracking_uri=tracking_uri)
    conn = connect(cfg)
    model_dir = Path(model_dir).resolve()
    metrics_file = model_dir / "metrics.json"
    if metrics is None and metrics_file.is_file():
        data = json.loads(metrics_file.read_text(encoding="utf-8"))
        metrics = {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run = conn.call("create run", conn.client.create_run, conn.experiment_id(),
                    tags={"expo.stage": "register-later"}, run_name="register-later")
    info = log_and_register(model_dir, name, RegisterConfig(model_name=name), tags or {}, metrics or {},
                            run.info.run_id, tracking=cfg)
    conn.call("end run", conn.client.set_terminated, run.info.run_id, "FINISHED")
    return info


# ---------------------------------------------------------------------------------------------
# Aliases: the gate and manual promotion


def _decide(conn: Connection, name: str, version: int, cfg: RegisterConfig,
            champion: int | None) -> GateDecision:
    cand = _metric_value(conn, name, version, cfg.gate_metric)
    champ = _metric_value(conn, name, champion, cfg.gate_metric) if champion is not None else None
    decision = gates.candidate_vs_champion(version, champion, cand, champ, cfg.gate_margin)
    return GateDecision(decision, version, champion, cand, champ, cfg.gate_metric)


def _record(conn: Connection, name: str, gate: GateDecision, margin: float, alias: str) -> None:
    _set_version_tags(conn, name, gate.candidate_version, {
        GATE_PREFIX + "decision": gate.decision,
        GATE_PREFIX + "alias": alias,
        GATE_PREFIX + "metric": gate.metric,
        GATE_PREFIX + "margin": margin,
        GATE_PREFIX + "candidate_value": gate.candidate_value,
        GATE_PREFIX + "champion_value": gate.champion_value,
        GATE_PREFIX + "champion_version": gate.champion_version,
        GATE_PREFIX + "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


def gate_and_promote(name: str, version: int, cfg: RegisterConfig, *, tracking: TrackingConfig | None = None,
                     run_dir: Path | None = None, alias: str = "champion") -> GateDecision:
    """Move `alias` to `version` only if it beats the current holder on cfg.gate_metric by more than
    cfg.gate_margin (or nobody holds it). The decision and numbers are tagged on `version`."""
    _check_name(name)
    conn = _connect(tracking, run_dir)
    version = int(version)
    with registry_lock(conn, name):
        gate = _decide(conn, name, version, cfg, _aliases(conn, name).get(alias))
        if gate.decision == "promoted":
            conn.call("set alias", conn.client.set_registered_model_alias, name, alias, str(version))
        _record(conn, name, gate, cfg.gate_margin, alias)
    return gate


def promote(name: str, version: int, alias: str = "champion", reason: str = "", user: str | None = None, *,
            tracking: TrackingConfig | None = None, run_dir: Path | None = None) -> int | None:
    """Move `alias` to `version` by hand, recording who, when and why on the version. Returns the
    version that held the alias before (None if none)."""
    _check_name(name)
    conn = _connect(tracking, run_dir)
    version = int(version)
    from mlflow.exceptions import MlflowException

    try:
        conn.call("get model version", conn.client.get_model_version, name, str(version))
    except MlflowException:
        raise TrackingError(f"no version {version} of registered model {name!r} at "
                            f"{redact_uri(conn.uri)}") from None
    user = user or os.environ.get("USER") or getpass.getuser()
    with registry_lock(conn, name):
        before = _aliases(conn, name).get(alias)
        conn.call("set alias", conn.client.set_registered_model_alias, name, alias, str(version))
    prefix = f"{PROMOTED_PREFIX}{mlflow_key(alias)}."
    _set_version_tags(conn, name, version, {
        prefix + "by": user, prefix + "reason": reason, prefix + "from_version": before,
        prefix + "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return before


def list_models(name: str, *, tracking: TrackingConfig | None = None, run_dir: Path | None = None,
                metrics: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per version (newest first): version, aliases, status, arm, run, fingerprint, metrics."""
    _check_name(name)
    conn = _connect(tracking, run_dir)
    _ensure_exists(conn, name)
    by_version: dict[int, list[str]] = {}
    for alias, version in _aliases(conn, name).items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    for mv in reversed(_versions(conn, name)):
        tags = mv.tags or {}
        row: dict[str, Any] = {
            "version": int(mv.version), "aliases": sorted(by_version.get(int(mv.version), [])),
            "arm": tags.get("expo.arm", ""), "gate": tags.get(GATE_PREFIX + "decision", ""),
            "run_id": mv.run_id or "", "fingerprint": tags.get(FINGERPRINT_TAG, ""),
            "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(mv.creation_timestamp) / 1000)),
        }
        wanted = metrics or tuple(k[len(METRIC_PREFIX):] for k in sorted(tags) if k.startswith(METRIC_PREFIX))
        for metric in wanted:
            raw = tags.get(METRIC_PREFIX + mlflow_key(metric))
            row[metric] = float(raw) if raw not in (None, "") else None
        rows.append(row)
    return rows


def promotion_history(name: str, *, tracking: TrackingConfig | None = None,
                      run_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every recorded decision about an alias, newest first: the promotion gate's (promoted or kept,
    with its numbers) and each `promote` by hand (who and why). Each row: at (UTC, ISO 8601), alias,
    version, from_version (who held the alias before, None if nobody), by ("gate" or the user),
    decision, reason. The records are version tags, one per version and alias: a version promoted
    by hand twice to the same alias shows the later move."""
    _check_name(name)
    conn = _connect(tracking, run_dir)
    _ensure_exists(conn, name)
    events = []
    for mv in _versions(conn, name):
        tags, version = mv.tags or {}, int(mv.version)
        if GATE_PREFIX + "decision" in tags:
            gate = {k[len(GATE_PREFIX):]: v for k, v in tags.items() if k.startswith(GATE_PREFIX)}
            events.append({
                "at": gate.get("at", ""), "alias": gate.get("alias") or "champion", "version": version,
                "from_version": _version_or_none(gate.get("champion_version")), "by": "gate",
                "decision": gate["decision"],
                "reason": f"{gate.get('metric', '')} {gate.get('candidate_value') or '-'} vs "
                          f"{gate.get('champion_value') or '-'} (margin {gate.get('margin', '-')})"})
        by_hand: dict[str, dict[str, str]] = {}
        for key, value in tags.items():
            if key.startswith(PROMOTED_PREFIX):
                alias, _, part = key[len(PROMOTED_PREFIX):].rpartition(".")
                by_hand.setdefault(alias, {})[part] = value
        for alias, record in by_hand.items():
            events.append({
                "at": record.get("at", ""), "alias": alias, "version": version,
                "from_version": _version_or_none(record.get("from_version")), "by": record.get("by", ""),
                "decision": "promoted", "reason": record.get("reason", "")})
    # newest first; within one second a move by hand follows the gate that registered the version
    return sorted(events, key=lambda e: (e["at"], e["version"], e["by"] != "gate"), reverse=True)


def _version_or_none(text: str | None) -> int | None:
    return int(text) if text not in (None, "") else None


def _ensure_exists(conn: Connection, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        conn.call("get registered model", conn.client.get_registered_model, name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"no registered model {name!r} at {redact_uri(conn.uri)}") from None
        raise


# ---------------------------------------------------------------------------------------------
# Loading back


def download_model(uri: str, dst: str | Path, *, tracking: TrackingConfig | None = None) -> Path:
    """Download `models:/NAME@alias` or `models:/NAME/3` into `dst`; returns the Hugging Face model
    folder inside (a transformers-flavor model keeps it under `model/`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not uri.startswith("models:/"):
        raise TrackingError(f"{uri!r} is not a registry URI (expected models:/NAME@alias or models:/NAME/3)")
    conn = _connect(tracking, None)
    Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        path = conn.call("download model", mlflow.artifacts.download_artifacts, artifact_uri=uri,
                         dst_path=str(dst), tracking_uri=conn.uri)
    except MlflowException as exc:
        first = " ".join(str(exc).split())[:200]
        raise TrackingError(f"cannot download {uri} from {redact_uri(conn.uri)}: {first}") from None
    root = Path(path)
    if (root / "config.json").is_file() or (root / "adapter_config.json").is_file():
        return root
    folder = find_model_folder(root, uri)
    # The transformers flavor keeps the tokenizer apart (components/tokenizer): put it beside the weights,
    # so the folder is a whole Hugging Face model folder again.
    tokenizer = root / "components" / "tokenizer"
    if tokenizer.is_dir() and not (folder / "tokenizer_config.json").is_file():
        for item in tokenizer.iterdir():
            if item.is_file() and not (folder / item.name).exists():
                shutil.copy2(item, folder / item.name)
    return folder


def load_model_from_registry(uri: str, *, tracking: TrackingConfig | None = None,
                             dst: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a registered version, loaded from safetensors only. A LoRA adapter is
    loaded onto the base model recorded in its adapter_config.json."""
    from transformers import AutoModelForCausalLM

    from expo.modeling import load_tokenizer

    folder = download_model(uri, dst or tempfile.mkdtemp(prefix="expo-model-"), tracking=tracking)
    try:
        if (folder / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
        tokenizer = load_tokenizer(folder)
    except (OSError, ValueError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise ModelError(f"{uri} (downloaded to {folder}) cannot be loaded: {first}") from None
    return model, tokenizer


__all__ = [
    "GateDecision", "VersionInfo", "download_model", "gate_and_promote",
    "list_models", "load_model_from_registry", "log_and_register", "promote", "promotion_history",
    "register_dir",
]
