"""expo.tracking: pipeline keys, redaction, and find-or-create lineage against the embedded SQLite store
and a real `mlflow server` (fixtures in tests/mlflow_server.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from expo import tracking as T
from expo.config import TrackingConfig
from expo.errors import TrackingError
from expo.io import write_jsonl

pytestmark = pytest.mark.usefixtures("no_tracking_env")


def _runs(uri: str, experiment: str, where: str = "") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], where, max_results=100)


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_pipeline_key_is_a_digest_of_the_sorted_config():
    # Hand-computed: the key is sha256 of the compact, key-sorted JSON, first 16 hex characters.
    expected = hashlib.sha256(b'{"a":1,"b":{"c":[1,2]}}').hexdigest()[:16]
    assert T.pipeline_key({"b": {"c": [1, 2]}, "a": 1}) == expected
    assert T.pipeline_key({"a": 1, "b": {"c": [1, 2]}}) == expected  # key order does not matter
    assert T.pipeline_key({"a": 2, "b": {"c": [1, 2]}}) != expected


@pytest.mark.parametrize("name, expected", [
    ("hardest_level_pass@1", "hardest_level_pass_at_1"),  # '@' is rejected by MLflow
    ("loss", "loss"),
    ("by_level/3 pass:1", "by_level/3 pass:1"),  # slashes, spaces and colons are allowed
    ("a#b", "a_b"),
])
def test_mlflow_key(name, expected):
    assert T.mlflow_key(name) == expected


def test_redact_params_hides_credentials_and_userinfo():
    flat = {
        "tracking.tracking_uri": "https://alice:s3cret@mlflow.example:5000/x",
        "hub.api_token": "hf_abc",
        "db.password": "pw",
        "cluster.mlflow_secret": "expo-mlflow",  # looks like a credential: hidden, harmless
        "s3.access_key": "AKIA",
        "train.steps": 5,
        "register.model_name": "expo-tiny",
        "x.token": "",  # empty: nothing to hide, left as is
    }
    out = T.redact_params(flat)
    assert out["tracking.tracking_uri"] == "https://mlflow.example:5000/x"
    assert out["hub.api_token"] == out["db.password"] == out["s3.access_key"] == T.REDACTED
    assert out["cluster.mlflow_secret"] == T.REDACTED
    assert out["train.steps"] == 5 and out["register.model_name"] == "expo-tiny"
    assert out["x.token"] == ""


def test_resolve_tracking_uri_precedence(tmp_path, monkeypatch):
    assert T.resolve_tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert T.resolve_tracking_uri(TrackingConfig(), tmp_path) == "http://env:5000"
    assert T.resolve_tracking_uri(TrackingConfig(tracking_uri="http://cfg:1"), tmp_path) == "http://cfg:1"


def test_env_pipeline_key(monkeypatch):
    monkeypatch.delenv("EXPO_PIPELINE_KEY", raising=False)
    monkeypatch.delenv("EXPO_PIPELINE_RUN_ID", raising=False)
    with pytest.raises(TrackingError, match="no pipeline key"):
        T.env_pipeline_key()
    monkeypatch.setenv("EXPO_PIPELINE_RUN_ID", "local-20261130-abc")
    assert T.env_pipeline_key() == "local-20261130-abc"
    monkeypatch.setenv("EXPO_PIPELINE_KEY", "k1")  # an explicit key wins over the run id
    assert T.env_pipeline_key() == "k1"


def test_log_functions_need_an_active_stage():
    with pytest.raises(TrackingError, match="no active stage run"):
        T.log_metrics_series([{"step": 0, "loss": 1.0}])


# ---------------------------------------------------------------------------------------------
# Lineage on the embedded store


def test_stage_lineage_on_sqlite(sqlite_store, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPO_GIT_COMMIT", "abc123")
    cfg = TrackingConfig(tracking_uri=sqlite_store, experiment="lineage")
    key = T.pipeline_key({"case": "lineage"})
    data = tmp_path / "train.jsonl"
    write_jsonl(data, [{"id": "1", "question": "1+1", "answer": "2", "level": 1},
                       {"id": "2", "question": "2+2", "answer": "4", "level": None}])
    config = {"train": {"steps": 3, "arms": ["grpo"]}, "tracking": {"tracking_uri": "http://u:p@h"},
              "long": {"text": "x" * 7000}}
    with T.stage_run(key, "data", cfg) as data_run:
        digest = T.log_dataset(data, "train", "train")
    with T.stage_run(key, "train", cfg, arm="exp-grpo") as train_run:
        params = T.log_config(config)
        n = T.log_metrics_series([{"step": 1, "loss": 0.5, "pass@1": 0.25, "note": "x"},
                                  {"step": 2, "loss": 0.25, "skipped": None}])
    assert n == 3  # loss twice, pass@1 once; strings and None are skipped
    assert digest == T.file_digest(data) and len(digest) == 16

    client = MlflowClient(sqlite_store)
    parents = _runs(sqlite_store, "lineage", f"tags.`{T.ROLE_TAG}` = 'pipeline'")
    assert [p.info.run_id for p in parents] == [train_run.parent_id] == [data_run.parent_id]
    ptags = parents[0].data.tags
    assert ptags[T.KEY_TAG] == key and ptags["expo.git_commit"] == "abc123"
    assert ptags["expo.version"] == "0.1.0" and ptags["expo.pipeline"] == "expo"

    run = client.get_run(train_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[T.PARENT_TAG] == train_run.parent_id
    assert run.data.tags[T.STAGE_TAG] == "train" and run.data.tags[T.ARM_TAG] == "exp-grpo"
    assert run.data.params["train.steps"] == "3" and run.data.params["train.arms"] == '["grpo"]'
    assert run.data.params["tracking.tracking_uri"] == "http://h"  # userinfo stripped
    assert len(run.data.params["long.text"]) == T.MAX_PARAM_CHARS == len(params["long.text"])
    history = client.get_metric_history(train_run.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.25)]
    assert client.get_metric_history(train_run.run_id, "pass_at_1")[0].value == 0.25
    config_yaml = Path(client.download_artifacts(train_run.run_id, "config.yaml", str(tmp_path)))
    assert "http://h" in config_yaml.read_text() and "u:p@" not in config_yaml.read_text()

    inputs = client.get_run(data_run.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.digest == digest and inputs[0].dataset.name == "train"
    assert json.loads(inputs[0].dataset.source)["uri"] == str(data.resolve())
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "train"


def test_same_key_reuses_parent_and_tags_it(sqlite_store):
    cfg = TrackingConfig(tracking_uri=sqlite_store, experiment="reuse")
    key = T.pipeline_key({"case": "reuse"})
    first = T.parent_run(key, cfg)
    assert T.parent_run(key, cfg) == first
    assert T.parent_run(key, cfg, {"kfp.run_id": "run-42"}) == first  # tags the one it finds
    assert T.close_parent(key, "FAILED", cfg, tags={"kfp.status": "FAILED"}) == first
    (parent,) = _runs(sqlite_store, "reuse")
    assert parent.data.tags["kfp.run_id"] == "run-42" and parent.info.status == "FAILED"
    assert parent.data.tags["kfp.status"] == "FAILED"
    with pytest.raises(TrackingError, match="not FINISHED, FAILED or KILLED"):
        T.close_parent(key, "SUCCEEDED", cfg)
    other = T.parent_run(T.pipeline_key({"case": "other"}), cfg)
    assert other != first


def test_failed_stage_is_marked_and_replaced_finished_one_reused(sqlite_store):
    cfg = TrackingConfig(tracking_uri=sqlite_store, experiment="rerun")
    key = T.pipeline_key({"case": "rerun"})
    with pytest.raises(ValueError, match="boom"), T.stage_run(key, "evaluate", cfg) as failed:
        raise ValueError("boom")
    client = MlflowClient(sqlite_store)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    with T.stage_run(key, "evaluate", cfg) as retried:
        pass
    assert retried.run_id != failed.run_id  # the partial FAILED run is replaced, not appended to
    assert client.get_run(failed.run_id).info.lifecycle_stage == "deleted"
    with T.stage_run(key, "evaluate", cfg) as again:
        pass
    assert again.run_id == retried.run_id  # a FINISHED stage run is reused
    stages = _runs(sqlite_store, "rerun", f"tags.`{T.ROLE_TAG}` = 'stage'")
    assert [r.info.run_id for r in stages] == [retried.run_id]
    assert client.get_run(again.run_id).info.status == "FINISHED"


def test_parallel_processes_share_one_parent_on_sqlite(sqlite_store):
    """Two training arms in two processes start at once against one SQLite file: one parent."""
    script = textwrap.dedent(f"""
        import sys
        from expo import tracking as T
        from expo.config import TrackingConfig
        cfg = TrackingConfig(tracking_uri={sqlite_store!r}, experiment="parallel")
        with T.stage_run("k-parallel", "train", cfg, arm=sys.argv[1]) as run:
            T.log_metrics_series([{{"step": 0, "loss": 1.0}}])
        print(run.parent_id)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, arm], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for arm in ("grpo", "exp-grpo")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
    parent_ids = {out.strip().splitlines()[-1] for out, _ in outs}
    parents = _runs(sqlite_store, "parallel", f"tags.`{T.ROLE_TAG}` = 'pipeline'")
    assert parent_ids == {parents[0].info.run_id} and len(parents) == 1
    stages = _runs(sqlite_store, "parallel", f"tags.`{T.ROLE_TAG}` = 'stage'")
    assert sorted(r.data.tags[T.ARM_TAG] for r in stages) == ["exp-grpo", "grpo"]


# ---------------------------------------------------------------------------------------------
# A real server


def test_lineage_over_http_and_racing_parents(mlflow_server, unique_name):
    cfg = TrackingConfig(tracking_uri=mlflow_server, experiment=unique_name)
    key = T.pipeline_key({"case": unique_name})
    ids: list[str] = []
    barrier = threading.Barrier(3)

    def find_or_create() -> None:
        barrier.wait()
        ids.append(T.parent_run(key, cfg))

    threads = [threading.Thread(target=find_or_create) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(set(ids)) == 1 and len(ids) == 3  # every racer ends on the same parent
    assert [r.info.run_id for r in _runs(mlflow_server, unique_name)] == ids[:1]  # duplicates deleted

    with T.stage_run(key, "train", cfg, arm="grpo") as run:
        T.log_metrics_series([{"step": 0, "loss": 2.0}])
    got = MlflowClient(mlflow_server).get_run(run.run_id)
    assert got.data.tags[T.PARENT_TAG] == ids[0] and got.data.metrics["loss"] == 2.0


def test_unreachable_server_fails_fast_with_the_uri():
    port = _closed_port()
    cfg = TrackingConfig(tracking_uri=f"http://bob:pw@127.0.0.1:{port}", retries=1, backoff_s=0.01)
    start = time.monotonic()
    with pytest.raises(TrackingError) as err:
        T.parent_run("k", cfg)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert f"http://127.0.0.1:{port}" in message and "2 attempt(s)" in message
    assert "pw" not in message and "\n" not in message


def _closed_port() -> int:
    from tests.mlflow_server import free_port

    return free_port()  # bound then released: nothing listens there


def test_a_platform_run_is_logged_into_and_tagged_never_duplicated(sqlite_store, monkeypatch):
    """With MLFLOW_RUN_ID set (the KFP backend's run for this task), the stage logs into that run, tags
    it and the platform's parent as ours, and creates no run; the exit handler tags the parent only."""
    client = MlflowClient(sqlite_store)
    experiment = client.create_experiment("platform")
    parent = client.create_run(experiment, run_name="kfp-parent").info.run_id
    task = client.create_run(experiment, run_name="train", tags={T.PARENT_TAG: parent}).info.run_id
    closer = client.create_run(experiment, run_name="finish-run", tags={T.PARENT_TAG: parent}).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store)
    monkeypatch.setenv(T.PLATFORM_RUN_ENV, task)
    cfg = TrackingConfig(tracking_uri="sqlite:///elsewhere.db", system_metrics_interval_s=0)  # the platform's wins
    with T.stage_run("kfp-run-1", "train", cfg, arm="exp-grpo", pipeline="expo-smoke") as run:
        T.log_metrics({"loss": 0.5}, step=1)
    assert (run.run_id, run.parent_id) == (task, parent)
    monkeypatch.setenv(T.PLATFORM_RUN_ENV, closer)
    assert T.close_parent("kfp-run-1", "FINISHED", cfg, tags={"kfp.status": "SUCCEEDED"},
                          pipeline="expo-smoke") == parent
    assert len(client.search_runs([experiment])) == 3  # nothing created beside the platform's runs
    mine, top = client.get_run(task), client.get_run(parent)
    assert mine.data.metrics["loss"] == 0.5 and mine.info.status == "FINISHED"
    assert (mine.data.tags[T.ROLE_TAG], mine.data.tags[T.STAGE_TAG], mine.data.tags[T.ARM_TAG]) == (
        "stage", "train", "exp-grpo")
    assert (top.data.tags[T.ROLE_TAG], top.data.tags[T.KEY_TAG], top.data.tags["expo.pipeline"]) == (
        "pipeline", "kfp-run-1", "expo-smoke")
    assert top.data.tags["kfp.status"] == "SUCCEEDED" and top.info.status == "RUNNING"  # the platform ends it
