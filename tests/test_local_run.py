"""The whole DAG through kfp.local on the smoke config (expo/toy/smoke.yaml): the wiring, the
summary and report it leaves, MLflow lineage, and re-runs served from cache.

One cold run is shared by the tests of this module (it takes a few minutes on 2 cores); the cached
re-run and the partial re-run after a training change reuse its run folder.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "expo" / "toy" / "smoke.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def expo_run(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_"))}
    return subprocess.run([sys.executable, "-m", "expo", "run", "--config", str(SMOKE), "--output",
                           str(run_dir), *extra], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=1500)


def executed(run_dir: Path) -> set[str]:
    """The tasks the latest run executed, as summary.json records them (cached tasks leave no folder)."""
    return set(json.loads((run_dir / "summary.json").read_text())["executed_steps"])


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    proc = expo_run(run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, proc


def test_cold_run_wires_every_stage(cold_run):
    run_dir, proc = cold_run
    ran = executed(run_dir)
    for task in ("prepare-data", "prepare-model", "evaluate", "generate-explanations", "train",
                 "evaluate-2", "report", "finish-run"):
        assert task in ran, task
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["models"]) == {"base", "grpo", "exp-grpo"}
    for model in summary["models"].values():
        assert set(model["levels"]) == {"1", "2", "3", "4", "5"}
        for level in model["levels"].values():
            assert 0.0 <= level["pass@1"] <= level["pass@k"] <= 1.0
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    assert summary["register"]  # the smoke config's gate margin of -1 registers the best arm always
    assert summary["registered_model_uri"].startswith("models:/expo-smoke/")
    assert "register" in ran
    assert "registered model:" in proc.stdout


def test_lineage_in_mlflow(cold_run):
    import mlflow

    run_dir, _ = cold_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("expo")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("expo.role") == "pipeline"]
    stages = [r for r in runs if r.data.tags.get("expo.role") == "stage"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get("kfp.run_id")
    names = {(r.data.tags["expo.stage"], r.data.tags.get("expo.arm")) for r in stages}
    assert {("prepare_data", None), ("train", "grpo"), ("train", "exp-grpo"), ("evaluate", "base")} <= names
    data_run = next(r for r in stages if r.data.tags["expo.stage"] == "prepare_data")
    contexts = {i.tags[0].value for i in data_run.inputs.dataset_inputs}
    assert contexts == {"train", "eval"}


def test_rerun_is_all_cache_hits_then_training_change_reruns_only_training(cold_run):
    run_dir, _ = cold_run
    again = expo_run(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert executed(run_dir) == {"finish-run"}  # only the (uncached) exit handler executes
    assert "every other step came from cache" in again.stdout

    changed = expo_run(run_dir, "--set", "train.learning_rate=0.001")
    assert changed.returncode == 0, changed.stderr[-3000:]
    ran = executed(run_dir)
    assert not ran & {"prepare-data", "prepare-model", "evaluate", "generate-explanations"}, ran
    assert {"train", "evaluate-2", "report", "finish-run"} <= ran
