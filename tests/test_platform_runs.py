"""The platform's own MLflow runs, a workspace and a bearer token, against a real `mlflow server`.

`expo run` with `tracking.platform_runs: true` creates the runs as the KFP backend's MLflow integration
does (a parent, one nested run per task, MLFLOW_RUN_ID and its siblings in each task's environment);
the steps must then log into those runs and create none. The server runs with `--enable-workspaces`
(MLflow 3.10+) behind a proxy that admits only requests bearing the token, as an OAuth proxy would, so
every request of the whole kfp.local run must carry the token and name the workspace.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bearer_proxy import bearer_proxy
from tests.mlflow_server import _launch, _stop, _wait_healthy

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "expo" / "toy" / "smoke.yaml"
TOKEN = "s3cret-token"
WORKSPACE = "team-a"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def workspace_server(tmp_path_factory):
    """A real MLflow server with workspaces on, the workspace created (the platform admin's part),
    and the token-checking proxy in front of it; yields (proxy, server URL)."""
    import mlflow

    proc, url, log = _launch(tmp_path_factory.mktemp("mlflow-workspaces"), "--enable-workspaces")
    try:
        _wait_healthy(url, proc, log)
        mlflow.MlflowClient(url).create_workspace(WORKSPACE)
        with bearer_proxy(url, TOKEN) as proxy:
            yield proxy, url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def platform_run(workspace_server, tmp_path_factory):
    proxy, _ = workspace_server
    run_dir = tmp_path_factory.mktemp("platform") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_"))}
    env.update(MLFLOW_TRACKING_URI=proxy.url, MLFLOW_TRACKING_TOKEN=TOKEN)
    proc = subprocess.run([sys.executable, "-m", "expo", "run", "--config", str(SMOKE), "--output", str(run_dir),
                           "--set", "tracking.platform_runs=true", "--set", f"tracking.workspace={WORKSPACE}",
                           "--set", "train.arms=[grpo]", "--set", "model.warmup_steps=20"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def client(workspace_server, monkeypatch):
    import mlflow

    proxy, _ = workspace_server
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    mlflow.set_workspace(WORKSPACE)
    yield mlflow.MlflowClient(tracking_uri=proxy.url, registry_uri=proxy.url)
    mlflow.set_workspace(None)


def test_one_run_per_task_under_the_platform_parent_holding_what_stages_log(platform_run, client):
    run_dir, summary = platform_run
    experiment = client.get_experiment_by_name("expo")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    parent = client.get_run(summary["mlflow"]["run_id"])
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [parent.info.run_id]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1  # nothing beside the platform's tree
    tasks = sorted(s["task"] for s in summary["stages"])
    assert sorted(r.info.run_name for r in children) == tasks  # exactly one run per task, named by it
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in children)
    # The platform's parent carries our tags, parameters and headline metrics ...
    assert parent.data.tags["expo.role"] == "pipeline" and parent.data.tags["kfp.status"] == "SUCCEEDED"
    assert parent.data.params["train.steps"] == "2" and "grpo/hardest_level_pass_at_1" in parent.data.metrics
    # ... and each task's run what the stage's own nested run holds.
    stage = {(r.data.tags["expo.stage"], r.data.tags.get("expo.arm")): r for r in children}
    data = stage[("prepare_data", None)]
    assert {i.tags[0].value for i in data.inputs.dataset_inputs} == {"train", "eval"}
    train = stage[("train", "grpo")]
    assert train.data.params["train.steps"] == "2"
    assert sorted(m.step for m in client.get_metric_history(train.info.run_id, "loss")) == [1, 2]
    assert "system/cpu_utilization_percentage" in train.data.metrics
    evaluation = stage[("evaluate", "grpo")]
    assert [f.path for f in client.list_artifacts(evaluation.info.run_id, "evaluation")] == ["evaluation/grpo"]
    register = stage[("register", "grpo")]
    version = client.get_model_version("expo-smoke", summary["registered_model_uri"].rsplit("/", 1)[1])
    assert version.run_id == register.info.run_id
    assert summary["mlflow"]["experiment"] == "expo"


def test_every_request_bore_the_token_and_named_the_workspace(platform_run, workspace_server, client):
    proxy, server = workspace_server
    assert proxy.seen["refused"] == 0 and proxy.seen["accepted"] > 50
    assert set(proxy.workspaces) == {WORKSPACE}
    import mlflow

    mlflow.set_workspace("default")  # the runs live in the workspace, not beside it
    assert mlflow.MlflowClient(server).get_experiment_by_name("expo") is None


def test_a_missing_token_is_one_clear_line(workspace_server, tmp_path):
    proxy, _ = workspace_server
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_"))}
    env["MLFLOW_TRACKING_URI"] = proxy.url
    proc = subprocess.run([sys.executable, "-m", "expo", "models", "expo-smoke"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "UNAUTHENTICATED: bearer token required" in lines[0], proc.stderr
