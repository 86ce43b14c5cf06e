"""expo.processes: SIGTERM read as an interrupt, and a process tree stopped whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from expo.processes import Interrupted, interrupts_as_exceptions


def test_sigterm_raises_interrupted_with_its_exit_code_and_the_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, interrupts_as_exceptions():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert caught.value.exit_code == 143 and caught.value.signal_name == "SIGTERM"
    assert isinstance(caught.value, KeyboardInterrupt)  # the CLI's one interrupt path handles it
    assert signal.getsignal(signal.SIGTERM) is before


# Run in a process of its own: the test process has other children (the session's MLflow server,
# verifier pools) that stop_descendants would rightly count and stop.
_TREE = """
import json, subprocess, sys, time
import psutil
from expo.processes import stop_descendants
code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")
child = subprocess.Popen([sys.executable, "-c", code])
deadline = time.monotonic() + 30
while time.monotonic() < deadline and len(psutil.Process().children(recursive=True)) < 2:
    time.sleep(0.1)
tree = psutil.Process().children(recursive=True)
stopped = stop_descendants(grace_s=1.0)
_, alive = psutil.wait_procs(tree, timeout=5)
print(json.dumps({"tree": len(tree), "stopped": stopped, "alive": len(alive)}))
"""


def test_stop_descendants_ends_children_and_grandchildren_even_those_ignoring_sigterm():
    # a child that ignores SIGTERM and starts a grandchild: both end, the stubborn one by SIGKILL
    import json

    out = subprocess.run([sys.executable, "-c", _TREE], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"tree": 2, "stopped": 2, "alive": 0}
