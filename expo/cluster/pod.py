"""Train one arm on every GPU of the train step's own pod: one process per GPU through torchrun.

With `cluster.train_nodes: 1` the pipeline gives the train step one pod with `cluster.gpus_train`
GPUs (pipelines/). Running `train_arm` in that process would use one of them, so with more than one
GPU visible the step starts `torchrun --standalone --nproc-per-node N -m expo.cluster.worker ...`
(the TrainJob's worker entry, without the TrainJob), waits for it, and reads the summary rank 0
wrote. The configured batch is global (expo.train.grpo_training.batch_plan), so N changes the speed of a
step, not what a step is. One GPU or none (a laptop, CPU CI) trains in this process as before.

    summary = train_in_pod("exp-grpo", cfg, data_dir, model_dir, explanations_dir, output_dir,
                           checkpoint_dir=ckpt)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from expo.cluster.trainjob import worker_args
from expo.config import ExpoConfig
from expo.errors import ExpoError
from expo.io import read_json

log = logging.getLogger(__name__)

WORKER_ERROR = "expo worker: error:"  # the prefix worker.py puts on its one-line error


class TrainProcessesError(ExpoError):
    """The per-GPU training processes of one pod failed."""


def train_processes(gpus_train: int, visible_gpus: int) -> int:
    """How many training processes this pod runs: one per configured GPU it can see (1 = in-process).

    >>> train_processes(8, 8), train_processes(1, 8), train_processes(8, 0), train_processes(8, 4)
    (8, 1, 1, 4)
    """
    if gpus_train <= 1 or visible_gpus <= 1:
        return 1
    return min(gpus_train, visible_gpus)


def torchrun_argv(nproc: int, cfg: ExpoConfig, arm: str, data_dir: str | Path, model_dir: str | Path,
                  explanations_dir: str | Path | None, output_dir: str | Path,
                  checkpoint_dir: str | Path | None = None) -> list[str]:
    """The command that trains `arm` with `nproc` processes on this machine.

    `python -m torch.distributed.run` is torchrun without relying on PATH; `--standalone` starts a
    local rendezvous on a free port, so two arms training side by side on one machine never collide.
    """
    args = worker_args(cfg, arm, str(data_dir), str(model_dir), str(output_dir),
                       None if explanations_dir is None else str(explanations_dir))
    if checkpoint_dir is not None:
        args += ["--checkpoint-dir", str(checkpoint_dir)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "expo.cluster.worker", *args]


def torchrun_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The processes' environment: this one's, with unbuffered output (their lines reach the task log as
    they come) and one OpenMP thread per process unless set (N processes share the pod's cores)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_processes(argv: list[str], env: dict[str, str], what: str = "train") -> None:
    """Run `argv`, relaying its stderr line by line; a failure raises with the worker's own error line,
    named after the step (`what`)."""
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    cause = ""
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if not cause and WORKER_ERROR in line:
            cause = line.split(WORKER_ERROR, 1)[1].strip()
    code = proc.wait()
    if code != 0:
        raise TrainProcessesError(f"{what}: the per-GPU processes (torchrun) exited with code {code}: "
                                  f"{cause or 'see the log above'}")


def train_in_pod(arm: str, cfg: ExpoConfig, data_dir: str | Path, model_dir: str | Path,
                 explanations_dir: str | Path | None, output_dir: str | Path, *,
                 checkpoint_dir: str | Path | None = None, visible_gpus: int | None = None) -> dict[str, Any]:
    """Train `arm` on this pod's GPUs (see the module docstring) and return train_arm's summary."""
    if visible_gpus is None:
        import torch

        visible_gpus = torch.cuda.device_count()
    nproc = train_processes(cfg.cluster.gpus_train, visible_gpus)
    if nproc < cfg.cluster.gpus_train:
        log.warning("cluster.gpus_train is %d but %d GPU(s) are visible: training with %d process(es)",
                    cfg.cluster.gpus_train, visible_gpus, nproc)
    if nproc == 1:
        from expo.train import train_arm

        return train_arm(arm, cfg, data_dir, model_dir, explanations_dir, output_dir,
                         checkpoint_dir=checkpoint_dir)
    from expo.train.grpo_training import batch_plan
    from expo.train.run import validate_arm

    validate_arm(arm, cfg, data_dir, model_dir, explanations_dir)  # one clear line here, not N tracebacks
    batch_plan(cfg.train, nproc)
    log.info("training %s with %d processes (torchrun, one per GPU)", arm, nproc)
    run_processes(torchrun_argv(nproc, cfg, arm, data_dir, model_dir, explanations_dir, output_dir,
                                checkpoint_dir), torchrun_env())
    return read_json(Path(output_dir) / "summary.json")


__all__ = ["TrainProcessesError", "train_processes", "torchrun_argv", "torchrun_env", "run_processes",
           "train_in_pod"]
