"""Where kfp.local's output goes during `expo run`: everything to the run's log file, the stage lines
and progress to the terminal (expo.terminal.Console).

Why: kfp.local prints each task's executor input and outputs, every subprocess line and a warning per
task (about a thousand lines for the embedded default), and it is not thread-safe about it: two arms
run in threads, and each swaps the root logger's handlers and `builtins.print` for the duration of a
task, so a record can be lost and the indenting `print` can outlive the run (the summary table came out
indented by four spaces). So for the duration of a run, `routed_output`:

- replaces `sys.stdout`/`sys.stderr` with a `LineRouter`: each complete line goes to the log file
  (colour codes stripped) and, with `verbose`, to the terminal as well; `[progress]` lines
  (expo.progress) go to the console, attributed to the stage whose thread read them;
- makes kfp.local's per-task logger and print swaps no-ops, with one root handler for the whole run;
- wraps kfp.local's per-task entry point to learn when a task starts, whether it really executes or
  is a cache hit, how long it takes and what it returns (the end line's headline, summary.json);
- sends known-harmless warnings (custom base image, settings without local effect) to the log only;
  any other warning of this process is also shown on the console, one line each.

Everything is restored when the run ends, failed or not.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from expo.headlines import headline
from expo.progress import parse_line
from expo.terminal import Console, strip_ansi

# kfp.local's warnings that say nothing about this run (a custom image is how components are built for
# the cluster; resources, display names and Kubernetes settings only matter there).
HARMLESS_WARNINGS = (
    "You may be attemping to run a task that uses custom or non-Python base image",
    "have no effect in the current local runner",
)
_EXECUTE_PARAMS = ("task_name", "task_spec", "pipeline_resource_name", "components", "executors", "io_store")


@dataclass
class StageRecord:
    """One task of the run, as summary.json keeps it."""

    task: str  # kfp.local's task name ("evaluate-2")
    label: str  # what the console calls it ("evaluate exp-grpo")
    status: str  # done | cached | FAILED
    seconds: float
    headline: str
    outputs: dict[str, str] = field(default_factory=dict)  # artifact name -> local path

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "label": self.label, "status": self.status,
                "seconds": round(self.seconds, 2), "headline": self.headline, "outputs": self.outputs}


class StageObserver:
    """Wraps kfp.local's task entry points; keeps which stage each thread is running."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.records: list[StageRecord] = []
        self._current: dict[int, int] = {}  # thread id -> console key
        self._executed: set[int] = set()
        self._lock = threading.Lock()

    def key_of_thread(self, thread_id: int) -> int | None:
        return self._current.get(thread_id)

    def wrap_execute(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def execute(*args: Any, **kwargs: Any) -> Any:
            bound = {**dict(zip(_EXECUTE_PARAMS, args)), **kwargs}
            task = str(bound.get("task_name", "task"))
            label = stage_label(task, bound)
            key = self.console.stage_started(label)
            thread = threading.get_ident()
            previous = self._current.get(thread)
            self._current[thread] = key
            started = time.monotonic()
            status = "FAILED"
            outputs: dict[str, Any] = {}
            try:
                outputs, task_status = original(*args, **kwargs)
                status = "FAILED" if getattr(task_status, "name", "") == "FAILURE" else (
                    "done" if key in self._executed else "cached")
                return outputs, task_status
            finally:
                seconds = time.monotonic() - started
                line = _headline(task, outputs) if status != "FAILED" else ""
                self.console.stage_finished(key, status, seconds, line)
                with self._lock:
                    paths = _artifact_paths(outputs)
                    self.records.append(StageRecord(task, label, status, seconds, line, paths))
                if previous is None:
                    self._current.pop(thread, None)
                else:
                    self._current[thread] = previous

        return execute

    def wrap_run(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """kfp.local's call that really runs a task's subprocess (never reached on a cache hit)."""
        def run(*args: Any, **kwargs: Any) -> Any:
            key = self._current.get(threading.get_ident())
            if key is not None:
                self._executed.add(key)
                self.console.stage_running(key)
            return original(*args, **kwargs)

        return run


def base_task(task: str) -> str:
    """kfp.local's task name without the suffix that tells two tasks of one component apart."""
    return re.sub(r"-\d+$", "", task)


def stage_label(task: str, bound: dict[str, Any]) -> str:
    """"train grpo", "evaluate base": the arm or model a train/evaluate task is for, from its inputs."""
    base = base_task(task)
    if base not in ("train", "evaluate"):
        return base
    with contextlib.suppress(Exception):  # a label is worth no failure
        from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

        args = OrchestratorUtils.make_task_arguments(bound["task_spec"].inputs, bound["io_store"])
        which = args.get("arm") or args.get("name")
        if which:
            return f"{base} {which}"
    return base


def _headline(task: str, outputs: dict[str, Any]) -> str:
    metrics = next((dict(v.metadata) for v in outputs.values() if type(v).__name__ == "Metrics"), {})
    params = {k: v for k, v in outputs.items() if not hasattr(v, "uri")}
    return headline(base_task(task), metrics, params, _artifact_paths(outputs))


def _artifact_paths(outputs: dict[str, Any]) -> dict[str, str]:
    return {name: str(getattr(v, "path", "") or v.uri) for name, v in outputs.items() if hasattr(v, "uri")}


class LineRouter(io.TextIOBase):
    """A text stream that splits what each thread writes into lines and routes every line."""

    def __init__(self, log: TextIO, observer: StageObserver, echo: TextIO | None = None) -> None:
        super().__init__()
        self.log, self.observer, self.echo = log, observer, echo
        self._partial: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        with self._lock:
            *lines, rest = (self._partial.pop(thread, "") + text).split("\n")
            if rest:
                self._partial[thread] = rest
            for line in lines:
                self._route(line, thread)
        return len(text)

    def _route(self, line: str, thread: int) -> None:
        clean = strip_ansi(line).rstrip("\r")
        self.log.write(clean + "\n")
        if self.echo is not None:
            self.echo.write(clean + "\n")
        found = parse_line(clean)
        if found is not None:
            self.observer.console.progress(self.observer.key_of_thread(thread), *found)

    def flush(self) -> None:
        with self._lock:
            for thread, rest in list(self._partial.items()):
                self._route(rest, thread)
            self._partial.clear()
            self.log.flush()
            if self.echo is not None:
                self.echo.flush()


@contextlib.contextmanager
def routed_output(console: Console, log_path: Path, verbose: bool = False) -> Iterator[StageObserver]:
    """Route kfp.local's output as the module docstring says, for the duration of the block."""
    from kfp.local import logging_utils, task_dispatcher
    from kfp.local.orchestrator import task_executor

    observer = StageObserver(console)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8", buffering=1) as log:  # line-buffered: `tail -f` follows it
        router = LineRouter(log, observer, echo=sys.stdout if verbose else None)
        root = logging.getLogger()
        saved = (sys.stdout, sys.stderr, warnings.showwarning, root.level, root.handlers[:],
                 logging_utils.local_logger_context, logging_utils.indented_print,
                 task_executor.execute_single_task, task_dispatcher.run_single_task_implementation,
                 builtins.print)
        handler = logging.StreamHandler(router)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

        def show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                         line: str | None = None) -> None:
            text = str(message)
            router.write(warnings.formatwarning(message, category, filename, lineno, line))
            if not any(known in text for known in HARMLESS_WARNINGS):
                console.warning(f"{category.__name__}: {text.splitlines()[0] if text else ''}")

        try:
            sys.stdout = sys.stderr = router
            warnings.showwarning = show_warning
            root.handlers[:] = [handler]
            root.setLevel(logging.INFO)
            logging_utils.local_logger_context = contextlib.nullcontext
            logging_utils.indented_print = lambda num_spaces=4: contextlib.nullcontext()
            task_executor.execute_single_task = observer.wrap_execute(task_executor.execute_single_task)
            task_dispatcher.run_single_task_implementation = observer.wrap_run(
                task_dispatcher.run_single_task_implementation)
            yield observer
        finally:
            router.flush()
            (sys.stdout, sys.stderr, warnings.showwarning, level, handlers,
             logging_utils.local_logger_context, logging_utils.indented_print,
             task_executor.execute_single_task, task_dispatcher.run_single_task_implementation,
             builtins.print) = saved
            root.handlers[:] = handlers
            root.setLevel(level)


__all__ = ["HARMLESS_WARNINGS", "LineRouter", "StageObserver", "StageRecord", "routed_output", "stage_label"]
