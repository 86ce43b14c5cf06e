"""Stopping a command cleanly: SIGTERM read as an interrupt, and every child process stopped with it.

`expo run` drives kfp.local, which runs each step as a child process, which runs its own workers (the
verifier pool, data loaders). Ctrl-C in a terminal reaches the whole process group, but `kill -INT`
or a scheduler's SIGTERM reaches only `expo run`: its children would run on, orphaned. So:

    with interrupts_as_exceptions():        # SIGTERM raises Interrupted, as SIGINT raises KeyboardInterrupt
        try:
            work()
        except KeyboardInterrupt:
            stopped = stop_descendants()    # SIGTERM, a grace period, then SIGKILL; returns how many
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

import psutil

GRACE_S = 5.0  # between SIGTERM and SIGKILL: a step may flush its log


class Interrupted(KeyboardInterrupt):
    """A stop requested by a signal; `signal_name` says which, `exit_code` is 128 + its number, and
    the message (`str()`) what was done about it."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum, self.signal_name = signum, signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(detail or f"by {self.signal_name}")


@contextlib.contextmanager
def interrupts_as_exceptions(on_signal: Callable[[], None] | None = None) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise `Interrupted` in the main thread (the previous
    handlers come back after it). `on_signal` runs first, before anything unwinds: what the stop
    should silence (the stage lines of children about to be killed) is silenced before they fail."""
    def raise_interrupted(signum: int, frame: object) -> None:
        if on_signal is not None:
            on_signal()
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, raise_interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_descendants(grace_s: float = GRACE_S) -> int:
    """Terminate every descendant of this process, SIGKILL those still alive after `grace_s`; returns
    how many there were."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(children)


__all__ = ["GRACE_S", "Interrupted", "interrupts_as_exceptions", "stop_descendants"]
