"""Training step metrics posted to the arm's MLflow run while training runs, not after it ends.

Why: a 12-hour arm whose metrics reach MLflow only at the end is invisible while it runs. The train
stage puts its MLflow run id in the environment (`RUN_ID_ENV`); rank 0 of the training processes (in
the stage's own process, under torchrun in its pod, or in a TrainJob's pod) then hands each step's row
to a `LivePoster`, whose background thread posts them in batches every `flush_every_s` with the
tracking retries. A post that still fails is logged and its rows stay queued for the next flush: it
never stops or slows training. What was posted is recorded in `POSTED_FILE` beside `metrics.jsonl`, so
the stage's final post (`unposted`) sends only what the live poster could not.

    poster = LivePoster.from_env(out / "metrics.jsonl")   # None without a run id, or off rank 0
    poster.add({"step": 3, "loss": 0.2})
    poster.close()
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_ID_ENV = "EXPO_MLFLOW_RUN_ID"  # the arm's MLflow run, set by expo.stages.train
FLUSH_ENV = "EXPO_LIVE_FLUSH_S"  # seconds between batches (default 5)
POSTED_FILE = "metrics.posted.json"  # {"step": highest step posted} beside metrics.jsonl (<stem>.posted.json)


def _marker(metrics_file: str | Path) -> Path:
    """Where the highest posted step of a rows file is kept: `<stem>.posted.json` beside it (a marker
    file itself maps to itself)."""
    path = Path(metrics_file)
    if path.name.endswith(".posted.json"):
        return path
    return path.with_name(f"{path.stem}.posted.json")


def posted_step(metrics_file: str | Path) -> int:
    """The highest step already posted live for this metrics.jsonl (-1: none)."""
    marker = _marker(metrics_file)
    try:
        return int(json.loads(marker.read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def unposted(rows: list[dict[str, Any]], metrics_file: str | Path) -> list[dict[str, Any]]:
    """The rows the live poster did not post (all of them when it never ran)."""
    last = posted_step(metrics_file)
    return [row for row in rows if int(row.get("step", 0)) > last]


class LivePoster:
    """Posts step rows to one MLflow run from a daemon thread, in batches."""

    def __init__(self, run_id: str, metrics_file: str | Path, *, tracking_uri: str | None = None,
                 flush_every_s: float = 5.0, retries: int = 3, backoff_s: float = 1.0) -> None:
        from mlflow import MlflowClient

        from expo.config import TrackingConfig
        from expo.tracking import Connection, resolve_tracking_uri

        self.run_id = run_id
        self.marker = _marker(metrics_file)
        # A client of its own (not expo.tracking.connect, which also moves the process-wide MLflow URI).
        uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri or ""))
        self.conn = Connection(uri=uri, client=MlflowClient(tracking_uri=uri), retries=retries,
                               backoff_s=backoff_s, experiment="")
        self.flush_every_s = flush_every_s
        self.failures = 0
        self._queue: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="expo-live-metrics", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, metrics_file: str | Path) -> LivePoster | None:
        """A poster for $EXPO_MLFLOW_RUN_ID on rank 0; None elsewhere, or if MLflow cannot be reached
        (training goes on; the stage posts the rows at the end)."""
        run_id = os.environ.get(RUN_ID_ENV, "").strip()
        if not run_id or int(os.environ.get("RANK", "0")) != 0:
            return None
        try:
            return cls(run_id, metrics_file, flush_every_s=float(os.environ.get(FLUSH_ENV, "5")))
        except Exception as exc:  # a tracking outage must not stop training
            log.warning("live metrics off: %s", " ".join(str(exc).split())[:200])
            return None

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._queue.append(dict(row))

    def flush(self) -> bool:
        """Post what is queued; True when the queue is empty afterwards."""
        from mlflow.entities import Metric

        from expo.tracking import mlflow_key

        with self._lock:
            batch, self._queue = self._queue, []
        if not batch:
            return True
        now = int(time.time() * 1000)
        points = [Metric(mlflow_key(k), float(v), now, int(row["step"])) for row in batch
                  for k, v in row.items() if k != "step" and isinstance(v, (int, float))
                  and not isinstance(v, bool)]
        try:
            for i in range(0, len(points), 1000):  # MLflow takes at most 1000 metrics per batch
                self.conn.call("log live metrics", self.conn.client.log_batch, self.run_id,
                               metrics=points[i:i + 1000])
        except Exception as exc:  # kept for the next flush; the stage posts leftovers at the end
            self.failures += 1
            log.warning("live metrics: post failed (%s); will retry", " ".join(str(exc).split())[:200])
            with self._lock:
                self._queue = batch + self._queue
            return False
        last = max(int(row["step"]) for row in batch)
        try:
            step = max(last, posted_step(self.marker))
            self.marker.write_text(json.dumps({"step": step}), encoding="utf-8")
        except OSError:
            pass  # without the marker the stage posts these rows again: duplicates, not a loss
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            self.flush()

    def close(self) -> None:
        """Stop the thread and post what is left (one try)."""
        self._stop.set()
        self._thread.join(timeout=self.flush_every_s + 1)
        self.flush()


__all__ = ["FLUSH_ENV", "LivePoster", "POSTED_FILE", "RUN_ID_ENV", "posted_step", "unposted"]
