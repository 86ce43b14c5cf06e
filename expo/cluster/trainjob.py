"""The Kubeflow Trainer v2 `TrainJob` that trains one arm on N nodes x G GPUs (a pure function).

Why a TrainJob: a KFP task is one pod, so multi-node training needs a controller that starts N pods,
wires torch.distributed between them (MASTER_ADDR/PORT, node ranks) and reports one status. Kubeflow
Trainer v2 does that from a `ClusterTrainingRuntime` (ours is `expo-torch-distributed` in
manifests/trainer-runtime/) plus this small object naming the image, command, node count and GPUs.

How it runs: every node starts `accelerate launch` with the node rank and master address that the
Trainer's torch plugin injects (`PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`), which starts G
processes per node running `python -m expo.cluster.worker` (see worker.py). Data, the starting model and
the trained model travel through the shared workspace PVC, patched into the runtime's pod template with
`runtimePatches` (Trainer >= v2.3; the schema is checked in tests against kubeflow-trainer-api 2.3.0).

    job = build_trainjob("expo-grpo-1a2b", cfg, "grpo", "/workspace/j/data", "/workspace/j/model",
                         "/workspace/j/out", "expo")
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any

from expo.config import ExpoConfig
from expo.errors import ConfigError
from expo.sections import given_dict
from expo.workspace import MOUNT_PATH, WORKSPACE_ENV

KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RUN_ID_ENV = "EXPO_MLFLOW_RUN_ID"  # expo.train.live.RUN_ID_ENV (not imported: that module pulls in MLflow)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
TRAINER_RELEASE = "v2.3.0"  # the Kubeflow Trainer release whose TrainJob API this object follows
NODE_CONTAINER = "node"  # the trainer container and replicated job of torch runtimes
PATCH_MANAGER = "expo-pipeline"  # owner of our runtimePatches entry
MLFLOW_CLIENT_LABEL = "expo.pipeline/mlflow-client"  # the NetworkPolicy lets only these pods reach MLflow
# The MLflow client secret (cluster.mlflow_secret): its keys and the variables MLflow reads. Every key is
# optional: a username and password for basic auth, or a bearer token (an OAuth proxy in front of MLflow),
# and a workspace on a server run with --enable-workspaces.
MLFLOW_SECRET_KEYS = {"tracking-uri": "MLFLOW_TRACKING_URI", "username": "MLFLOW_TRACKING_USERNAME",
                      "password": "MLFLOW_TRACKING_PASSWORD", "token": "MLFLOW_TRACKING_TOKEN",
                      "workspace": "MLFLOW_WORKSPACE"}
# Labels JobSet puts on every pod of the job; rank 0 is completion index 0 of replicated job `node`.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # RFC 1035 label: JobSet and Service names

# accelerate reads rank and rendezvous from the variables the Trainer's torch plugin sets on each node.
_LAUNCH = (
    "exec accelerate launch --num_machines {nodes} --num_processes {procs} {device_flag}"
    '--machine_rank "$PET_NODE_RANK" --main_process_ip "$PET_MASTER_ADDR" '
    '--main_process_port "$PET_MASTER_PORT" -m expo.cluster.worker "$@"'
)


def build_trainjob(
    name: str,
    cfg: ExpoConfig,
    arm: str,
    data_path: str,
    model_path: str,
    output_path: str,
    namespace: str,
    *,
    explanations_path: str | None = None,
    checkpoint_path: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The TrainJob object (a dict ready for CustomObjectsApi) training `arm` with `cfg`.

    Paths must lie under the workspace mount (/workspace): they are the only files every node sees.
    `checkpoint_path`: where the workers checkpoint and resume from (a retried job continues there).
    `run_id`: the arm's MLflow run; rank 0 posts step metrics to it as they happen.
    """
    _check_name(name)
    for what, path in (
        ("data_path", data_path),
        ("model_path", model_path),
        ("output_path", output_path),
        ("explanations_path", explanations_path),
        ("checkpoint_path", checkpoint_path),
    ):
        if path is not None:
            _check_in_workspace(what, path)
    cluster = cfg.cluster
    gpus = cluster.gpus_train
    labels = {
        "app.kubernetes.io/part-of": "expo-pipeline",
        "app.kubernetes.io/component": "train",
        "expo.pipeline/arm": arm,
    }
    job_labels = dict(labels)
    if cluster.kueue_queue:  # Kueue admits (and suspends) the whole TrainJob against the queue's quota
        job_labels[KUEUE_LABEL] = cluster.kueue_queue
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": job_labels},
        "spec": {
            "runtimeRef": {
                "name": cluster.training_runtime,
                "apiGroup": GROUP,
                "kind": "ClusterTrainingRuntime",
            },
            # The controller fails the job with reason DeadlineExceeded: no delete right is needed.
            "activeDeadlineSeconds": cluster.train_timeout_s,
            "trainer": {
                "image": cluster.image,
                "numNodes": cluster.train_nodes,
                "numProcPerNode": max(gpus, 1),
                "command": ["/bin/sh", "-c", _launch_script(cluster.train_nodes, gpus), "expo-train"],
                "args": worker_args(cfg, arm, data_path, model_path, output_path, explanations_path,
                                    checkpoint_path),
                "env": _env(cfg, run_id),
                "resourcesPerNode": _resources(cfg),
            },
            "runtimePatches": [_workspace_patch(cluster.workspace_pvc, labels)],
        },
    }


def _launch_script(nodes: int, gpus: int) -> str:
    procs = nodes * max(gpus, 1)  # accelerate counts processes over all machines
    if gpus == 0:
        device_flag = "--cpu "
    elif procs > 1:
        device_flag = "--multi_gpu "
    else:
        device_flag = ""
    return _LAUNCH.format(nodes=nodes, procs=procs, device_flag=device_flag)


def worker_args(
    cfg: ExpoConfig, arm: str, data: str, model: str, output: str, explanations: str | None,
    checkpoints: str | None = None,
) -> list[str]:
    """The arguments of `python -m expo.cluster.worker` (see worker.py) for one arm."""
    # The resolved config travels as JSON in the object itself: visible with `kubectl get -o yaml`,
    # and it holds no credential (those come from the secret in _env).
    args = [
        "--config-json",
        json.dumps(given_dict(cfg), sort_keys=True, separators=(",", ":")),
        "--arm",
        arm,
        "--data",
        data,
        "--model",
        model,
        "--output",
        output,
    ]
    if explanations is not None:
        args += ["--explanations", explanations]
    if checkpoints is not None:
        args += ["--checkpoint-dir", checkpoints]
    return args


def _env(cfg: ExpoConfig, run_id: str | None = None) -> list[dict[str, Any]]:
    secret = cfg.cluster.mlflow_secret

    def from_named(env: str, name: str, key: str) -> dict[str, Any]:
        return {"name": env, "valueFrom": {"secretKeyRef": {"name": name, "key": key, "optional": True}}}

    def from_secret(env: str, key: str) -> dict[str, Any]:
        return from_named(env, secret, key)

    from expo.tracking import resolve_workspace

    # The step's own MLflow workspace (the platform's, where it gave one) wins over the secret's: last wins.
    workspace = resolve_workspace(cfg.tracking)
    return [from_secret(env, key) for key, env in MLFLOW_SECRET_KEYS.items()] + (
        [{"name": "MLFLOW_WORKSPACE", "value": workspace}] if workspace else []) + [
        {"name": WORKSPACE_ENV, "value": MOUNT_PATH},
        {"name": "HF_HOME", "value": f"{MOUNT_PATH}/.cache/huggingface"},  # shared, writable model cache
    ] + ([{"name": RUN_ID_ENV, "value": run_id}] if run_id else []) + (
        [from_named("HF_TOKEN", cfg.cluster.hf_token_secret, "token")] if cfg.cluster.hf_token_secret else [])


def _resources(cfg: ExpoConfig) -> dict[str, Any]:
    cluster = cfg.cluster
    amounts: dict[str, Any] = {"cpu": cluster.train_cpu, "memory": cluster.train_memory}
    if cluster.gpus_train > 0:
        amounts[cluster.accelerator_type] = str(cluster.gpus_train)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _workspace_patch(pvc: str, labels: dict[str, str]) -> dict[str, Any]:
    pod_labels = {**labels, MLFLOW_CLIENT_LABEL: "true"}
    pod = {
        "metadata": {"labels": pod_labels},
        "spec": {
            "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": pvc}}],
            "containers": [
                {"name": NODE_CONTAINER, "volumeMounts": [{"name": "workspace", "mountPath": MOUNT_PATH}]}
            ],
        },
    }
    job = {"name": NODE_CONTAINER, "template": {"spec": {"template": pod}}}
    return {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}},
    }


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(
            f"TrainJob name {name!r}: must be a DNS label (lower-case letters, digits and '-', "
            "starting with a letter, at most 63 characters)"
        )


def _check_in_workspace(what: str, path: str) -> None:
    p = PurePosixPath(path)
    if (
        not p.is_absolute()
        or ".." in p.parts
        or not p.is_relative_to(MOUNT_PATH)
        or p == PurePosixPath(MOUNT_PATH)
    ):
        raise ConfigError(
            f"TrainJob {what} {path!r}: must be a folder under {MOUNT_PATH} (the shared volume "
            "every training node mounts)"
        )
