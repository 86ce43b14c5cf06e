"""Kubeflow Trainer progress as a TrainJob's status shows it, from real two-process training runs
(torchrun, gloo): a local HTTP server speaks the status endpoint's side of the protocol (transformers'
KubeflowCallback: POST {"trainerStatus": {...}} with the pod's bearer token), the way tests/fake_http.py
stands in for the Kubernetes API, and the test reads the sequence of reports it received."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from fake_http import LocalServer
from trainkit import make_folders, run_torchrun

TOKEN = "pod-token-1"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def status_server() -> LocalServer:
    """Answers 200 to every POST and keeps (authorization, trainerStatus) of each in `.reports`."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                self.server.reports.append((self.headers.get("Authorization"), body["trainerStatus"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = LocalServer(Handler)
    server.reports = []
    return server


def train(tmp_path: Path, worker: str, *args: str) -> list[dict]:
    """Run `worker` in two processes with a TrainJob pod's status variables; the reports received."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    with status_server() as server:
        run_torchrun(worker, *args, timeout=800, env={"KUBEFLOW_TRAINER_SERVER_URL": f"{server.url}/status",
                                                      "KUBEFLOW_TRAINER_SERVER_TOKEN": str(token)})
    assert {auth for auth, _ in server.reports} == {f"Bearer {TOKEN}"}
    return [status for _, status in server.reports]


def metrics(status: dict) -> dict[str, float]:
    return {m["name"]: float(m["value"]) for m in status.get("metrics", [])}


def assert_true_progress(reports: list[dict], total: int) -> None:
    """0 % first, never backwards, 100 % last and only last; the steps counted out of the arm's total."""
    percents = [r["progressPercentage"] for r in reports]
    assert percents[0] == 0 and percents[-1] == 100 and 100 not in percents[:-1], percents
    assert percents == sorted(percents), percents
    steps = [metrics(r)["current_step"] for r in reports[1:]]
    assert steps == sorted(steps) and steps[-1] == total, steps
    assert all(metrics(r)["total_steps"] == total for r in reports[1:])
    assert reports[-1]["estimatedRemainingSeconds"] == 0


def test_exp_grpo_in_two_processes_reports_its_steps_and_expo_metrics(tmp_path: Path) -> None:
    make_folders(tmp_path, n=8)
    reports = train(tmp_path, "ddp_grpo_worker.py", str(tmp_path), str(tmp_path / "out"), "3")
    assert_true_progress(reports, total=3)
    last = metrics(reports[-1])
    assert {"loss", "expo_nll", "expo_term", "zero_variance_fraction"} <= set(last), last
    assert last["zero_variance_fraction"] == 1.0  # the worker's rewards are all zero: every group ties


def test_exp_dpo_rounds_count_as_one_run(tmp_path: Path) -> None:
    """Two rounds, one step each: one Trainer per round, one status from 0 to 100 % over both."""
    make_folders(tmp_path, n=5)
    reports = train(tmp_path, "ddp_dpo_worker.py", str(tmp_path), str(tmp_path / "out"), str(tmp_path / "dump"),
                    "2")
    assert_true_progress(reports, total=2)
    assert 50 in [r["progressPercentage"] for r in reports]  # the first round's step: half of the run
    assert {"loss", "dpo_margin"} <= set(metrics(reports[-1]))
