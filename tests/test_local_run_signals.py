"""Stopping `expo run` with a signal: every child process ends, one line says so, MLflow marks the run.

`kill -INT` or a scheduler's `SIGTERM` reaches `expo run` alone, not the step processes kfp.local runs
under it nor their workers. A real `expo run` of the smoke config is stopped while a stage runs; the
processes it had started are all gone afterwards, stderr holds one line, the exit code is 128 + the
signal, and the pipeline's MLflow parent run is KILLED. (Expo.processes unit-level: test_processes.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "expo" / "toy" / "smoke.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_every_process_and_closes_the_mlflow_run(signum, tmp_path):
    import mlflow

    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_"))}
    cmd = [sys.executable, "-m", "expo", "run", "--config", str(SMOKE), "--output", str(run_dir)]
    seen: dict[int, psutil.Process] = {}
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:  # its own group: the signal reaches expo run only
        try:
            for line in proc.stdout:  # wait until a stage that starts workers is under way
                if line.startswith("generate-explanations") and "started" in line:
                    break
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(seen) < 2:  # the step process and its children
                seen.update({p.pid: p for p in descendants(proc.pid)})
                time.sleep(0.2)
            assert seen, "expo run started no step process"
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith(f"expo run: interrupted by {signal.Signals(signum).name}")
    assert "FAILED" not in out  # the stages it killed print nothing
    gone, alive = psutil.wait_procs(list(seen.values()), timeout=10)
    assert not alive, [p.pid for p in alive]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("expo")
    parents = client.search_runs([experiment.experiment_id], "tags.`expo.role` = 'pipeline'")
    assert [run.info.status for run in parents] == ["KILLED"]
