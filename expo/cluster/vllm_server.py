"""A vLLM server for one arm's training rollouts (`generation.vllm_mode: server`), on GPUs of its own.

Why: in server mode TRL generates rollouts on a `vllm serve` process and pushes the policy's weights
into it over NCCL after each optimizer step (vLLM's weight-transfer engine), so the training GPUs hold
only policy, optimizer and activations and the engine's KV cache gets whole GPUs. With
`generation.vllm_server_url` set, the user's own server is used and nothing is started; left empty on a
cluster, the train step starts one per arm, here, and ends it when the arm ends.

How: a batch/v1 Job with one pod (`cluster.gpus_vllm` GPUs, tensor parallel over them) serves the arm's
starting model from the workspace PVC. The train step waits until the pod is Ready (its readiness probe
is vLLM's /health) and hands `http://<pod IP>:8000` to the trainer: the pod IP, not a Service, because
NCCL's rendezvous connects pod to pod, and it needs no right beyond the pods get/list the TrainJob log
already uses. When the arm ends, however it ends, the step writes a stop file on the workspace; the
pod's wrapper sees it, stops vLLM and exits 0, and the Job controller removes the finished Job after
`ttlSecondsAfterFinished`. `activeDeadlineSeconds` bounds a server whose train step died without
writing the file. So the pipeline's Role gains jobs create and still deletes nothing.

    with rollout_server(cfg, "exp-grpo", model_dir) as cfg:   # cfg with vllm_server_url filled in
        train_in_pod(arm, cfg, ...)                            # or launch_trainjob(cfg, arm, ...)
"""

from __future__ import annotations

import contextlib
import copy
import json
import shlex
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from expo.cluster.trainjob import KUEUE_LABEL
from expo.config import ExpoConfig
from expo.errors import ConfigError, ExpoError
from expo.workspace import MOUNT_PATH

PORT = 8000  # vLLM's HTTP API; the NCCL group (TRL's vllm_group_port, 51216) is pod to pod as well
STOP_FILE = "stop"  # written by the train step when the arm ends; the server pod then exits
JOB_LABEL = "batch.kubernetes.io/job-name"  # the Job controller's label on its pods
FINISHED_TTL_S = 3600  # the Job controller deletes a finished server Job after this


class VllmServerError(ExpoError):
    """The rollout server could not be started, or did not become ready in time."""


def needs_server(cfg: ExpoConfig) -> bool:
    """Whether this arm's train step must start the rollout server itself.

    >>> from expo.config import ExpoConfig
    >>> cfg = ExpoConfig()
    >>> cfg.generation.backend, cfg.generation.vllm_mode = "vllm", "server"
    >>> needs_server(cfg)
    True
    >>> cfg.generation.vllm_server_url = "http://my-vllm:8000"
    >>> needs_server(cfg)
    False
    """
    gen = cfg.generation
    return gen.backend != "hf" and gen.vllm_mode == "server" and not gen.vllm_server_url.strip()


def server_command(cfg: ExpoConfig, model_path: str) -> list[str]:
    """`vllm serve` with what TRL's server mode needs (as `trl vllm-serve` 1.16 builds it): the
    weight-transfer engine and its development endpoints, logprobs after temperature scaling."""
    from expo.generation.trl_rollouts import engine_length

    return [
        "vllm", "serve", model_path,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--tensor-parallel-size", str(cfg.cluster.gpus_vllm),
        "--gpu-memory-utilization", str(cfg.generation.vllm_memory),
        "--max-model-len", str(engine_length(cfg)),
        "--dtype", "auto",
        "--weight-transfer-config", json.dumps({"backend": "nccl"}),
        "--logprobs-mode", "processed_logprobs",
        "--max-logprobs", "-1",
    ]


def _wrapper(command: list[str], stop_file: str, poll_s: float = 5.0) -> str:
    """Run vLLM until the stop file appears (exit 0) or vLLM itself exits (its status)."""
    return (
        f"{shlex.join(command)} & pid=$!; "
        f'while [ ! -f {shlex.quote(stop_file)} ] && kill -0 "$pid" 2>/dev/null; do sleep {poll_s:g}; done; '
        f'if [ -f {shlex.quote(stop_file)} ]; then kill "$pid"; wait "$pid"; exit 0; fi; '
        'wait "$pid"'
    )


def build_server_job(name: str, cfg: ExpoConfig, arm: str, model_path: str, stop_path: str,
                     namespace: str) -> dict[str, Any]:
    """The batch/v1 Job (a dict for BatchV1Api) that serves `model_path` (under /workspace) for `arm`."""
    for what, path in (("model_path", model_path), ("stop_path", stop_path)):
        p = PurePosixPath(path)
        if not p.is_absolute() or ".." in p.parts or not p.is_relative_to(MOUNT_PATH):
            raise ConfigError(f"vLLM server {what} {path!r}: must lie under {MOUNT_PATH} (the shared volume)")
    cluster = cfg.cluster
    labels = {"app.kubernetes.io/part-of": "expo-pipeline", "app.kubernetes.io/component": "vllm-server",
              "expo.pipeline/arm": arm}
    gpus = {cluster.accelerator_type: str(cluster.gpus_vllm)}
    container = {
        "name": "vllm",
        "image": cluster.image,
        "command": ["/bin/sh", "-c", _wrapper(server_command(cfg, model_path), stop_path)],
        # TRL's weight sync goes through vLLM's development endpoints (/init_weight_transfer_engine).
        "env": [{"name": "VLLM_SERVER_DEV_MODE", "value": "1"},
                {"name": "HF_HOME", "value": f"{MOUNT_PATH}/.cache/huggingface"}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 10,
                           "failureThreshold": 3},
        "resources": {"requests": dict(gpus), "limits": dict(gpus)},
        "volumeMounts": [{"name": "workspace", "mountPath": MOUNT_PATH},
                         {"name": "dshm", "mountPath": "/dev/shm"}],  # tensor-parallel workers share memory
    }
    pod_labels = dict(labels)  # no MLflow client label: the server never talks to MLflow
    if cluster.kueue_queue:  # Kueue admits the server's GPUs against the queue's quota, like a TrainJob
        labels = {**labels, KUEUE_LABEL: cluster.kueue_queue}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,  # a crashed server fails the arm's wait with its reason, not a silent retry
            "activeDeadlineSeconds": cluster.train_timeout_s,
            "ttlSecondsAfterFinished": FINISHED_TTL_S,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {"name": "workspace", "persistentVolumeClaim": {"claimName": cluster.workspace_pvc}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
        },
    }


def server_url(pod: Any) -> str | None:
    """`http://<pod IP>:8000` once the pod is Ready; None before. A pod that ended raises."""
    status = pod.status
    if status is None:
        return None
    if status.phase in ("Failed", "Succeeded"):
        raise VllmServerError(f"vLLM server pod {pod.metadata.name} ended ({status.phase}) before it was "
                              f"ready; see `kubectl logs -n {pod.metadata.namespace} {pod.metadata.name}`")
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    return f"http://{status.pod_ip}:{PORT}" if ready and status.pod_ip else None


def wait_ready(core: Any, name: str, namespace: str, timeout_s: float, poll_s: float) -> str:
    """Poll the server Job's pod until it is Ready; return its URL."""
    started = time.monotonic()
    while True:
        pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={name}").items
        for pod in pods:
            url = server_url(pod)
            if url:
                return url
        if time.monotonic() - started > timeout_s:
            raise VllmServerError(
                f"vLLM server {namespace}/{name}: not ready after {timeout_s:.0f} s (loading the model, "
                f"or no free GPU: `kubectl describe pod -n {namespace} -l {JOB_LABEL}={name}`)")
        time.sleep(poll_s)


@contextlib.contextmanager
def rollout_server(cfg: ExpoConfig, arm: str, model_dir: str | Path, *, api_client: Any = None,
                   namespace: str | None = None, workspace: str | Path = MOUNT_PATH,
                   ready_timeout_s: float = 1800.0, poll_s: float = 10.0) -> Iterator[ExpoConfig]:
    """`cfg` for the arm's training: unchanged unless it needs a server (needs_server); then a copy
    whose `generation.vllm_server_url` points at a server started for it, stopped when the block ends.

    The model folder is copied onto the workspace unless it already is there: the server's pod sees
    nothing else. Outside a cluster (no Kubernetes API) this fails with the key to set instead.
    """
    if not needs_server(cfg):
        yield cfg
        return
    from kubernetes import client  # here: only the cluster path needs the client

    from expo.cluster.submit_trainjob import _api_client, _own_namespace, in_pods, stage_inputs

    try:
        api_client = api_client or _api_client()
        namespace = namespace or _own_namespace()
    except Exception as exc:  # noqa: BLE001 - no cluster: say which setting runs server mode anyway
        raise ConfigError(
            "generation.vllm_server_url: empty with vllm_mode 'server', and no Kubernetes API to start a "
            f"server on ({exc}); give the URL of a running `trl vllm-serve`, or use vllm_mode 'colocate'"
        ) from None
    name = f"expo-vllm-{uuid.uuid4().hex[:8]}"
    workspace = Path(workspace)
    folder = workspace / "vllm-servers" / name
    folder.mkdir(parents=True, exist_ok=True)
    model = stage_inputs(workspace, folder, {"model": model_dir})["model"]
    stop = folder / STOP_FILE
    job = build_server_job(name, cfg, arm, in_pods(model, workspace), in_pods(stop, workspace), namespace)
    try:
        client.BatchV1Api(api_client).create_namespaced_job(namespace, job)
    except client.ApiException as exc:
        raise VllmServerError(
            f"vLLM server {namespace}/{name}: the API refused to create its Job: HTTP {exc.status} "
            f"{exc.reason} (the pipeline's Role needs jobs create)") from None
    try:
        url = wait_ready(client.CoreV1Api(api_client), name, namespace, ready_timeout_s, poll_s)
        served = copy.deepcopy(cfg)
        served.generation.vllm_server_url = url
        yield served
    finally:
        stop.write_text("the arm's train step ended\n")  # the pod stops vLLM and exits 0
