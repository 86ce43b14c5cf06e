"""expo.processes: SIGTERM read as an interrupt, and a process tree stopped whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from expo.processes import Interrupted, interrupts_as_exceptions, stop_descendants


def test_sigterm_raises_interrupted_with_its_exit_code_and_the_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, interrupts_as_exceptions():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert caught.value.exit_code == 143 and caught.value.signal_name == "SIGTERM"
    assert isinstance(caught.value, KeyboardInterrupt)  # the CLI's one interrupt path handles it
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_descendants_ends_children_and_grandchildren_even_those_ignoring_sigterm():
    # a child that ignores SIGTERM and starts a grandchild: both end, the stubborn one by SIGKILL
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(psutil.Process().children(recursive=True)) < 2:
        time.sleep(0.1)
    tree = psutil.Process().children(recursive=True)
    assert len(tree) == 2
    assert stop_descendants(grace_s=1.0) == 2
    child.wait(timeout=10)
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive
