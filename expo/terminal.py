"""What `expo run` shows on the terminal: one line per stage as it starts and ends, progress inside
long stages, and aligned tables.

Why: a local run is minutes long and kfp.local prints about a thousand lines of executor dumps; the
user wants to know which stage runs, that it is alive, and what it produced. Everything else goes to
the run's log file (pipelines/local_output.py routes it). The rules:

- a stage prints `started` when it really runs, and ends with `done`/`FAILED` and its wall time, or with
  `cached` alone when kfp.local served it from cache; the end line carries the stage's headline;
- while stages run, the terminal gets a line at least every `interval_s` seconds (the latest progress
  line of the running stage silent longest, or `still running`), so a silent minute never happens; any
  line counts, and stages running side by side (the arms) take turns instead of each printing its own
  heartbeat, so the line count grows with the run's length, not with how many stages share it; on a
  terminal a live status line shows the latest progress in between, rewritten in place;
- colour and the live line only on a terminal (never in a file or a pipe), and never with $NO_COLOR.

    console = Console(sys.stdout)
    key = console.stage_started("train grpo")     # registered; printed by stage_running()
    console.stage_running(key)
    console.progress(key, "train grpo", "step 8/50  reward 0.31")
    console.stage_finished(key, "done", 12.5, "50 steps, last reward 0.312")
    print("\\n".join(format_table(["model", "L5 p@1"], [["base", "0.012"]])))
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LABEL_WIDTH = 22  # "generate-explanations" and a space
STATUS_WIDTH = 8
TIME_WIDTH = 6
_NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*|\.\d+|nan|inf)%?$")
_COLOURS = {"done": "\x1b[32m", "cached": "\x1b[2m", "FAILED": "\x1b[31m", "label": "\x1b[36m",
            "warning": "\x1b[33m"}
_RESET = "\x1b[0m"


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def use_colour(stream: TextIO) -> bool:
    """Colour (and the live status line) only on a terminal, and not with $NO_COLOR or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    """Rows under a header, each column as wide as its widest cell, two spaces apart, no trailing
    spaces. `align` has one letter per column, `l` or `r`; by default a column whose cells are all
    numbers (or `-`) is right-aligned, so decimal points line up. Every line but the last column's
    overhang has the same width, which is what keeps columns from drifting."""
    table = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    ncols = len(header)
    if any(len(row) != ncols for row in table):
        raise ValueError(f"every row needs {ncols} cells")
    if align is None:
        align = "".join("r" if rows and all(_NUMBER.match(r[i]) or r[i] == "-" for r in table[1:]) else "l"
                        for i in range(ncols))
    widths = [max(len(row[i]) for row in table) for i in range(ncols)]
    lines = []
    for row in table:
        cells = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)]
        lines.append("  ".join(cells).rstrip())
    return lines


def duration(seconds: float) -> str:
    """4.2s, 1m05s, 1h02m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


@dataclass
class _Stage:
    label: str
    started: float
    last_line: float
    running: bool = False  # it really executes (not a cache hit); its `started` line is out
    latest: str = ""  # newest progress text, not printed yet when `fresh`
    fresh: bool = False


@dataclass
class Console:
    """Stage lines and progress on `out` (thread-safe: kfp.local runs the arms' tasks in threads)."""

    out: TextIO
    colour: bool | None = None
    interval_s: float = 28.0  # a line at least this often while a stage runs (the bar: every 30 s)
    clock: Callable[[], float] = time.monotonic
    lines: int = 0  # permanent lines written so far
    last_line_at: float | None = None  # when the latest permanent line was written (clock time)
    muted: bool = False  # set when the run is being stopped: its killed stages print nothing more
    _stages: dict[int, _Stage] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _next_key: int = 0
    _status_shown: bool = False
    _ticker: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.colour is None:
            self.colour = use_colour(self.out)

    # -- permanent lines ------------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        with self._lock:
            if self.muted:
                return
            self._clear_status()
            self.out.write((text if self.colour else strip_ansi(text)) + "\n")
            self.lines += 1
            self.last_line_at = self.clock()
            self._draw_status()
            self.out.flush()

    def _paint(self, text: str, what: str) -> str:
        return f"{_COLOURS[what]}{text}{_RESET}" if self.colour else text

    def _stage_line(self, label: str, status: str, seconds: float | None, detail: str = "") -> None:
        when = duration(seconds) if seconds is not None else ""
        painted = self._paint(f"{status:<{STATUS_WIDTH}}", status) if status in _COLOURS else \
            f"{status:<{STATUS_WIDTH}}"
        text = f"{self._paint(f'{label:<{LABEL_WIDTH}}', 'label')} {painted}{when:>{TIME_WIDTH}}"
        self.line(f"{text}  {detail}".rstrip() if detail else text.rstrip())

    def warning(self, text: str) -> None:
        self.line(self._paint("warning: ", "warning") + " ".join(text.split()))

    # -- stages ---------------------------------------------------------------------------------

    def stage_started(self, label: str) -> int:
        """Register a stage (nothing is printed: a cache hit will say `cached` alone); returns its key."""
        with self._lock:
            key = self._next_key
            self._next_key += 1
            now = self.clock()
            self._stages[key] = _Stage(label, now, now)
            return key

    def stage_running(self, key: int) -> None:
        """The stage really executes: its `started` line."""
        with self._lock:
            stage = self._stages.get(key)
            if stage is None or stage.running:
                return
            stage.running = True
            stage.last_line = self.clock()
            self._stage_line(stage.label, "started", None)

    def progress(self, key: int | None, label: str, text: str) -> None:
        """A progress line from the stage `key` (None: the one stage whose label is `label`, if any)."""
        with self._lock:
            if key is None:
                key = next((k for k, s in self._stages.items() if s.label == label), None)
            stage = self._stages.get(key) if key is not None else None
            if stage is None:
                return
            # "warm-up: step 8/1500" inside prepare-model; a stage's own label is not repeated
            stage.latest = text if label == stage.label else f"{label}: {text}"
            stage.fresh = True
            self._draw_status()

    def stage_finished(self, key: int, status: str, seconds: float, headline: str = "") -> None:
        """status: done | cached | FAILED. A cached stage shows no time (it took none of its own)."""
        with self._lock:
            stage = self._stages.pop(key, None)
            if stage is None:
                return
            self._stage_line(stage.label, status, None if status == "cached" else seconds, headline)

    def tick(self) -> None:
        """Called about once a second: after `interval_s` without a line, one progress line, from
        the running stage whose own last line is oldest."""
        with self._lock:
            now = self.clock()
            running = [s for s in self._stages.values() if s.running]
            quiet = self.last_line_at is None or now - self.last_line_at >= self.interval_s
            if running and quiet:
                stage = min(running, key=lambda s: s.last_line)
                stage.last_line = now
                detail = stage.latest if stage.fresh else "still running"
                stage.fresh = False
                self._stage_line(stage.label, "running", now - stage.started, detail)
            self._draw_status()

    # -- the ticker thread and the live status line -----------------------------------------------

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(1.0):
                self.tick()

        self._ticker = threading.Thread(target=loop, name="expo-console", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        with self._lock:
            self._clear_status()
            self.out.flush()

    def _draw_status(self) -> None:
        if not self.colour:
            return
        now = self.clock()
        parts = [f"{s.label} {duration(now - s.started)}" + (f" {s.latest}" if s.latest else "")
                 for s in self._stages.values() if s.running]
        if not parts:
            self._clear_status()
            return
        width = shutil.get_terminal_size((100, 24)).columns - 1
        self.out.write("\r\x1b[K" + " | ".join(parts)[:width])
        self.out.flush()
        self._status_shown = True

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\x1b[K")
            self._status_shown = False


__all__ = ["Console", "duration", "format_table", "strip_ansi", "use_colour"]
