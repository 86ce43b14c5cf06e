"""Pipeline-level faults: `expo run` is killed with SIGKILL mid-training, the MLflow server
stops mid-pipeline, the output folder cannot be written. Each test runs the real CLI in a subprocess on
the smoke config (expo/toy/smoke.yaml, shrunk with --set) and checks what happens, what is kept
and that the next `expo run` finishes.

The killed-and-resumed run folder is also what tests/test_security.py greps for a planted secret
(`killed_and_resumed_run`, done once per pytest session), so the slow part runs once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "expo" / "toy" / "smoke.yaml"
RUN_TIMEOUT_S = 1500.0  # one smoke pipeline takes 2-4 min on 2 quiet cores; far more when they are busy
# A value no code would produce by chance: it must never be written anywhere (tests/test_security.py).
PLANTED = "planted-7c1e5b9a-never-log-me"
SECRET_ENV = {name: PLANTED for name in ("MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN",
                                         "KF_PIPELINES_TOKEN")}
# Training long enough to be killed between checkpoints; one arm is enough to show resume.
RESUME_SETS = ["train.arms=[grpo]", "train.steps=6", "train.checkpoint_every=2"]


def expo_env(tracking_uri: str | None = None) -> dict[str, str]:
    """The environment of an `expo run` subprocess: no outer tracking URI, the planted secrets set."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(SECRET_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def expo_cmd(out: Path, sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "expo", "run", "--config", str(SMOKE), "--output", str(out)]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def start_expo(out: Path, sets: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`expo run` in its own process group (so a kill reaches every step subprocess), output to `log`."""
    with open(log, "wb") as fh:
        return subprocess.Popen(expo_cmd(out, sets), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish_expo(proc: subprocess.Popen, timeout_s: float = RUN_TIMEOUT_S) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout_s: float = RUN_TIMEOUT_S):
    """Poll `predicate()` until it returns something truthy; fail if `proc` ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"expo run exited ({proc.returncode}) before {what}")
        time.sleep(0.1)
    kill_group(proc)
    raise AssertionError(f"timed out waiting for {what}")


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------
# SIGKILL during training, then `expo run` again


@dataclass
class KilledRun:
    out: Path
    logs: list[Path]
    killed_at: list[str]  # checkpoint folders intact when the kill was sent
    rc_after: int


def _intact_checkpoints(out: Path) -> list[Path]:
    from expo.train.resume import checkpoint_problem

    found = sorted((out / "workspace" / "checkpoints").glob("grpo-*/checkpoint-*"))
    return [p for p in found if checkpoint_problem(p) is None]


def killed_and_resumed_run(tmp_path_factory: pytest.TempPathFactory) -> KilledRun:
    """Start `expo run`, SIGKILL its whole process group as soon as training has an intact checkpoint,
    run it again with the same arguments. Done once per pytest session (test_security.py greps the same
    folder): the result is kept on disk, as the two test modules may import this one under two names."""
    root = tmp_path_factory.getbasetemp() / "killed-and-resumed"
    done = root / "result.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        return KilledRun(Path(saved["out"]), [Path(p) for p in saved["logs"]], saved["killed_at"],
                         saved["rc_after"])
    root.mkdir()
    out, env = root / "run", expo_env()
    logs = [root / "first.log", root / "second.log"]
    proc = start_expo(out, RESUME_SETS, logs[0], env)
    wait_for(lambda: _intact_checkpoints(out), proc, "the first training checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = [p.name for p in _intact_checkpoints(out)]
    rc_after = finish_expo(start_expo(out, RESUME_SETS, logs[1], env))
    done.write_text(json.dumps({"out": str(out), "logs": [str(p) for p in logs], "killed_at": killed_at,
                                "rc_after": rc_after}))
    return KilledRun(out, logs, killed_at, rc_after)


def _step_outputs(out: Path, task: str, marker: str) -> list[Path]:
    """Output folders of one task in every kfp.local run under `out` (newest run last)."""
    found = (out / "kfp").glob(f"*/**/{task}*/*/{marker}")  # loop tasks get a suffix per iteration
    return sorted({p.parent for p in found}, key=lambda p: p.stat().st_mtime)


@pytest.mark.fault
@pytest.mark.timeout(3600)  # two smoke pipelines; the default 600 s is per test
def test_sigkill_mid_training_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path_factory, tmp_path):
    import torch
    from safetensors.torch import load_file

    from expo.artifacts import META_FILE
    from expo.config import load_config
    from expo.io import read_json, read_jsonl
    from expo.stages import load_stage_config, stage_config_yaml
    from expo.train import train_arm

    run = killed_and_resumed_run(tmp_path_factory)
    assert run.killed_at and "checkpoint-6" not in run.killed_at  # killed mid-run, not after the end
    assert run.rc_after == 0, run.logs[1].read_text(errors="replace")[-3000:]
    assert (run.out / "summary.json").is_file() and (run.out / "report.html").is_file()

    # Only the rerun trained to the end; it started from a checkpoint the killed run left.
    (train_out,) = _step_outputs(run.out, "train", "summary.json")
    summary = read_json(train_out / "summary.json")
    assert summary["steps"] == 6
    assert summary["resumed_from"] and Path(summary["resumed_from"]).name in run.killed_at
    assert [r["step"] for r in read_jsonl(train_out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]

    # The same training uninterrupted, on the very inputs the pipeline used, with a fresh checkpoint folder.
    cfg = load_stage_config(stage_config_yaml(load_config(run.out / "config.yaml"), "train"))
    data = _step_outputs(run.out, "prepare-data", "train.jsonl")[0]
    model = _step_outputs(run.out, "prepare-model", META_FILE)[0]
    explanations = _step_outputs(run.out, "generate-explanations", "explanations.jsonl")[0]
    whole = tmp_path / "whole"
    train_arm("grpo", cfg, data, model, explanations, whole, checkpoint_dir=tmp_path / "ckpt")
    want = load_file(whole / "model" / "model.safetensors")
    got = load_file(train_out / "model" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------------
# The MLflow server stops mid-pipeline, then comes back


def _server(root: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on `port` whose store lives in `root` (so a restart finds the same runs)."""
    from tests.mlflow_server import _mlflow_executable, _stop, _wait_healthy

    log = root / "server.log"
    cmd = [_mlflow_executable(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=root, env=env,
                                start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, log)
    except BaseException:
        _stop(proc)
        raise
    return proc


@pytest.mark.fault
@pytest.mark.timeout(3600)  # two smoke pipelines; the default 600 s is per test
def test_mlflow_server_stopped_mid_pipeline_fails_clearly_and_rerun_completes_without_duplicates(tmp_path):
    from mlflow import MlflowClient

    from expo.io import read_json
    from tests.mlflow_server import _stop, free_port

    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    # A user:password in the URI must work and must never be printed (the password is the planted value).
    secret_uri = f"http://expo:{PLANTED}@127.0.0.1:{port}"
    sets = ["train.arms=[grpo]", "tracking.retries=1", "tracking.backoff_s=0.2",
            "register.gate_margin=-1.0"]  # the gate passes, so registration is asked for
    out, logs = tmp_path / "run", [tmp_path / "first.log", tmp_path / "second.log"]
    server = _server(store, port)
    try:
        proc = start_expo(out, sets, logs[0], expo_env(secret_uri))
        # Stop the server as the report step starts: every stage before it has logged to MLflow.
        wait_for(lambda: list((out / "kfp").glob("*/report")), proc, "the report step")
        _stop(server)
        stopped = time.monotonic()
        rc = finish_expo(proc)
        waited = time.monotonic() - stopped
        line = last_line(logs[0])
        assert rc == 2, logs[0].read_text(errors="replace")[-3000:]
        assert line.startswith("expo run: error: pipeline failed: report: "), line
        assert f"MLflow at {uri} did not answer" in line and "after 2 attempt(s)" in line, line
        assert waited < 300, f"took {waited:.0f} s to give up"  # bounded retries, not MLflow's minutes
        assert PLANTED not in logs[0].read_text(errors="replace")

        server = _server(store, port)  # same port, same backend store
        rc = finish_expo(start_expo(out, sets, logs[1], expo_env(secret_uri)))
        assert rc == 0, logs[1].read_text(errors="replace")[-3000:]
        assert PLANTED not in logs[1].read_text(errors="replace")

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("expo")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("expo.role") == "pipeline"]
        assert len(parents) == 2  # one per `expo run` (each has its own pipeline run id)
        for parent in parents:
            stages = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
            done = [(r.data.tags["expo.stage"], r.data.tags.get("expo.arm")) for r in stages
                    if r.info.status == "FINISHED"]
            assert len(done) == len(set(done)), done  # no stage logged twice under one pipeline run
        first, second = sorted(parents, key=lambda r: r.info.start_time)
        logged_first = {r.data.tags["expo.stage"] for r in runs
                        if r.data.tags.get("mlflow.parentRunId") == first.info.run_id}
        assert {"prepare_data", "prepare_model", "generate_explanations", "train", "evaluate"} <= logged_first
        # The rerun served every finished step from cache: only what had not finished ran and logged.
        assert second.info.status == "FINISHED"
        again = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == second.info.run_id]
        assert "report" in {r.data.tags["expo.stage"] for r in again}
        assert not logged_first & {r.data.tags["expo.stage"] for r in again} - {"report", "register"}
        assert all(r.info.status == "FINISHED" for r in again)
        # One model version at most, however many runs: none if kfp.local skipped registration.
        versions = client.search_model_versions("name = 'expo-smoke'")
        registered = read_json(out / "summary.json")["registered_model_uri"]
        assert len(versions) == (1 if registered else 0), [(v.version, v.tags) for v in versions]
    finally:
        _stop(server)


# ---------------------------------------------------------------------------------------------
# The output folder cannot be written


def test_unwritable_output_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "run"  # its parent is a regular file: no one can create it, root included
    started = time.monotonic()
    proc = subprocess.run(expo_cmd(out, []), cwd=ROOT, env=expo_env(), capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines == [f"expo run: error: run folder {str(out.resolve())!r} is not writable (Not a directory); "
                     "choose another with --output"]
    assert proc.stdout == ""  # no stage started (kfp.local prints every task it runs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert time.monotonic() - started < 120


def test_a_failed_stage_error_reaches_the_expo_run_message(tmp_path, monkeypatch):
    """kfp.local only says which task failed; the stage's own ExpoError line (recorded under the
    workspace by the stage wrapper, first error wins) is what `expo run` prints."""
    from expo import stages
    from expo.config import load_config
    from expo.errors import TrackingError
    from pipelines.local_run import _failure_cause

    monkeypatch.setenv("EXPO_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("EXPO_PIPELINE_RUN_ID", "local-test-1")
    kfp_message = RuntimeError("Pipeline \x1b[95m'expo'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m.")
    assert _failure_cause(kfp_message, tmp_path) == "Pipeline 'expo' finished with status FAILURE."
    cfg = load_config(None, ["tracking.tracking_uri=http://u:pw@127.0.0.1:9", "tracking.retries=0"])
    with pytest.raises(TrackingError):
        with stages._stage_run(cfg, stages.stage_config_yaml(cfg, "train"), "train", arm="grpo"):
            pass
    stages.record_error("finish: a later error")  # a consequence of the first: ignored
    cause = _failure_cause(kfp_message, tmp_path)
    assert cause.startswith("train-grpo: MLflow at http://127.0.0.1:9 did not answer") and "pw" not in cause
    assert "\n" not in cause


def test_an_empty_validation_split_stops_the_run_at_the_data_stage(tmp_path):
    """Every model is evaluated on the held-out split: with none, the data stage fails in one line naming
    the key, before the model stage builds anything."""
    out = tmp_path / "run"
    proc = subprocess.run(expo_cmd(out, ["data.eval_fraction=0"]), cwd=ROOT, env=expo_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "expo run: error: pipeline failed: prepare_data: data: the validation split (eval.jsonl) is empty: "
        "data.eval_fraction is 0: nothing is held out; the pipeline evaluates every model on it"), proc.stderr
    assert "prepare-model" not in proc.stdout
