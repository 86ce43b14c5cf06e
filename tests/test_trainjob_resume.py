"""A retried TrainJob resumes from its last complete checkpoint: the FAKE Kubernetes API of
test_cluster_launch stands in for the cluster, and its "nodes" run the real worker
(`python -m expo.cluster.worker`) on a tiny model. The first job's worker is killed (SIGKILL) after its
second checkpoint; the retry, a new TrainJob with a new name and job folder, continues from the
checkpoint folder the train stage keys by what it trains on, and ends with every step once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expo.cluster import TrainJobError, launch_trainjob
from expo.io import read_json, read_jsonl
from expo.train.resume import checkpoint_problem
from tests.test_cluster_launch import COMPLETE, FAILED, NS, FakeKubeAPI
from tests.trainkit import make_folders, small_config

ROOT = Path(__file__).resolve().parent.parent


def _worker(body: dict, workspace: Path) -> subprocess.Popen:
    """What a node would run: the job's worker command, its /workspace paths mapped to ours."""
    args = [a.replace("/workspace", str(workspace)) if a.startswith("/workspace") else a
            for a in body["spec"]["trainer"]["args"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_", "RANK"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "expo.cluster.worker", *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_retried_trainjob_resumes_from_the_last_complete_checkpoint(tmp_path):
    f = make_folders(tmp_path / "task", n=4)
    workspace = tmp_path / "workspace"
    checkpoints = workspace / "checkpoints" / "grpo-0123456789abcdef"  # expo.stages.checkpoint_dir's shape
    cfg = small_config(steps=4, checkpoint_every=1)
    cfg.cluster.gpus_train = 0  # one CPU process per "node"
    seen: list[dict] = []

    def killed_after_two_checkpoints(body):
        seen.append(body)
        proc = _worker(body, workspace)
        deadline = time.monotonic() + 300
        # Killed once checkpoint 2 is whole (what resume checks), not when its first file appears: the
        # trainer writes trainer_state.json before the rest, and a kill in between rightly resumes from 1.
        while not (checkpoints / "checkpoint-2").is_dir() or checkpoint_problem(checkpoints / "checkpoint-2"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # the node dies: preempted, OOM-killed
        proc.wait()

    def runs_to_the_end(body):
        seen.append(body)
        proc = _worker(body, workspace)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]

    common = dict(api_client=None, namespace=NS, workspace=workspace, poll_s=0.01, log_sink=None,
                  checkpoint_dir=checkpoints)
    with FakeKubeAPI([FAILED], on_create=killed_after_two_checkpoints) as api:
        with pytest.raises(TrainJobError):
            launch_trainjob(cfg, "grpo", f["data"], f["model"], None, tmp_path / "out1",
                            **{**common, "api_client": api.client()})
    with FakeKubeAPI([COMPLETE], on_create=runs_to_the_end) as api:
        launch_trainjob(cfg, "grpo", f["data"], f["model"], None, tmp_path / "out2",
                        **{**common, "api_client": api.client()})

    first, retry = seen
    assert first["metadata"]["name"] != retry["metadata"]["name"]  # a new job, a new job folder
    for body in seen:  # both jobs were told the same stable checkpoint folder
        args = body["spec"]["trainer"]["args"]
        assert args[args.index("--checkpoint-dir") + 1] == "/workspace/checkpoints/grpo-0123456789abcdef"
    summary = read_json(tmp_path / "out2" / "summary.json")
    resumed = Path(summary["resumed_from"]).name
    assert resumed in {"checkpoint-2", "checkpoint-3"}, resumed  # the kill came after checkpoint 2
    assert [row["step"] for row in read_jsonl(tmp_path / "out2" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert summary["steps"] == 4 and (tmp_path / "out2" / "model" / "model.safetensors").is_file()
