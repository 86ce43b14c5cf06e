"""`expo submit` against a FAKE Kubeflow Pipelines REST API (an http.server on 127.0.0.1 answering the
few v2beta1 paths kfp.Client calls): the real client, the real compiled package, no cluster."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from expo.cli import main


class FakeKFPAPI(BaseHTTPRequestHandler):
    calls: list = []

    def _reply(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.calls.append(("GET", self.path, self.headers.get("Authorization"), None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({"experiments": [], "total_size": 0})
        self._reply({"error": "not found"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.calls.append(("POST", self.path, self.headers.get("Authorization"), body))
        if self.path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        if self.path == "/apis/v2beta1/runs":
            return self._reply({"run_id": "run-42", "display_name": body["display_name"]})
        self._reply({"error": "not found"}, 404)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_kfp():
    FakeKFPAPI.calls = []
    server = HTTPServer(("127.0.0.1", 0), FakeKFPAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", FakeKFPAPI.calls
    server.shutdown()


def test_submit_sends_compiled_pipeline_with_token(fake_kfp, monkeypatch, capsys):
    host, calls = fake_kfp
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok-123")
    rc = main(["submit", "--host", host, "--experiment", "expo-test", "--set", "train.arms=[exp-grpo]"])
    assert rc == 0
    assert "run-42" in capsys.readouterr().out
    run_call = next(c for c in calls if c[1] == "/apis/v2beta1/runs")
    assert run_call[2] == "Bearer tok-123"  # the token travels as a header only
    body = run_call[3]
    assert body["experiment_id"] == "exp-1"
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert "exec-train" in spec["deploymentSpec"]["executors"]
    assert "tok-123" not in json.dumps(body)


def test_submit_unreachable_host_is_one_clear_line(capsys):
    rc = main(["submit", "--host", "http://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("expo submit: error: could not submit to http://127.0.0.1:9")
    assert "\n" not in err
