"""One node, several GPUs: the train step starts one process per GPU (torchrun -> expo.cluster.worker).

No GPU here: the launch command, its environment and the choice between one process and N are
checked as data; the slow test runs the real command with 2 CPU processes (gloo) for one step.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from expo.cluster import pod, worker
from expo.errors import ConfigError
from expo.io import read_json, read_jsonl, write_json
from tests.trainkit import make_folders, small_config


@pytest.mark.parametrize("gpus_train,visible,want", [
    (8, 8, 8),  # a recipe's pod: one process per GPU
    (8, 16, 8),  # never more than configured
    (8, 4, 4),  # fewer visible than asked: use those (logged)
    (1, 8, 1),  # one GPU configured: in-process, as before
    (0, 0, 1),  # CPU
    (8, 0, 1),  # a GPU recipe on a laptop: in-process on CPU (logged)
    (4, 1, 1),
])
def test_train_processes(gpus_train: int, visible: int, want: int) -> None:
    assert pod.train_processes(gpus_train, visible) == want


def test_torchrun_argv_runs_the_worker_with_the_arms_arguments(tmp_path: Path) -> None:
    cfg = small_config()
    argv = pod.torchrun_argv(8, cfg, "exp-grpo", "/d", "/m", "/e", "/o", checkpoint_dir="/ckpt")
    assert argv[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=8",
                        "-m", "expo.cluster.worker"]
    args = worker.parse_args(argv[7:])
    assert (args.arm, args.data, args.model, args.explanations, args.output, args.checkpoint_dir) == \
        ("exp-grpo", "/d", "/m", "/e", "/o", "/ckpt")
    assert worker.load_config_json(args.config_json) == cfg  # the whole config travels, unchanged
    plain = worker.parse_args(pod.torchrun_argv(2, cfg, "grpo", "/d", "/m", None, "/o")[7:])
    assert plain.explanations is None and plain.checkpoint_dir is None


def test_torchrun_env() -> None:
    env = pod.torchrun_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    assert pod.torchrun_env({"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"  # a setting is kept


def test_one_gpu_or_none_trains_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import expo.train

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(expo.train, "train_arm", lambda *a, **k: calls.append((a, k)) or {"steps": 3})
    monkeypatch.setattr(pod, "run_processes", lambda *a: pytest.fail("no torchrun with one process"))
    cfg = small_config()
    cfg.cluster.gpus_train = 8
    summary = pod.train_in_pod("grpo", cfg, "d", "m", None, "o", checkpoint_dir="c", visible_gpus=0)
    assert summary == {"steps": 3}
    assert calls == [(("grpo", cfg, "d", "m", None, "o"), {"checkpoint_dir": "c"})]


def test_several_gpus_launch_one_process_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = make_folders(tmp_path)
    launched: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(argv: list[str], env: dict[str, str]) -> None:
        launched.append((argv, env))
        write_json(tmp_path / "out" / "summary.json", {"arm": "exp-grpo", "steps": 3})  # what rank 0 writes

    monkeypatch.setattr(pod, "run_processes", fake_run)
    cfg = small_config()
    cfg.train.prompts_per_step = 8  # 8 prompts over 8 processes: one whole group each
    cfg.cluster.gpus_train = 8
    summary = pod.train_in_pod("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out",
                               checkpoint_dir=tmp_path / "ckpt", visible_gpus=8)
    assert summary == {"arm": "exp-grpo", "steps": 3}
    ((argv, env),) = launched
    assert "--nproc-per-node=8" in argv and env["PYTHONUNBUFFERED"] == "1"
    assert worker.parse_args(argv[7:]).checkpoint_dir == str(tmp_path / "ckpt")


def test_an_uneven_split_fails_before_any_process_starts(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    f = make_folders(tmp_path)
    monkeypatch.setattr(pod, "run_processes", lambda *a: pytest.fail("must not launch"))
    cfg = small_config()  # 2 prompts per step cannot be split over 8 processes
    cfg.cluster.gpus_train = 8
    with pytest.raises(ConfigError, match="train.prompts_per_step"):
        pod.train_in_pod("grpo", cfg, f["data"], f["model"], None, tmp_path / "out", visible_gpus=8)


def test_a_failed_process_raises_with_the_workers_own_error_line() -> None:
    argv = [sys.executable, "-c",
            "import sys; print('noise', file=sys.stderr); "
            "print(\"expo worker: error: config key 'train.steps': must be positive\", file=sys.stderr); "
            "sys.exit(2)"]
    with pytest.raises(pod.TrainProcessesError, match="code 2: config key 'train.steps': must be positive"):
        pod.run_processes(argv, pod.torchrun_env())


@pytest.mark.slow
def test_torchrun_trains_one_step_with_two_cpu_processes(tmp_path: Path) -> None:
    """The real command, 2 processes on CPU (gloo, DDP): one optimizer step over the global batch of
    2 prompts x 4 rollouts (one prompt per process, in 2 micro-batches of 2 rollouts each, the NLL
    term beside DDP's forward); rank 0 alone writes the outputs."""
    f = make_folders(tmp_path)
    cfg = small_config(steps=1, expo_beta=0.5, rollouts_per_micro_batch=2)
    argv = pod.torchrun_argv(2, cfg, "exp-grpo", f["data"], f["model"], f["explanations"], tmp_path / "out",
                             checkpoint_dir=tmp_path / "ckpt")
    pod.run_processes(argv, pod.torchrun_env())
    out = tmp_path / "out"
    lines = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1]  # one line: written once, by rank 0
    assert lines[0]["explanations_used"] == 2.0  # every process's: both of the step's prompts
    assert lines[0]["expo_nll"] > 0 and lines[0]["grad_norm"] > 0
    assert read_json(out / "summary.json")["steps"] == 1
    assert (out / "model" / "model.safetensors").is_file()
    # Where every group's rewards are equal (the random model's usual case), the step's gradient is the
    # NLL term's alone: the same from 2 processes as from 1 (global token-mean, DDP's 1/W undone).
    if lines[0]["frac_reward_zero_std"] == 1.0:
        from expo.train import train_arm

        from tests.trainkit import zero_reward

        train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "one",
                  reward_fn=zero_reward)
        alone = read_jsonl(tmp_path / "one" / "metrics.jsonl")[0]
        assert lines[0]["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-4)
