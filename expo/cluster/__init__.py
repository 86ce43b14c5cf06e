"""Distributed training on Kubernetes through Kubeflow Trainer v2 (no home-made distribution).

- trainjob.py: `build_trainjob(...)`, the TrainJob object (pure; schema-checked in tests).
- launch.py: `launch_and_wait(api_client, job, ...)`, create, follow logs, wait, fail with the reason.
- submit_trainjob.py: `launch_trainjob(cfg, arm, ...)`, what a pipeline task calls: stage on the PVC, run, fetch.
- worker.py: `python -m expo.cluster.worker`, what each GPU process of the job runs.

Imports of `kubernetes` happen inside the functions that talk to a cluster.
"""

from expo.cluster.launch import TrainJobError, TrainJobResult, TrainJobState, job_state, launch_and_wait
from expo.cluster.submit_trainjob import job_name, launch_trainjob
from expo.cluster.trainjob import build_trainjob

__all__ = [
    "build_trainjob",
    "launch_and_wait",
    "launch_trainjob",
    "job_name",
    "job_state",
    "TrainJobError",
    "TrainJobResult",
    "TrainJobState",
]
