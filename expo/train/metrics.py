"""`metrics.jsonl`: one JSON line per optimizer step, written as the step's log arrives.

A Trainer callback: each per-step log (it has a `loss`; the end-of-training summary has `train_loss`
and is skipped) becomes `{"step": N, "arm": ..., <every logged number>}`. On resume, lines past the
checkpoint's step are dropped first, so the file always reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from expo.io import read_jsonl, write_jsonl


class MetricsWriter(TrainerCallback):
    """Appends each step's logs to `path` and keeps them in `rows`."""

    def __init__(self, path: str | Path, arm: str, extra: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.arm = arm
        self.extra = dict(extra or {})
        self.rows: list[dict[str, Any]] = []

    def truncate(self, last_step: int) -> None:
        """Keep only lines with step <= last_step (called before resuming from checkpoint `last_step`)."""
        if self.path.is_file():
            kept = [row for row in read_jsonl(self.path) if row.get("step", 0) <= last_step]
            write_jsonl(self.path, kept)
            self.rows = kept
        else:
            self.rows = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs or "loss" not in logs or "train_loss" in logs:
            return
        row = {"step": state.global_step, "arm": self.arm, **self.extra}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = None if (isinstance(value, float) and not math.isfinite(value)) else value
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


__all__ = ["MetricsWriter"]
