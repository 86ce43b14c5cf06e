"""Pytest fixtures for MLflow: a real `mlflow server` on 127.0.0.1 (started once per test session, only
when a test asks for it) and an embedded SQLite store per test. Imported by tests/conftest.py.

The server uses a SQLite backend and serves artifacts from a folder, both in a session temp dir; one
worker. Startup costs 5-20 s on 2 busy cores, so tests share it and use unique model/experiment names.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mlflow_executable() -> str:
    beside = Path(sys.executable).parent / "mlflow"
    return str(beside) if beside.exists() else (shutil.which("mlflow") or "mlflow")


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server not healthy after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


def _launch(root: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    """Start `mlflow server` on a free port with its store in `root` (`extra`: more server options)."""
    port = free_port()
    log = root / "server.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [_mlflow_executable(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env,
                                start_new_session=True)
    atexit.register(_stop, proc)  # never leave a server behind, even if the fixture never ran
    return proc, f"http://127.0.0.1:{port}", log


_EARLY: list[tuple[subprocess.Popen, str, Path]] = []


def start_early(items: list[pytest.Item]) -> None:
    """Called from conftest's pytest_collection_finish: launch the server as soon as we know a selected
    test needs it, so its 5-20 s startup overlaps the tests that run before the first one that waits."""
    if not _EARLY and any("mlflow_server" in getattr(item, "fixturenames", ()) for item in items):
        _EARLY.append(_launch(Path(tempfile.mkdtemp(prefix="expo-mlflow-server-"))))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real MLflow tracking + registry server for this session (http://127.0.0.1:PORT)."""
    early = bool(_EARLY)
    proc, url, log = _EARLY.pop() if early else _launch(tmp_path_factory.mktemp("mlflow-server"))
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        _stop(proc)
        if early:  # made with mkdtemp, outside pytest's own temp folders
            shutil.rmtree(log.parent, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow runs uvicorn as a child), SIGKILL after 2 s: a
    throwaway test server needs no graceful drain."""
    for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with its schema migrated (10+ s on busy cores: done once)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture
def sqlite_store(tmp_path: Path, _sqlite_template: Path) -> str:
    """A fresh embedded store for one test: sqlite:///<tmp>/mlflow.db (artifacts in <tmp>/mlartifacts),
    copied from the migrated template."""
    shutil.copy2(_sqlite_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses (registered models and experiments live as long as the server)."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their store explicitly: an outer MLFLOW_TRACKING_URI must not leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def make_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: a saved tiny Qwen2 + char tokenizer (safetensors) whose weights depend on `seed`, so
    different seeds are different models and one seed is the same content (same fingerprint)."""
    from expo.artifacts import write_card
    from expo.scratch_models import char_tokenizer, tiny_qwen2

    root = tmp_path_factory.mktemp("models")
    lock = threading.Lock()  # racing-registration tests call this from several threads

    def make(seed: int = 0, arm: str = "exp-grpo") -> Path:
        out = root / f"seed{seed}-{arm}"
        with lock:
            if out.exists():
                return out
            tok = char_tokenizer()
            model = tiny_qwen2(tok, hidden=32, layers=1, heads=2, max_positions=128, seed=seed)
            model.save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out)
            write_card(out, {"base": "builtin:tiny", "arm": arm})
            (out / "checkpoints" / "checkpoint-1").mkdir(parents=True)  # must not be registered
            (out / "checkpoints" / "checkpoint-1" / "optimizer.pt").write_bytes(b"x" * 10)
            return out

    return make
