"""Train one arm as a TrainJob from inside a pipeline task: stage inputs, launch, wait, fetch the model.

The pipeline task's own files (KFP artifacts) live in its pod; the TrainJob's nodes see only the shared
workspace PVC. So this copies the inputs into `/workspace/trainjobs/<job>/`, runs the job there
(launch.py), and copies the trained model back into the task's output folder, where KFP picks it up.

    from expo.cluster import launch_trainjob
    result = launch_trainjob(cfg, "exp-grpo", data_dir, model_dir, explanations_dir, output_dir)
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from expo.cluster.launch import LogSink, TrainJobResult, launch_and_wait
from expo.cluster.trainjob import build_trainjob
from expo.config import ExpoConfig
from expo.errors import ConfigError
from expo.workspace import MOUNT_PATH

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def job_name(arm: str, suffix: str | None = None) -> str:
    """`expo-<arm>-<8 hex>`: unique per launch, so a retried task never collides with its last try."""
    slug = re.sub(r"[^a-z0-9-]+", "-", arm.lower()).strip("-")[:40] or "arm"
    return f"expo-{slug}-{suffix or uuid.uuid4().hex[:8]}"


def stage_inputs(
    workspace: Path, job_dir: Path, inputs: dict[str, str | Path | None]
) -> dict[str, Path | None]:
    """Copy each input folder to `job_dir/<key>` unless it already is on the workspace; return the paths."""
    staged: dict[str, Path | None] = {}
    for key, src in inputs.items():
        if src is None:
            staged[key] = None
            continue
        src = Path(src)
        if not src.is_dir():
            raise ConfigError(f"TrainJob input {key!r}: {str(src)!r} is not a folder")
        if src.resolve().is_relative_to(workspace.resolve()):  # already on the shared volume
            staged[key] = src.resolve()
            continue
        shutil.copytree(src, job_dir / key, dirs_exist_ok=True)
        staged[key] = job_dir / key
    return staged


def in_pods(path: Path | None, workspace: Path) -> str | None:
    """Where the job's pods see `path` (a folder under this pod's workspace mount): under /workspace."""
    if path is None:
        return None
    return str(PurePosixPath(MOUNT_PATH) / path.resolve().relative_to(workspace.resolve()).as_posix())


def launch_trainjob(
    cfg: ExpoConfig,
    arm: str,
    data_dir: str | Path,
    model_dir: str | Path,
    explanations_dir: str | Path | None,
    output_dir: str | Path,
    *,
    api_client: Any = None,
    namespace: str | None = None,
    workspace: str | Path = MOUNT_PATH,
    poll_s: float = 15.0,
    log_sink: LogSink | None = print,
    run_id: str | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainJobResult:
    """Stage the inputs on the workspace, run the TrainJob, and copy its output into `output_dir`.

    `workspace` is where this pod mounts the shared PVC; the job's pods mount it at /workspace.
    A global batch that does not split over the job's processes fails here, before anything is staged.
    `checkpoint_dir` (on the workspace, keyed by what the arm trains on: expo.stages.checkpoint_dir) is
    where the job checkpoints and resumes from, so a retried task's new TrainJob continues from the last
    complete checkpoint instead of starting over. `run_id`: the arm's MLflow run, which rank 0 posts
    step metrics to while the job runs (expo.train.live).
    """
    from expo.train.grpo_training import batch_plan  # heavy (TRL): only once a job is launched

    batch_plan(cfg.train, cfg.cluster.train_nodes * max(cfg.cluster.gpus_train, 1))
    name = job_name(arm)
    workspace = Path(workspace)
    job_dir = workspace / "trainjobs" / name
    paths = stage_inputs(
        workspace, job_dir, {"data": data_dir, "model": model_dir, "explanations": explanations_dir}
    )
    remote_out = job_dir / "output"
    remote_out.mkdir(parents=True, exist_ok=True)
    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = Path(checkpoint_dir)
        if not checkpoints.resolve().is_relative_to(workspace.resolve()):
            raise ConfigError(f"TrainJob checkpoint folder {str(checkpoints)!r} is not on the workspace "
                              f"{str(workspace)!r}: the job's pods could not see it")
        checkpoints.mkdir(parents=True, exist_ok=True)
    job = build_trainjob(
        name,
        cfg,
        arm,
        in_pods(paths["data"], workspace),
        in_pods(paths["model"], workspace),
        in_pods(remote_out, workspace),
        namespace or _own_namespace(),
        explanations_path=in_pods(paths["explanations"], workspace),
        checkpoint_path=in_pods(checkpoints, workspace),
        run_id=run_id,
    )
    result = launch_and_wait(
        api_client or _api_client(),
        job,
        timeout_s=cfg.cluster.train_timeout_s,
        poll_s=poll_s,
        log_sink=log_sink,
    )
    shutil.copytree(remote_out, Path(output_dir), dirs_exist_ok=True)
    return result


def _own_namespace() -> str:
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    raise ConfigError("TrainJob namespace: not running in a pod and none given (pass namespace=...)")


def _api_client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()  # outside a cluster: the user's kubeconfig
    return client.ApiClient()
