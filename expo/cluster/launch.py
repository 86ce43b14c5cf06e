"""Create a TrainJob through the Kubernetes API, stream its rank-0 log, wait, and report the outcome.

Why here and not in KFP: the train task is one pod of the pipeline; it hands the heavy lifting to a
TrainJob (trainjob.py) and stays alive as its supervisor, so the pipeline's DAG, retries and caching
keep working and the job's log appears in the task's log.

How: `CustomObjectsApi` creates the object and polls it; the state comes from its conditions
(`Complete`, `Failed` with a reason, `Suspended`) and, before those, from `status.jobsStatus` (pods
active or ready = running). Rank 0's pod (JobSet labels) has its log followed in a thread into
`log_sink`. A failure raises `TrainJobError` naming the job and the controller's reason and message.
The pipeline's ServiceAccount needs exactly: trainjobs create/get/list/watch, pods get/list, pods/log get.

    result = launch_and_wait(kubernetes.client.ApiClient(), job, timeout_s=3600, poll_s=10,
                             log_sink=print)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from expo.cluster.trainjob import (
    COMPLETION_INDEX_LABEL,
    GROUP,
    JOBSET_NAME_LABEL,
    NODE_CONTAINER,
    PLURAL,
    REPLICATED_JOB_LABEL,
    VERSION,
)
from expo.errors import ExpoError

LogSink = Callable[[str], None]


class TrainJobError(ExpoError):
    """A TrainJob could not be created, failed, or did not finish in time."""


@dataclass
class TrainJobState:
    """What one look at the object says: phase is Created, Running, Suspended, Complete or Failed."""

    phase: str
    reason: str = ""
    message: str = ""


@dataclass
class TrainJobResult:
    name: str
    namespace: str
    phase: str
    seconds: float
    phases_seen: list[str] = field(default_factory=list)  # in order, each once (Created, Running, ...)


def job_state(obj: dict[str, Any]) -> TrainJobState:
    """Read a TrainJob's phase from its status (terminal conditions win over progress)."""
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    for phase in ("Failed", "Complete", "Suspended"):
        if phase in conditions:
            cond = conditions[phase]
            return TrainJobState(phase, cond.get("reason", ""), cond.get("message", ""))
    jobs = status.get("jobsStatus") or []
    if any((j.get("active") or 0) + (j.get("ready") or 0) > 0 for j in jobs):
        return TrainJobState("Running")
    return TrainJobState("Created")


def launch_and_wait(
    api_client: Any,
    job: dict[str, Any],
    timeout_s: float,
    poll_s: float = 10.0,
    log_sink: LogSink | None = None,
) -> TrainJobResult:
    """Create `job`, follow rank 0's log into `log_sink`, and return once it completes.

    Raises TrainJobError when the API refuses the job, when the controller marks it Failed (with its
    reason), or when `timeout_s` passes first (the job is left to its own activeDeadlineSeconds).
    """
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    _create(custom, job, name, namespace)
    started = time.monotonic()
    seen: list[str] = []
    follower = _LogFollower(core, name, namespace, log_sink) if log_sink else None
    while True:
        state = job_state(_get(custom, name, namespace))
        if not seen or seen[-1] != state.phase:
            seen.append(state.phase)
        if follower is not None and state.phase in ("Running", "Complete", "Failed"):
            follower.start_when_ready()
        if state.phase in ("Complete", "Failed"):
            break
        if time.monotonic() - started > timeout_s:
            raise TrainJobError(
                f"TrainJob {namespace}/{name}: still {state.phase} after {timeout_s:.0f} s; "
                "it keeps running until its activeDeadlineSeconds (kubectl delete trainjob "
                f"{name} -n {namespace} stops it now)"
            )
        time.sleep(poll_s)
    if follower is not None:
        follower.join(timeout=max(poll_s, 5.0))
    if state.phase == "Failed":
        why = f"{state.reason}: {state.message}" if state.message else (state.reason or "no reason given")
        raise TrainJobError(
            f"TrainJob {namespace}/{name} failed ({why}); see `kubectl logs -n {namespace} "
            f"-l {JOBSET_NAME_LABEL}={name}`"
        )
    return TrainJobResult(name, namespace, state.phase, time.monotonic() - started, seen)


def _create(custom: Any, job: dict[str, Any], name: str, namespace: str) -> None:
    from kubernetes.client.rest import ApiException

    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    except ApiException as exc:
        raise TrainJobError(
            f"TrainJob {namespace}/{name}: the API refused to create it: {_explain(exc)}"
        ) from None


def _get(custom: Any, name: str, namespace: str) -> dict[str, Any]:
    from kubernetes.client.rest import ApiException

    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        raise TrainJobError(f"TrainJob {namespace}/{name}: cannot read it: {_explain(exc)}") from None


def _explain(exc: Any) -> str:
    hints = {
        403: "forbidden (the pipeline's ServiceAccount needs the expo-pipeline Role of manifests/)",
        404: "not found (is Kubeflow Trainer v2 installed, with the TrainJob CRD?)",
        409: "a TrainJob of that name already exists",
        422: "invalid object",
    }
    detail = hints.get(exc.status, f"HTTP {exc.status} {exc.reason}")
    return f"{detail}; server said: {str(exc.body or '').strip()[:300]}" if exc.body else detail


class _LogFollower:
    """Follows the log of rank 0 (replicated job `node`, completion index 0) in a daemon thread."""

    def __init__(self, core: Any, name: str, namespace: str, sink: LogSink):
        self.core, self.name, self.namespace, self.sink = core, name, namespace, sink
        self.thread: threading.Thread | None = None

    def start_when_ready(self) -> None:
        if self.thread is not None:
            return
        pod = self._rank0_pod()
        if pod is None:
            return  # not scheduled yet: try again at the next poll
        self.thread = threading.Thread(target=self._follow, args=(pod,), daemon=True, name=f"log-{self.name}")
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _rank0_pod(self) -> str | None:
        selector = (
            f"{JOBSET_NAME_LABEL}={self.name},{REPLICATED_JOB_LABEL}={NODE_CONTAINER},"
            f"{COMPLETION_INDEX_LABEL}=0"
        )
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        ready = [
            p for p in pods if p.status is not None and p.status.phase in ("Running", "Succeeded", "Failed")
        ]
        return ready[0].metadata.name if ready else None

    def _follow(self, pod: str) -> None:
        try:
            resp = self.core.read_namespaced_pod_log(
                pod, self.namespace, container=NODE_CONTAINER, follow=True, _preload_content=False
            )
            pending = b""
            for chunk in resp.stream(amt=4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.sink(line.decode("utf-8", errors="replace"))
            if pending:
                self.sink(pending.decode("utf-8", errors="replace"))
        except Exception as exc:  # noqa: BLE001 - a broken log stream must not fail the training it watches
            self.sink(f"[expo] log stream of pod {pod} ended: {exc.__class__.__name__}: {exc}")
