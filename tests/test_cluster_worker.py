"""The TrainJob's own command, run here: /bin/sh -> accelerate launch -> expo.cluster.worker -> train_arm.

No cluster: the variables the Trainer's torch plugin would set on a node (PET_NODE_RANK,
PET_MASTER_ADDR, PET_MASTER_PORT) are set by hand, /workspace is mapped to a temporary folder, and the
job is built for CPU nodes (`--cpu`, one process). What runs is exactly the object's command and args.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from expo.cluster.trainjob import build_trainjob
from expo.workspace import MOUNT_PATH
from expo.io import read_json
from tests.trainkit import make_folders, small_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_trainjob_command_trains_an_arm_through_accelerate(tmp_path):
    pytest.importorskip("accelerate")
    make_folders(tmp_path)  # tmp_path/{data,model,explanations}: what /workspace would hold
    cfg = small_config(steps=2)
    cfg.cluster.gpus_train = 0
    job = build_trainjob(
        "expo-exp-grpo-test",
        cfg,
        "exp-grpo",
        f"{MOUNT_PATH}/data",
        f"{MOUNT_PATH}/model",
        f"{MOUNT_PATH}/out",
        "ns",
        explanations_path=f"{MOUNT_PATH}/explanations",
    )
    trainer = job["spec"]["trainer"]
    args = [a.replace(MOUNT_PATH, str(tmp_path)) for a in trainer["args"]]
    env = {
        **os.environ,
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(trainer["command"] + args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "model" / "model.safetensors").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # one line per step
    assert read_json(out / "summary.json")  # train_arm's summary, written by rank 0
