"""expo.cluster.launch against FakeKubeAPI: a FAKE Kubernetes API server at the HTTP layer.

The real `kubernetes` Python client talks HTTP to a tiny server on 127.0.0.1 that answers the exact REST
paths a cluster would (create and get a TrainJob, list pods by label, follow a pod's log) and moves the
job through a scripted lifecycle. There is no Kubernetes here; this tests our requests and our reading
of the answers, not the Trainer controller.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

kubernetes = pytest.importorskip("kubernetes")

from expo.cluster import TrainJobError, build_trainjob, job_state, launch_and_wait  # noqa: E402
from expo.config import load_config  # noqa: E402
from tests.fake_http import JsonHandler, LocalServer  # noqa: E402

NS = "expo"
JOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
W = "/workspace/trainjobs/j1"

CREATED: dict = {}
RUNNING = {"jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0, "failed": 0}]}
COMPLETE = {
    "conditions": [
        {"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "jobset completed"}
    ],
    "jobsStatus": [{"name": "node", "succeeded": 2}],
}
FAILED = {
    "conditions": [
        {
            "type": "Failed",
            "status": "True",
            "reason": "FailedJobs",
            "message": "jobset failed: node-0 exited with code 137 (OOMKilled)",
        }
    ]
}
SUSPENDED = {"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended", "message": ""}]}


class FakeKubeAPI(LocalServer):
    """A FAKE Kubernetes API server (not a cluster): answers the TrainJob, pod-list and pod-log paths.

    `statuses` is the sequence of TrainJob `status` objects returned by successive GETs (the last one
    repeats); `create_error` makes the POST answer that HTTP status instead of 201.
    """

    def __init__(self, statuses: list[dict], log: str = "", create_error: int | None = None, on_create=None):
        super().__init__(_Handler)
        self.statuses, self.log_text, self.create_error = list(statuses), log, create_error
        self.on_create = on_create  # stands in for the training nodes: called with the created object
        self.jobs: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, query)
        self.gets = 0

    def status_now(self) -> dict:
        status = self.statuses[min(self.gets, len(self.statuses) - 1)]
        self.gets += 1
        return status


class _Handler(JsonHandler):
    server: FakeKubeAPI

    def _status(self, code: int, reason: str, message: str) -> None:
        self._reply(
            code,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": reason,
                "message": message,
                "code": code,
            },
        )

    def do_POST(self):
        url = urlparse(self.path)
        self.server.requests.append(("POST", url.path, parse_qs(url.query)))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if url.path != JOBS:
            return self._status(404, "NotFound", f"no route {url.path}")
        if self.server.create_error:
            code = self.server.create_error
            return self._status(
                code,
                {403: "Forbidden", 409: "AlreadyExists"}.get(code, "Invalid"),
                f'trainjobs.trainer.kubeflow.org "{body["metadata"]["name"]}" refused',
            )
        self.server.jobs[body["metadata"]["name"]] = body
        if self.server.on_create:
            self.server.on_create(body)
        self._reply(201, body)

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        self.server.requests.append(("GET", url.path, query))
        parts = url.path.strip("/").split("/")
        if url.path.startswith(JOBS + "/"):
            name = parts[-1]
            if name not in self.server.jobs:
                return self._status(404, "NotFound", f'trainjobs "{name}" not found')
            return self._reply(200, {**self.server.jobs[name], "status": self.server.status_now()})
        if url.path == f"/api/v1/namespaces/{NS}/pods":
            return self._reply(
                200,
                {
                    "kind": "PodList",
                    "apiVersion": "v1",
                    "metadata": {},
                    "items": self._pods(query.get("labelSelector", [""])[0]),
                },
            )
        if url.path.startswith(f"/api/v1/namespaces/{NS}/pods/") and parts[-1] == "log":
            return self._reply(200, self.server.log_text.encode(), "text/plain")
        self._status(404, "NotFound", f"no route {url.path}")

    def _pods(self, selector: str) -> list[dict]:
        labels = dict(term.split("=", 1) for term in selector.split(",") if term)
        name = labels.get("jobset.sigs.k8s.io/jobset-name")
        if name not in self.server.jobs or self.server.gets == 0:
            return []
        return [
            {
                "metadata": {"name": f"{name}-node-0-0", "namespace": NS, "labels": labels},
                "status": {"phase": "Running"},
            }
        ]


def _job(name="expo-grpo-1a2b3c4d"):
    cfg = load_config(None, ["cluster.train_nodes=2", "cluster.gpus_train=8"])
    return build_trainjob(name, cfg, "grpo", f"{W}/data", f"{W}/model", f"{W}/output", NS)


def test_lifecycle_created_running_complete_with_logs():
    lines: list[str] = []
    with FakeKubeAPI(
        [CREATED, RUNNING, RUNNING, COMPLETE], log="step 1 loss 0.5\nstep 2 loss 0.4\ndone"
    ) as api:
        result = launch_and_wait(api.client(), _job(), timeout_s=30, poll_s=0.01, log_sink=lines.append)
        posts = [r for r in api.requests if r[0] == "POST"]
        pod_lists = [r for r in api.requests if r[1].endswith("/pods")]
        logs = [r for r in api.requests if r[1].endswith("/log")]
    assert result.phase == "Complete" and result.phases_seen == ["Created", "Running", "Complete"]
    assert posts == [("POST", JOBS, {})]
    assert api.jobs["expo-grpo-1a2b3c4d"]["spec"]["trainer"]["numNodes"] == 2  # what we sent arrived whole
    selector = pod_lists[0][2]["labelSelector"][0]
    assert selector == (
        "jobset.sigs.k8s.io/jobset-name=expo-grpo-1a2b3c4d,"
        "jobset.sigs.k8s.io/replicatedjob-name=node,batch.kubernetes.io/job-completion-index=0"
    )
    assert logs and logs[0][1] == f"/api/v1/namespaces/{NS}/pods/expo-grpo-1a2b3c4d-node-0-0/log"
    assert logs[0][2]["container"] == ["node"] and logs[0][2]["follow"] == ["True"]  # Go ParseBool accepts it
    assert len(logs) == 1  # followed once, not re-read at every poll
    assert lines == ["step 1 loss 0.5", "step 2 loss 0.4", "done"]


def test_failed_job_raises_with_name_and_reason():
    with FakeKubeAPI([CREATED, RUNNING, FAILED], log="Traceback ...\nCUDA out of memory") as api:
        lines: list[str] = []
        with pytest.raises(TrainJobError) as err:
            launch_and_wait(api.client(), _job(), timeout_s=30, poll_s=0.01, log_sink=lines.append)
    text = str(err.value)
    assert "expo/expo-grpo-1a2b3c4d" in text and "FailedJobs" in text and "OOMKilled" in text
    assert "CUDA out of memory" in lines  # the log was streamed before the failure was reported


def test_suspended_then_resumed_job_waits_and_succeeds():
    with FakeKubeAPI([SUSPENDED, SUSPENDED, RUNNING, COMPLETE]) as api:
        result = launch_and_wait(api.client(), _job(), timeout_s=30, poll_s=0.01, log_sink=None)
    assert result.phases_seen == ["Suspended", "Running", "Complete"]


def test_timeout_names_the_job_and_its_state():
    with FakeKubeAPI([CREATED]) as api:
        with pytest.raises(TrainJobError, match=r"expo/expo-grpo-1a2b3c4d: still Created after 0 s"):
            launch_and_wait(api.client(), _job(), timeout_s=0.05, poll_s=0.01, log_sink=None)


@pytest.mark.parametrize(
    "code, needle",
    [
        (403, "forbidden (the pipeline's ServiceAccount needs the expo-pipeline Role"),
        (409, "already exists"),
        (422, "invalid object"),
    ],
)
def test_create_refused_is_one_clear_error(code, needle):
    with FakeKubeAPI([CREATED], create_error=code) as api:
        with pytest.raises(TrainJobError) as err:
            launch_and_wait(api.client(), _job(), timeout_s=5, poll_s=0.01, log_sink=None)
    assert needle in str(err.value) and "expo-grpo-1a2b3c4d" in str(err.value)
    assert "refused" in str(err.value)  # the server's own message is kept


@pytest.mark.parametrize(
    "status, phase, reason",
    [
        ({}, "Created", ""),
        (RUNNING, "Running", ""),
        (COMPLETE, "Complete", "JobsCompleted"),
        (FAILED, "Failed", "FailedJobs"),
        # A condition with status False does not count; Failed wins over Complete if both were True.
        ({"conditions": [{"type": "Failed", "status": "False"}]}, "Created", ""),
        (
            {
                "conditions": [
                    {"type": "Complete", "status": "True"},
                    {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"},
                ]
            },
            "Failed",
            "DeadlineExceeded",
        ),
    ],
)
def test_job_state_reads_conditions_then_progress(status, phase, reason):
    state = job_state({"status": status})
    assert (state.phase, state.reason) == (phase, reason)


def test_launch_trainjob_stages_inputs_and_fetches_the_model(tmp_path):
    """submit_trainjob.launch_trainjob: inputs copied onto the workspace, the job's output copied back."""
    from expo.cluster import launch_trainjob

    workspace, task = tmp_path / "workspace", tmp_path / "task"
    for name in ("data", "model", "explanations"):
        (task / name).mkdir(parents=True)
        (task / name / f"{name}.txt").write_text(name)

    def train(body):  # what the nodes would do: read the staged data, write the model
        args = body["spec"]["trainer"]["args"]
        data, output = args[args.index("--data") + 1], args[args.index("--output") + 1]
        assert (Path(data.replace("/workspace", str(workspace))) / "data.txt").read_text() == "data"
        out = Path(output.replace("/workspace", str(workspace)))
        (out / "model").mkdir(parents=True)
        (out / "model" / "model.safetensors").write_text("weights")

    cfg = load_config(None, ["cluster.train_nodes=2"])
    with FakeKubeAPI([RUNNING, COMPLETE], on_create=train) as api:
        result = launch_trainjob(
            cfg,
            "exp-grpo",
            task / "data",
            task / "model",
            task / "explanations",
            task / "trained",
            api_client=api.client(),
            namespace=NS,
            workspace=workspace,
            poll_s=0.01,
            log_sink=None,
        )
    assert result.phase == "Complete" and result.name.startswith("expo-exp-grpo-")
    assert (task / "trained" / "model" / "model.safetensors").read_text() == "weights"
    staged = workspace / "trainjobs" / result.name
    assert sorted(p.name for p in staged.iterdir()) == ["data", "explanations", "model", "output"]


def test_launch_refuses_a_batch_the_jobs_processes_cannot_split(tmp_path):
    """2 nodes x 8 GPUs = 16 processes; 4 prompts per step cannot give each whole groups: one clear
    error before anything is staged or created (not 16 tracebacks in the job's pods)."""
    from expo.cluster import launch_trainjob
    from expo.errors import ConfigError

    cfg = load_config(None, ["cluster.train_nodes=2", "cluster.gpus_train=8", "train.prompts_per_step=4"])
    with pytest.raises(ConfigError, match="train.prompts_per_step"):
        launch_trainjob(cfg, "grpo", tmp_path / "d", tmp_path / "m", None, tmp_path / "o",
                        api_client=object(), namespace=NS, workspace=tmp_path / "ws", log_sink=None)
    assert not (tmp_path / "ws").exists()


def test_job_names_are_dns_labels_and_unique():
    from expo.cluster import job_name

    assert job_name("exp-grpo", "1a2b3c4d") == "expo-exp-grpo-1a2b3c4d"
    assert job_name("Weird Arm_!").startswith("expo-weird-arm-")
    assert job_name("grpo") != job_name("grpo")
