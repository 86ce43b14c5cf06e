"""Training step metrics reach the arm's MLflow run while training runs (expo.train.live), against the
real MLflow server of the test session; a store that does not answer never stops training."""

from __future__ import annotations

import time
import types

import pytest
from mlflow import MlflowClient

from expo.train.live import FLUSH_ENV, POSTED_FILE, RUN_ID_ENV, LivePoster, posted_step, unposted

pytestmark = pytest.mark.usefixtures("no_tracking_env")


def _run(uri: str, name: str) -> str:
    client = MlflowClient(uri)
    return client.create_run(client.create_experiment(name)).info.run_id


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def _wait_for(fn, timeout_s: float = 15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    return fn()


def test_rows_are_posted_while_the_poster_runs(mlflow_server, unique_name, tmp_path):
    run_id = _run(mlflow_server, unique_name)
    poster = LivePoster(run_id, tmp_path / "metrics.jsonl", tracking_uri=mlflow_server, flush_every_s=0.1)
    rows = [{"step": 1, "loss": 0.5, "arm": "grpo"}, {"step": 2, "loss": 0.25, "reward_mean": 1.0}]
    for row in rows:
        poster.add(row)
    # Posted by the background thread, before close(): visible while "training" goes on.
    assert _wait_for(lambda: _steps(mlflow_server, run_id, "loss") == [1, 2])
    assert _steps(mlflow_server, run_id, "reward_mean") == [2]  # the string "arm" is not a metric
    poster.close()
    assert posted_step(tmp_path / "metrics.jsonl") == 2 and (tmp_path / POSTED_FILE).is_file()
    # What the stage still posts at the end: only the rows after the last one posted.
    later = {"step": 3, "loss": 0.1}
    assert unposted(rows + [later], tmp_path / "metrics.jsonl") == [later]
    assert unposted(rows, tmp_path / "elsewhere" / "metrics.jsonl") == rows  # never posted: all


def test_a_store_that_does_not_answer_never_stops_training(tmp_path):
    from tests.mlflow_server import free_port

    poster = LivePoster("run-x", tmp_path / "metrics.jsonl", tracking_uri=f"http://127.0.0.1:{free_port()}",
                        flush_every_s=60, retries=0, backoff_s=0.0)
    poster.add({"step": 1, "loss": 0.5})
    start = time.monotonic()
    assert poster.flush() is False  # logged, not raised
    assert time.monotonic() - start < 10 and poster.failures == 1
    poster.add({"step": 2, "loss": 0.4})
    assert [r["step"] for r in poster._queue] == [1, 2]  # kept for the next flush
    poster.close()  # one more try, still no exception
    assert posted_step(tmp_path / "metrics.jsonl") == -1


def test_metrics_writer_posts_each_step_on_rank_0(mlflow_server, unique_name, tmp_path, monkeypatch):
    from expo.train.metrics_jsonl import MetricsWriter

    run_id = _run(mlflow_server, unique_name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv(RUN_ID_ENV, run_id)
    monkeypatch.setenv(FLUSH_ENV, "0.1")
    writer = MetricsWriter(tmp_path / "metrics.jsonl", arm="grpo")
    for step, loss in ((1, 0.9), (2, 0.7)):
        writer.on_log(None, types.SimpleNamespace(global_step=step), None, logs={"loss": loss})
    assert _wait_for(lambda: _steps(mlflow_server, run_id, "loss") == [1, 2])
    writer.on_train_end(None, None, None)
    monkeypatch.setenv("RANK", "1")  # other ranks never post (nor write the file)
    assert MetricsWriter(tmp_path / "other.jsonl", arm="grpo").live is None
    monkeypatch.delenv(RUN_ID_ENV)
    monkeypatch.setenv("RANK", "0")
    assert MetricsWriter(tmp_path / "off.jsonl", arm="grpo").live is None  # no run id: no poster
