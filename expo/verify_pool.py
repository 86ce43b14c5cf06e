r"""The verifier's worker processes: Math-Verify judges (answer, gold) pairs there, each under a timeout.

Why: Math-Verify (sympy) takes ~2.5 ms a pair, but a hostile answer (`9^{9^{9^9}}`, thousands of
nested braces) can run for ever, and Math-Verify's own timeouts use `signal.alarm`, which works only
in a process's main thread (TRL and the evaluation call the verifier from anywhere). So:
- workers judge *chunks* of pairs (one pipe message per ~32 pairs, so IPC is not what limits the
  speed-up) and time each pair with their own SIGALRM timer (a soft timeout: the pair scores 0);
- the parent enforces a hard deadline of `timeout_s + HARD_GRACE_S` per pair from a shared-memory
  clock that the worker stamps before each pair: a worker stuck where no signal reaches (C code) is
  killed, its pair scores 0, the rest of its chunk is re-queued and a replacement worker starts.
Workers come from a `forkserver`: a clean interpreter that preloads this module and Math-Verify, never
a fork of a parent that may hold torch's threads. A replacement is ready in ~0.3 s, most of it warm-up
(a `spawn`ed one takes ~1.6 s, measured here). Unlike a plain spawn-style pool, workers never import the
caller's main module (`_without_main`): the verifier works from any script, with or without an
`if __name__ == "__main__":` guard, from `python -c`, a notebook, and a script read from standard input
(whose "file" `<stdin>` a worker could not re-run). Only a custom `judge_fn` defined in the main module
needs it imported, and so the guard.

How: `expo.verify` (answer extraction, `rewards`, `judge_batch`) is the entry point; it sends its
de-duplicated pairs to `default_pool().run(pairs, timeout_s)`. A pool of one's own, e.g. to measure
(`bench/verify.py`) or to judge with another function:
    with VerifierPool(2) as pool:
        outcomes = pool.run([("0.5", "\\frac{1}{2}")], timeout_s=5.0)  # [Outcome(1.0, seconds, False)]
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for
from typing import Any, Callable, Sequence

from expo.errors import ConfigError, ExpoError

HARD_GRACE_S = 0.5  # a pair still running at timeout_s + this gets its worker killed
STARTUP_TIMEOUT_S = 120.0  # importing sympy in a new worker on a loaded 2-core machine takes seconds
MAX_CHUNK = 32  # pairs per message: ~80 ms of work against ~0.1 ms of IPC

Judge = Callable[[str | None, str], float | None]


class VerifyError(ExpoError):
    """The verifier was called with mismatched or unusable input, or its workers cannot start."""


@dataclass(frozen=True)
class Outcome:
    """One judgement: the reward, the seconds it took in its worker, and whether it ran out of time."""

    reward: float | None
    seconds: float
    timed_out: bool


# ---------------------------------------------------------------------------------------------------
# Judging (worker side)

_GOLD_CACHE: dict[str, list[Any]] = {}  # per worker: a group's G rollouts share one parsed gold


def judge(answer: str | None, gold: str) -> float | None:
    """Math-Verify's verdict on one pair; None when the gold does not parse. Runs inside a worker."""
    parsed_gold = _GOLD_CACHE.get(gold)
    if parsed_gold is None:
        if len(_GOLD_CACHE) > 4096:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[gold] = []  # stays empty if parsing times out: the next pair skips this gold
        parsed_gold = _GOLD_CACHE[gold] = _parse(gold)
    if not parsed_gold:
        return None
    if answer is None:
        return 0.0
    parsed = _parse(answer)
    if not parsed:
        return 0.0
    from math_verify import verify

    return 1.0 if verify(parsed_gold, parsed, timeout_seconds=None) else 0.0


def _parse(latex: str) -> list[Any]:
    from math_verify import LatexExtractionConfig, parse

    # Wrapping in \boxed{} makes Math-Verify read the whole string as one answer; timeouts are ours.
    return parse("\\boxed{" + latex + "}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                 fallback_mode="no_fallback", extraction_mode="first_match", parsing_timeout=None)


# Pairs that pay sympy's lazy first-use costs (up to ~1 s for the first symbolic comparison) at worker
# start, not inside the first timed pair: numbers, expressions, intervals, sets, equations.
_WARMUP = [("0.5", "\\frac{1}{2}"), ("x^2+1", "1+x^2"), ("(1,2]", "[1,2]"), ("\\{1,2\\}", "\\{1,3\\}"),
           ("x=2", "2")]


class _ItemTimeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException, so no `except Exception` in sympy swallows it."""


_armed = False  # set only while a pair runs: a late alarm between pairs is ignored


def _on_alarm(signum: int, frame: Any) -> None:
    if _armed:
        raise _ItemTimeout


def _timed(judge_fn: Judge, answer: str | None, gold: str,
           timeout_s: float) -> tuple[float | None, float, bool]:
    """(reward, seconds, timed_out) for one pair under the soft timer."""
    global _armed
    t0 = time.perf_counter()
    try:
        _armed = True
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            reward, timed_out = judge_fn(answer, gold), False
        finally:
            _armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _ItemTimeout:
        # A gold whose parse ran out of time stays cached as unparseable: that pair cannot be judged.
        reward, timed_out = (None if _GOLD_CACHE.get(gold) == [] else 0.0), True
    except Exception:  # MemoryError under the address-space cap, or a judge bug: not a right answer
        logging.getLogger(__name__).debug("judging failed", exc_info=True)
        reward, timed_out = 0.0, False
    return reward, time.perf_counter() - t0, timed_out


def _worker_main(conn: Any, clock: Any, slot: int, judge_fn: Judge, max_memory_mb: int | None) -> None:
    """A worker's life: warm up, say ready, then judge chunks until told to stop or the parent goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then kills us
    signal.signal(signal.SIGALRM, _on_alarm)
    if max_memory_mb:
        import resource

        # Towers of powers ask for gigabytes: fail fast with MemoryError instead of swapping the node.
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = max_memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
    _quiet_math_verify()
    if judge_fn is judge:
        for answer, gold in _WARMUP:
            _timed(judge_fn, answer, gold, timeout_s=STARTUP_TIMEOUT_S)
        _GOLD_CACHE.clear()
    try:
        conn.send(("ready",))
        while (message := conn.recv()) is not None:
            chunk_id, tasks, timeout_s = message
            results = []
            for k, (answer, gold) in enumerate(tasks):
                clock[2 * slot] = k  # which pair of the chunk runs, and since when: the parent's deadline
                clock[2 * slot + 1] = time.monotonic()
                results.append(_timed(judge_fn, answer, gold, timeout_s))
            clock[2 * slot + 1] = 0.0
            conn.send(("done", chunk_id, results))
    except (EOFError, OSError):
        return  # the parent closed our pipe (it is gone, or gave up on us): nothing left to do


def _quiet_math_verify() -> None:
    import math_verify.grader
    import math_verify.parser

    # We pass timeout None on purpose (our timer covers parse and verify together): skip its warning.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    logging.getLogger("math_verify").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------------
# Starting workers without the caller's main module

# multiprocessing tells every spawn/forkserver child to re-import the parent's `__main__` (by path or
# module name) before it unpickles its target. Our workers need nothing from it, and importing it is
# what breaks: a script read from stdin has the path `<stdin>`, which does not exist, and a script
# without a main guard would run again inside each worker. The child re-imports main only when the
# preparation data says so, so while this thread starts one of our workers the data leaves it out.
# The wrapper is installed once and changes nothing for any other thread or any other process start.
_launching = threading.local()
_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


def _install_preparation_filter() -> None:
    from multiprocessing import spawn

    original = spawn.get_preparation_data
    if getattr(original, "_expo_filter", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        if getattr(_launching, "without_main", False):
            for key in _MAIN_KEYS:
                data.pop(key, None)
        return data

    get_preparation_data._expo_filter = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def _needs_main(judge_fn: Judge) -> bool:
    """A judge defined in the main script can only be unpickled by a worker that imported it."""
    return getattr(judge_fn, "__module__", None) in ("__main__", "__mp_main__")


def _start_process(process: Any, without_main: bool) -> None:
    """`process.start()`, leaving the caller's main module out of the child when `without_main`."""
    if not without_main:
        process.start()
        return
    _install_preparation_filter()
    _launching.without_main = True
    try:
        process.start()
    finally:
        _launching.without_main = False


# ---------------------------------------------------------------------------------------------------
# The pool (parent side)


@dataclass
class _Chunk:
    id: int
    indices: list[int]  # positions in the batch
    tasks: list[tuple[str | None, str]]


class _Worker:
    """One worker process, its pipe, and the chunk it is judging (None when idle)."""

    def __init__(self, process: Any, conn: Any) -> None:
        self.process, self.conn = process, conn
        self.ready = False
        self.chunk: _Chunk | None = None
        self.started = time.monotonic()


class _Batch:
    """The pairs of one `run` call: a queue of chunks and the outcomes settled so far."""

    def __init__(self, tasks: Sequence[tuple[str | None, str]], timeout_s: float, size: int,
                 ids: Any) -> None:
        self.timeout_s, self.ids = timeout_s, ids
        self.outcomes: list[Outcome | None] = [None] * len(tasks)
        self.remaining = len(tasks)
        self.fruitless_deaths = 0  # workers lost before starting any pair of their chunk
        self.queue: deque[_Chunk] = deque()
        for lo in range(0, len(tasks), size):
            self.requeue(list(range(lo, min(lo + size, len(tasks)))), list(tasks[lo : lo + size]))

    def requeue(self, indices: list[int], tasks: list[tuple[str | None, str]], front: bool = False) -> None:
        if indices:
            chunk = _Chunk(next(self.ids), indices, tasks)
            self.queue.appendleft(chunk) if front else self.queue.append(chunk)

    def settle(self, i: int, outcome: Outcome) -> None:
        if self.outcomes[i] is None:
            self.remaining -= 1
        self.outcomes[i] = outcome


class VerifierPool:
    """Worker processes that judge (answer, gold) pairs, each pair under a hard deadline.

    Thread-safe: concurrent calls take turns (one batch already keeps every worker busy). Workers
    start on first use and stop at `close()` (the default pool closes at interpreter exit).
    """

    def __init__(self, workers: int | None = None, *, judge_fn: Judge = judge,
                 max_memory_mb: int | None = 4096, start_method: str | None = None) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"VerifierPool.workers: must be >= 1 (got {workers})")
        # A process forked from one whose forkserver runs inherits that server's state but cannot use
        # it (not its child): there, spawn instead.
        inherited = _forkserver_owner not in (None, os.getpid())
        start_method = start_method or ("spawn" if inherited else "forkserver")
        if start_method not in mp.get_all_start_methods():
            raise ConfigError(f"VerifierPool.start_method: {start_method!r} is not available here "
                              f"(available: {', '.join(mp.get_all_start_methods())})")
        self.workers = workers or usable_cpus()
        self.closed = False
        self._judge, self._max_memory_mb = judge_fn, max_memory_mb
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # Workers fork from a server that has already imported sympy and Math-Verify (~1 s saved
            # per start). Global to this process's forkserver, and ignored if it is already running.
            self._ctx.set_forkserver_preload([__name__, "math_verify"])
        self._clock = self._ctx.RawArray("d", 2 * self.workers)  # per worker: [pair index, start time]
        self._slots: list[_Worker | None] = [None] * self.workers
        self._lock = threading.Lock()
        self._ids = iter(range(2**62))
        self._pid = os.getpid()

    def start(self) -> None:
        """Start every worker now and wait until all are warm (otherwise the first batch pays for it)."""
        with self._lock:
            self._check_usable()
            batch = _Batch([], 1.0, 1, self._ids)
            self._dispatch(batch, self.workers)
            while not all(w is not None and w.ready for w in self._slots):
                self._collect(batch, self.workers)
                self._enforce_deadlines(batch, self.workers)
                self._dispatch(batch, self.workers)

    def run(self, tasks: Sequence[tuple[str | None, str]], timeout_s: float, parallel: bool = True,
            chunk_size: int | None = None) -> list[Outcome]:
        """One Outcome per (answer, gold) pair, in order; `parallel=False` uses a single worker."""
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"VerifierPool.run chunk_size: must be >= 1 (got {chunk_size})")
        if not tasks:
            return []
        n = self.workers if parallel else 1
        # At least 4 chunks a worker so they finish together; at most MAX_CHUNK pairs a message.
        size = chunk_size or max(1, min(MAX_CHUNK, math.ceil(len(tasks) / (4 * n))))
        with self._lock:
            self._check_usable()
            batch = _Batch(tasks, timeout_s, size, self._ids)
            try:
                while batch.remaining:
                    self._dispatch(batch, n)
                    self._collect(batch, n)
                    self._enforce_deadlines(batch, n)
            finally:
                self._abandon_busy()  # only after an error (e.g. KeyboardInterrupt): no stale chunk survives
        return [o for o in batch.outcomes if o is not None]

    def worker_pids(self) -> list[int]:
        """PIDs of the live workers (to watch their CPU time or memory)."""
        return [w.process.pid for w in self._slots if w is not None and w.process.is_alive()]

    def _check_usable(self) -> None:
        if self.closed or self._pid != os.getpid():
            raise VerifyError("this VerifierPool is closed or belongs to a parent process; make a new one")

    def close(self) -> None:
        """Stop the workers (politely, then by force). Safe to call twice and at interpreter exit."""
        if self._pid != os.getpid():
            return  # a forked child's inherited copy: the workers belong to the parent
        locked = self._lock.acquire(timeout=5.0)  # a daemon thread may hold it mid-batch at exit
        try:
            workers = [w for w in self._slots if w is not None]
            for w in workers:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
            for w in workers:
                w.process.join(timeout=1.0)
                _kill(w)
                w.conn.close()
            self._slots = [None] * self.workers
            self.closed = True
        finally:
            if locked:
                self._lock.release()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the batch loop ---------------------------------------------------------------------------

    def _dispatch(self, batch: _Batch, n: int) -> None:
        for i in range(n):
            w = self._slots[i]
            if w is None:
                self._start(i)
            elif w.ready and w.chunk is None and batch.queue:
                w.chunk = batch.queue.popleft()
                self._clock[2 * i], self._clock[2 * i + 1] = -1, 0.0
                try:
                    w.conn.send((w.chunk.id, w.chunk.tasks, batch.timeout_s))
                except OSError:
                    pass  # the worker died; its sentinel reports it and the chunk is re-queued

    def _collect(self, batch: _Batch, n: int) -> None:
        active = [w for w in self._slots[:n] if w is not None and (not w.ready or w.chunk is not None)]
        if not active:
            return
        timeout = min(1.0, max(0.0, self._next_deadline(batch, n) - time.monotonic()))
        ready = wait_for([w.conn for w in active] + [w.process.sentinel for w in active], timeout)
        for i, w in enumerate(self._slots[:n]):
            if w is None:
                continue
            alive = self._receive(w, batch) if w.conn in ready else True
            if not alive or w.process.sentinel in ready:
                self._lose(i, batch, overdue=False)

    def _receive(self, w: _Worker, batch: _Batch) -> bool:
        """Handle one message from w; False when its pipe is closed (the worker is gone)."""
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            return False
        if message[0] == "ready":
            w.ready = True
        elif w.chunk is not None and message[1] == w.chunk.id:
            for index, (reward, seconds, timed_out) in zip(w.chunk.indices, message[2]):
                batch.settle(index, Outcome(reward, seconds, timed_out))
            w.chunk = None
        return True

    def _enforce_deadlines(self, batch: _Batch, n: int) -> None:
        now = time.monotonic()
        for i, w in enumerate(self._slots[:n]):
            if w is None:
                continue
            if not w.ready and now - w.started > STARTUP_TIMEOUT_S:
                raise VerifyError(f"a verifier worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
            start = self._clock[2 * i + 1]
            if w.chunk is not None and start > 0 and now - start > batch.timeout_s + HARD_GRACE_S:
                self._lose(i, batch, overdue=True)

    def _next_deadline(self, batch: _Batch, n: int) -> float:
        deadline = time.monotonic() + 1.0
        for i, w in enumerate(self._slots[:n]):
            start = self._clock[2 * i + 1]
            if w is not None and w.chunk is not None and start > 0:
                deadline = min(deadline, start + batch.timeout_s + HARD_GRACE_S)
        return deadline

    # -- losing and replacing workers -------------------------------------------------------------

    def _lose(self, i: int, batch: _Batch, overdue: bool) -> None:
        """Worker i is stuck (overdue) or dead: settle its current pair as 0, re-queue the rest."""
        w = self._slots[i]
        assert w is not None
        self._slots[i] = None  # the next dispatch starts a replacement
        _kill(w)
        while w.conn.poll(0) and self._receive(w, batch):
            pass  # it said ready, or finished its chunk, just before the end: keep that
        w.conn.close()
        if not w.ready:
            hint = ("a judge from the main script makes workers import it, so guard its top level with "
                    "`if __name__ == '__main__':`; otherwise " if _needs_main(self._judge) else "")
            raise VerifyError(f"a verifier worker exited while starting (exit code {w.process.exitcode}): "
                              f"{hint}see the worker's error output above")
        chunk = w.chunk
        if chunk is None:
            return
        pos, start = int(self._clock[2 * i]), self._clock[2 * i + 1]
        elapsed = time.monotonic() - start if start > 0 else 0.0
        # Killed for a deadline, the pair that ran at the kill is the culprit only if it was itself
        # overdue (the worker may have moved on to a fresh pair an instant before).
        culprit = 0 <= pos < len(chunk.indices) and (not overdue or elapsed > batch.timeout_s + HARD_GRACE_S)
        if culprit:  # timed out if killed for its deadline; else the worker crashed on this pair
            batch.settle(chunk.indices[pos], Outcome(0.0, elapsed, overdue))
        elif not overdue:
            batch.fruitless_deaths += 1
            if batch.fruitless_deaths > 3 * self.workers:
                raise VerifyError("verifier workers keep dying before judging anything; "
                                  "see their error output")
        keep = [k for k in range(len(chunk.indices)) if not (culprit and k == pos)]
        batch.requeue([chunk.indices[k] for k in keep], [chunk.tasks[k] for k in keep], front=True)

    def _start(self, i: int) -> None:
        self._clock[2 * i], self._clock[2 * i + 1] = -1, 0.0
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, name=f"expo-verify-{i}", daemon=True,
                                    args=(child_conn, self._clock, i, self._judge, self._max_memory_mb))
        global _forkserver_owner
        try:
            _start_process(process, without_main=not _needs_main(self._judge))
            self._slots[i] = _Worker(process, parent_conn)
        except (OSError, AssertionError, ValueError) as exc:  # e.g. called inside a daemonic process
            raise VerifyError(f"cannot start a verifier worker process: {exc}") from exc
        finally:
            child_conn.close()
        if self._ctx.get_start_method() == "forkserver":
            _forkserver_owner = _forkserver_owner or os.getpid()

    def _abandon_busy(self) -> None:
        for i, w in enumerate(self._slots):
            if w is not None and w.chunk is not None:
                _kill(w)
                w.conn.close()
                self._slots[i] = None


def _kill(w: _Worker) -> None:
    if w.process.is_alive():
        w.process.kill()
    w.process.join(timeout=5.0)


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota (Kubernetes limits)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


_default: VerifierPool | None = None
_forkserver_owner: int | None = None  # the process whose forkserver our workers come from
_default_lock = threading.Lock()


def default_pool() -> VerifierPool:
    """The process-wide pool behind `rewards`: created on first use, closed at interpreter exit."""
    global _default
    with _default_lock:
        if _default is None or _default.closed or _default._pid != os.getpid():
            _default = VerifierPool()
            atexit.register(_default.close)
        return _default
