"""Progress lines from inside long stages: one short line, a prefix `expo run` recognises.

Why: a stage runs as a kfp.local subprocess whose output goes to the run's log file; `expo run` shows
only its stage lines and these progress lines (expo.terminal). Run on their own (`expo explain`,
tests), the same lines are plain readable text on stderr.

    tick = Progress("train exp-grpo")
    tick.update("step 8/50  reward 0.31  expo 0.052")    # printed at most every `every_s` seconds
    with watch("explain", lambda: f"{gen.stats.sequences}/384 samples"):   # a line every few seconds
        ...                                                                # from a background thread

A line reads `[progress] LABEL: TEXT` (`parse_line` gives back (label, text)). Labels hold no ':'.
Lines are flushed at once: a subprocess's stdout is a pipe, and a buffered line would arrive late.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

PREFIX = "[progress] "
_LINE = re.compile(r"^\s*\[progress\] (?P<label>[^:\n]+): (?P<text>.*?)\s*$")


def format_line(label: str, text: str) -> str:
    return f"{PREFIX}{label.replace(':', ' ')}: {' '.join(text.split())}"


def parse_line(line: str) -> tuple[str, str] | None:
    """(label, text) of a progress line (leading spaces allowed: kfp.local indents task output), else None."""
    match = _LINE.match(line)
    return (match["label"].strip(), match["text"]) if match else None


_LAST_EMIT: dict[str, float] = {}  # label -> time.monotonic() of its latest line


def emit(label: str, text: str) -> None:
    _LAST_EMIT[label] = time.monotonic()
    print(format_line(label, text), file=sys.stderr, flush=True)


def silent_for(label: str) -> float:
    """Seconds since `label` last printed a line (infinite when it never did)."""
    last = _LAST_EMIT.get(label)
    return float("inf") if last is None else time.monotonic() - last


class Heartbeat:
    """A line for `label` from a background thread whenever the label has been silent for `quiet_s`:
    work that prints its own progress (a step's rollouts) keeps it quiet, work that cannot (a long
    backward pass) still shows it is alive. `start(text_fn)` / `stop()`; `text_fn()` gives the line."""

    def __init__(self, label: str, quiet_s: float = 20.0, poll_s: float = 2.0) -> None:
        self.label, self.quiet_s, self.poll_s = label, quiet_s, poll_s
        self._stop: threading.Event | None = None

    def start(self, text: Callable[[], str]) -> None:
        self.stop()
        stop = self._stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.poll_s):
                if silent_for(self.label) >= self.quiet_s:
                    with contextlib.suppress(Exception):  # progress must never break the work it watches
                        emit(self.label, text())

        threading.Thread(target=loop, name=f"heartbeat-{self.label}", daemon=True).start()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None


class Progress:
    """Emits `update` texts for one label, at most one line per `every_s` seconds (the first at once);
    `update(..., force=True)` always emits (a stage's last step)."""

    def __init__(self, label: str, every_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.every_s, self.clock = label, every_s, clock
        self._last: float | None = None

    def update(self, text: str, force: bool = False) -> bool:
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.every_s:
            return False
        self._last = now
        emit(self.label, text)
        return True


@contextlib.contextmanager
def watch(label: str, read: Callable[[], str | None], every_s: float = 5.0) -> Iterator[None]:
    """Emit `read()` every `every_s` seconds from a daemon thread while the block runs (when it changed),
    and once more at the end. For work that reports through counters rather than a loop of ours (a
    generator's `stats` grow per generated batch inside one `generate` call)."""
    stop = threading.Event()
    last: list[str | None] = [None]

    def tick() -> None:
        with contextlib.suppress(Exception):  # progress must never break the stage it watches
            text = read()
            if text and text != last[0]:
                last[0] = text
                emit(label, text)

    def loop() -> None:
        while not stop.wait(every_s):
            tick()

    thread = threading.Thread(target=loop, name=f"progress-{label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 1.0)
        tick()


def rate(count: float, seconds: float) -> str:
    """`123 tok/s` style rate, "-" before anything was timed."""
    return f"{count / seconds:.0f}" if seconds > 0 else "-"


__all__ = ["PREFIX", "Heartbeat", "Progress", "emit", "format_line", "parse_line", "rate", "silent_for", "watch"]
