"""kfp.local standing in for the KFP backend's MLflow integration (`tracking.platform_runs: true`).

On a cluster with the integration on, the API server creates an MLflow parent run per pipeline run, the
driver creates a nested run per task and puts MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID, MLFLOW_RUN_ID
and MLFLOW_WORKSPACE into the task's environment, the launcher closes the task's run, and the API server
closes the parent when the pipeline ends. `platform_runs` does the same around kfp.local, so `expo run`
exercises the steps' platform path (expo.tracking: log into the given run, create none) on this machine:

    with platform_runs(cfg.tracking, run_name) as parent_id:
        pipeline(**arguments)        # each executed task runs with its own run's variables

A cached task runs no process, so it gets no run (as on the backend, whose cached tasks run no pod).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from expo.config import TrackingConfig
from expo.tracking import (PARENT_TAG, PLATFORM_EXPERIMENT_ENV, PLATFORM_RUN_ENV, WORKSPACE_ENV, connect,
                           resolve_workspace)


@contextlib.contextmanager
def platform_runs(cfg: TrackingConfig, run_name: str) -> Iterator[str]:
    """Create the parent run, give every task kfp.local executes inside the block a nested run and its
    variables, end each task's run with the task's status and the parent with the pipeline's; yields
    the parent's run id."""
    from kfp.local import subprocess_task_handler, task_dispatcher

    conn = connect(cfg)
    experiment_id = conn.experiment_id()
    parent_id = conn.call("create platform parent", conn.client.create_run, experiment_id,
                          run_name=run_name).info.run_id
    shared = {"MLFLOW_TRACKING_URI": conn.uri, PLATFORM_EXPERIMENT_ENV: experiment_id}
    workspace = resolve_workspace(cfg)
    if workspace:
        shared[WORKSPACE_ENV] = workspace
    task_env: dict[int, dict[str, str]] = {}  # thread -> the variables of the task it runs
    dispatch, launch = task_dispatcher.run_single_task_implementation, subprocess_task_handler.run_local_subprocess

    def run_task(pipeline_resource_name: str, component_name: str, *args: Any, **kwargs: Any) -> Any:
        task = component_name.removeprefix("comp-")
        run_id = conn.call("create task run", conn.client.create_run, experiment_id, run_name=task,
                           tags={PARENT_TAG: parent_id}).info.run_id
        task_env[threading.get_ident()] = {**shared, PLATFORM_RUN_ENV: run_id}
        status = "FAILED"
        try:
            outputs, task_status = dispatch(pipeline_resource_name, component_name, *args, **kwargs)
            status = "FAILED" if getattr(task_status, "name", "") == "FAILURE" else "FINISHED"
            return outputs, task_status
        finally:
            task_env.pop(threading.get_ident(), None)
            with contextlib.suppress(Exception):  # the task's own outcome matters more than its run's
                conn.call("end task run", conn.client.set_terminated, run_id, status)

    def run_process(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        return launch(full_command, {**(env_vars or {}), **task_env.get(threading.get_ident(), {})})

    status = "FAILED"
    task_dispatcher.run_single_task_implementation = run_task
    subprocess_task_handler.run_local_subprocess = run_process
    try:
        yield parent_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        task_dispatcher.run_single_task_implementation = dispatch
        subprocess_task_handler.run_local_subprocess = launch
        with contextlib.suppress(Exception):
            conn.call("end platform parent", conn.client.set_terminated, parent_id, status)


__all__ = ["platform_runs"]
