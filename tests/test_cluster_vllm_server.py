"""expo.cluster.vllm_server: the rollout server Job of server mode, its stop protocol, and its lifecycle
against a FAKE Kubernetes API (an HTTP server on 127.0.0.1 answering the Job and pod paths; there is
no cluster here). The Job object is validated against Kubernetes' own schema (strict)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from expo.cluster.vllm_server import (
    JOB_LABEL,
    STOP_FILE,
    VllmServerError,
    _wrapper,
    build_server_job,
    needs_server,
    rollout_server,
    server_url,
)
from expo.config import ExpoConfig
from expo.errors import ConfigError
from tests.fake_http import JsonHandler, LocalServer

NS = "expo"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
PODS = f"/api/v1/namespaces/{NS}/pods"


def server_cfg(**cluster) -> ExpoConfig:
    cfg = ExpoConfig()
    cfg.generation.backend, cfg.generation.vllm_mode = "vllm", "server"
    cfg.generation.max_prompt_tokens, cfg.generation.max_new_tokens = 512, 256
    cfg.generation.vllm_memory = 0.85
    for key, value in cluster.items():
        setattr(cfg.cluster, key, value)
    return cfg


@pytest.mark.parametrize("backend,mode,url,expect", [
    ("vllm", "server", "", True),
    ("auto", "server", "", True),  # auto resolves to vllm on the GPU nodes
    ("vllm", "server", "http://my-vllm:8000", False),  # the user's own server
    ("vllm", "colocate", "", False),
    ("hf", "server", "", False),
])
def test_needs_server(backend, mode, url, expect):
    cfg = ExpoConfig()
    cfg.generation.backend, cfg.generation.vllm_mode, cfg.generation.vllm_server_url = backend, mode, url
    assert needs_server(cfg) is expect


def test_the_server_job_serves_the_model_for_trl_and_ends_itself():
    cfg = server_cfg(gpus_vllm=4, kueue_queue="gpu-queue", workspace_pvc="ws", train_timeout_s=7200)
    job = build_server_job("expo-vllm-1a2b3c4d", cfg, "exp-grpo", "/workspace/vllm-servers/x/model",
                           "/workspace/vllm-servers/x/stop", NS)
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 7200)
    assert spec["ttlSecondsAfterFinished"] > 0
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    script = container["command"][2]
    assert script.startswith("vllm serve /workspace/vllm-servers/x/model --host 0.0.0.0 --port 8000 "
                             "--tensor-parallel-size 4 --gpu-memory-utilization 0.85 --max-model-len 768 ")
    assert """--weight-transfer-config '{"backend": "nccl"}'""" in script  # TRL pushes weights over NCCL
    assert "--logprobs-mode processed_logprobs" in script  # TRL's importance-sampling correction
    assert "/workspace/vllm-servers/x/stop" in script
    assert {"name": "VLLM_SERVER_DEV_MODE", "value": "1"} in container["env"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "ws"}
    assert "expo.pipeline/mlflow-client" not in spec["template"]["metadata"]["labels"]

    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(job, "1.37.0", strict=True)


@pytest.mark.parametrize("model,stop", [
    ("/data/model", "/workspace/s/stop"),  # the server pod sees only the workspace volume
    ("/workspace/s/../../etc", "/workspace/s/stop"),
    ("/workspace/s/model", "stop"),
])
def test_paths_off_the_workspace_are_refused(model, stop):
    with pytest.raises(ConfigError, match="must lie under /workspace"):
        build_server_job("expo-vllm-1", server_cfg(), "grpo", model, stop, NS)


def test_the_wrapper_stops_vllm_on_the_stop_file_and_passes_a_crash_through(tmp_path):
    """The pod's shell script, run for real with stand-ins for vLLM: a server that runs until stopped
    ends with 0 once the stop file appears; a server that dies ends with its own status."""
    stop = tmp_path / "stop"
    runs = subprocess.Popen(["/bin/sh", "-c", _wrapper(["sleep", "600"], str(stop), poll_s=0.2)])
    time.sleep(1)
    assert runs.poll() is None  # serving
    stop.write_text("done\n")
    assert runs.wait(timeout=30) == 0
    crash = subprocess.run(["/bin/sh", "-c", _wrapper(["sh", "-c", "exit 3"], str(tmp_path / "never"),
                                                      poll_s=0.2)], timeout=30)
    assert crash.returncode == 3


def _pod(phase: str, ready: bool, ip: str | None = "10.1.2.3"):
    from kubernetes.client import V1ObjectMeta, V1Pod, V1PodCondition, V1PodStatus

    conditions = [V1PodCondition(type="Ready", status="True" if ready else "False")]
    return V1Pod(metadata=V1ObjectMeta(name="expo-vllm-1-abcde", namespace=NS),
                 status=V1PodStatus(phase=phase, conditions=conditions, pod_ip=ip))


def test_server_url_once_ready_and_an_ended_pod_fails():
    pytest.importorskip("kubernetes")
    assert server_url(_pod("Pending", False, None)) is None
    assert server_url(_pod("Running", False)) is None  # loading the model: /health not answering yet
    assert server_url(_pod("Running", True)) == "http://10.1.2.3:8000"
    with pytest.raises(VllmServerError, match="ended \\(Failed\\) before it was ready"):
        server_url(_pod("Failed", False))


class FakeKubeAPI(LocalServer):
    """A FAKE Kubernetes API (not a cluster): creates Jobs, lists their pod, Ready from the Nth look."""

    def __init__(self, ready_after: int, create_status: int = 201):
        super().__init__(_Handler)
        self.ready_after, self.create_status = ready_after, create_status
        self.jobs: dict[str, dict] = {}
        self.looks = 0
        self.selectors: list[str] = []


class _Handler(JsonHandler):
    server: FakeKubeAPI

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if urlparse(self.path).path != JOBS:
            return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        if self.server.create_status != 201:
            return self._reply(self.server.create_status,
                               {"kind": "Status", "code": 403, "reason": "Forbidden"})
        self.server.jobs[body["metadata"]["name"]] = body
        self._reply(201, body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path != PODS:
            return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        selector = parse_qs(url.query)["labelSelector"][0]
        self.server.selectors.append(selector)
        self.server.looks += 1
        ready = self.server.looks >= self.server.ready_after
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        pod = {"metadata": {"name": selector.split("=")[1] + "-abcde", "namespace": NS},
               "status": {"phase": "Running", "conditions": conditions, "podIP": "10.1.2.3"}}
        self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]})


def _model(tmp_path: Path) -> Path:
    model = tmp_path / "pod" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    return model


def test_rollout_server_starts_waits_hands_the_url_and_stops(tmp_path):
    pytest.importorskip("kubernetes")
    workspace = tmp_path / "workspace"
    cfg = server_cfg()
    with FakeKubeAPI(ready_after=3) as api:
        with rollout_server(cfg, "exp-grpo", _model(tmp_path), api_client=api.client(), namespace=NS,
                            workspace=workspace, poll_s=0.01) as served:
            assert served.generation.vllm_server_url == "http://10.1.2.3:8000"
            assert cfg.generation.vllm_server_url == ""  # the caller's config is left as it was
            (name, job), = api.jobs.items()
            assert api.selectors[-1] == f"{JOB_LABEL}={name}" and api.looks == 3
            folder = workspace / "vllm-servers" / name
            assert (folder / "model" / "config.json").is_file()  # the model, where the pod sees it
            assert not (folder / STOP_FILE).exists()
        assert (folder / STOP_FILE).is_file()  # the pod stops vLLM and exits

    with FakeKubeAPI(ready_after=1) as api, pytest.raises(RuntimeError, match="training failed"):
        with rollout_server(cfg, "grpo", _model(tmp_path / "b"), api_client=api.client(), namespace=NS,
                            workspace=workspace, poll_s=0.01):
            raise RuntimeError("training failed")
    (name,) = api.jobs
    assert (workspace / "vllm-servers" / name / STOP_FILE).is_file()  # stopped however the arm ends


def test_rollout_server_refusals_and_timeouts_are_one_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("kubernetes")
    cfg = server_cfg()
    refused = pytest.raises(VllmServerError, match="jobs create")
    with FakeKubeAPI(ready_after=1, create_status=403) as api, refused:
        with rollout_server(cfg, "grpo", _model(tmp_path), api_client=api.client(), namespace=NS,
                            workspace=tmp_path / "ws"):
            pass
    with FakeKubeAPI(ready_after=10**9) as api, pytest.raises(VllmServerError, match="not ready after 0 s"):
        with rollout_server(cfg, "grpo", _model(tmp_path / "b"), api_client=api.client(), namespace=NS,
                            workspace=tmp_path / "ws", ready_timeout_s=0.05, poll_s=0.01):
            pass
    # No cluster at all (no in-cluster account, no kubeconfig): the key to set instead.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="generation.vllm_server_url"):
        with rollout_server(cfg, "grpo", _model(tmp_path / "c"), workspace=tmp_path / "ws"):
            pass


def test_no_server_wanted_leaves_the_config_alone(tmp_path):
    cfg = ExpoConfig()  # colocate, or the transformers backend
    with rollout_server(cfg, "grpo", tmp_path) as same:
        assert same is cfg
