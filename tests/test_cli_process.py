"""`expo` as a shell runs it (a child process, warnings switched on): a reader that closes the pipe
early, an unreachable Kubeflow host and a missing output folder each end in at most one line on
stderr, never a traceback or a library's warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def expo(*args: str, stdout: int = subprocess.PIPE, unbuffered: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # every warning a library raises would show
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([sys.executable, "-m", "expo", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_pipe_closed_early_ends_quietly(tmp_path, unbuffered):
    """`expo compile --output x.yaml | head -1`, made certain: the reader is gone before the first
    line, so every write meets a closed pipe (at the first print unbuffered, at the final flush
    buffered). Exit status 141, as for a command ended by SIGPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = expo("compile", "--output", str(tmp_path / "p.yaml"), stdout=write, unbuffered=unbuffered)
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141
    assert (tmp_path / "p.yaml").is_file()  # the work was done; only its report had no reader


def test_an_unreachable_host_is_one_line():
    proc = expo("submit", "--host", "http://127.0.0.1:9")
    assert proc.returncode == 2
    # no kfp FutureWarning, no urllib3 pool / retry text: the socket's reason
    assert proc.stderr.splitlines() == [
        "expo submit: error: could not submit to http://127.0.0.1:9: Connection refused"]


def test_a_missing_output_folder_is_refused_and_not_created(tmp_path):
    target = tmp_path / "missing" / "dir" / "x.yaml"
    proc = expo("compile", "--output", str(target))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"expo compile: error: --output {target}: folder {target.parent} does not exist"]
    assert not (tmp_path / "missing").exists()
    proc = expo("compile", "--output", str(tmp_path))  # a folder, not a file
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "is a folder" in proc.stderr
