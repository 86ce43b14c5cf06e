"""expo.workspace and the run folder's layout: what the stages write there is where `expo run`
(pipelines/local_run.py) reads it, through the same functions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expo import stages, workspace
from expo.config import load_pipeline_config
from expo.cpu import CONCURRENT_TASKS_ENV
from expo.io import write_json
from expo.run_folder import default_run_dir, workspace_of
from pipelines import local_run
from pipelines.expo_pipeline import run_key


def test_the_layout_by_hand(tmp_path):
    ws = tmp_path / "ws"
    assert workspace.run_record_dir(ws, "k1") == ws / "runs" / "k1"
    assert workspace.error_file(ws, "local-1") == ws / "errors" / "local-1.txt"
    assert workspace.checkpoints_dir(ws, "grpo-0123") == ws / "checkpoints" / "grpo-0123"
    assert default_run_dir("expo-embedded") == Path("expo-runs") / "expo-embedded"
    assert workspace_of(tmp_path / "run") == tmp_path / "run" / "workspace"


def test_root_is_the_environment_s_workspace(monkeypatch, tmp_path):
    monkeypatch.delenv(workspace.WORKSPACE_ENV, raising=False)
    assert workspace.root() is None and stages.run_record_dir("k1") is None
    monkeypatch.setenv(workspace.WORKSPACE_ENV, str(tmp_path))
    assert workspace.root() == tmp_path
    assert stages.run_record_dir("k1") == tmp_path / "runs" / "k1"


@pytest.fixture
def local_run_env(monkeypatch, tmp_path):
    """The environment `expo run` gives its steps, for a run folder in tmp_path (no pipeline runs)."""
    for name in (workspace.WORKSPACE_ENV, "EXPO_PIPELINE_RUN_ID", "MLFLOW_TRACKING_URI", "PYTHONPATH",
                 CONCURRENT_TASKS_ENV):
        monkeypatch.setenv(name, "")  # recorded, so the values _set_run_environment sets are undone
        monkeypatch.delenv(name)
    cfg = load_pipeline_config(None, [])
    run_dir = tmp_path / "run"
    local_run._set_run_environment(cfg, run_dir)
    return cfg, run_dir


def test_a_stage_s_error_is_where_expo_run_looks(local_run_env):
    _, run_dir = local_run_env
    stages.record_error("train-grpo: the cause,\n on two lines")
    stages.record_error("finish_run: a consequence")  # the first error of a run wins
    assert local_run._failure_cause(RuntimeError("task train failed"), run_dir) == \
        "train-grpo: the cause, on two lines"


def test_the_report_s_record_is_where_expo_run_collects_it(local_run_env, sqlite_store, tmp_path):
    """The summary and report come from the run's record; the aliases from the registry as it is at
    the end (here `champion` moved after the register step wrote its record), never from the record."""
    import mlflow

    cfg, run_dir = local_run_env
    assert os.environ["MLFLOW_TRACKING_URI"] == sqlite_store  # the store beside the run folder
    client = mlflow.MlflowClient(tracking_uri=sqlite_store, registry_uri=sqlite_store)
    client.create_registered_model("expo-tiny")
    client.create_model_version("expo-tiny", source=str(tmp_path))
    for alias in ("candidate", "champion"):
        client.set_registered_model_alias("expo-tiny", alias, "1")
    record = stages.run_record_dir(run_key(cfg))
    assert record == run_dir / "workspace" / "runs" / run_key(cfg)
    write_json(record / workspace.SUMMARY_FILE, {"models": {}, "register": True})
    write_json(record / workspace.REGISTERED_FILE, {"uri": "models:/expo-tiny/1", "aliases": ["candidate"]})
    (record / "report.md").write_text("# report\nRegistered model: models:/expo-tiny/1 (aliases: candidate).\n")
    summary = local_run.collect_summary(cfg, run_dir, [])
    assert summary["registered_model_uri"] == "models:/expo-tiny/1"
    assert summary["registered_aliases"] == ["candidate", "champion"]
    assert (run_dir / "report.md").read_text() == \
        "# report\nRegistered model: models:/expo-tiny/1 (aliases: candidate, champion).\n"
