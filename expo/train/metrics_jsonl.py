"""`metrics.jsonl`: one JSON line per optimizer step, written as the step's log arrives.

A Trainer callback: each per-step log (it has a `loss`; the end-of-training summary has `train_loss`
and is skipped) becomes `{"step": N, "arm": ..., <every logged number>}`. Each checkpoint keeps a
copy of the lines so far; on resume the file restarts from that copy, so it always reads like one
uninterrupted run (lines of steps after the checkpoint, lost with the kill, are redone). Under
several processes every one keeps `rows`, and only the main process (rank 0) writes the file, and
posts each line to the arm's MLflow run as it is written (expo.train.live, when the train stage gave
its run id).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from expo.io import read_jsonl, write_jsonl
from expo.train.live import LivePoster

log = logging.getLogger(__name__)


# TRL's names -> the names the rest of the pipeline reads (both are kept in the line).
ALIASES = {"reward": "reward_mean", "learning_rate": "lr"}


class MetricsWriter(TrainerCallback):
    """Appends each step's logs to `path` and keeps them in `rows`."""

    def __init__(self, path: str | Path, arm: str, extra: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.arm = arm
        self.extra = dict(extra or {})
        self.offset = 0  # added to the trainer's step (ExP-DPO: steps of the rounds before this one)
        self.rows: list[dict[str, Any]] = []
        self.writes = int(os.environ.get("RANK", "0")) == 0  # one writer per output folder: rank 0
        self.live = LivePoster.from_env(self.path) if self.writes else None

    def restore(self, checkpoint: Path | None) -> None:
        """Start from the lines saved with `checkpoint` (its own copy, so a resume into a fresh output
        folder keeps the history), else from this folder's lines up to its step; no checkpoint: empty."""
        if checkpoint is None:
            self.truncate(0)
            return
        saved = Path(checkpoint) / "metrics.jsonl"
        if saved.is_file():
            self.rows = read_jsonl(saved)
            if self.writes:
                write_jsonl(self.path, self.rows)
        else:
            self.truncate(int(Path(checkpoint).name.split("-")[-1]))

    def save_copy(self, folder: str | Path) -> None:
        if self.writes:
            write_jsonl(Path(folder) / "metrics.jsonl", self.rows)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Trainers that do not copy the lines themselves (DPO) get the copy here, after the save."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and not (folder / "metrics.jsonl").is_file():
            self.save_copy(folder)

    def truncate(self, last_step: int) -> None:
        """Keep only lines with step <= last_step (called before resuming from checkpoint `last_step`)."""
        if self.path.is_file():
            kept = [row for row in read_jsonl(self.path) if row.get("step", 0) <= last_step]
            if self.writes:
                write_jsonl(self.path, kept)
            self.rows = kept
        else:
            self.rows = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs or "loss" not in logs or "train_loss" in logs:
            return
        row = {"step": state.global_step + self.offset, "arm": self.arm, **self.extra}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = None if (isinstance(value, float) and not math.isfinite(value)) else value
        for theirs, ours in ALIASES.items():
            if theirs in row:
                row[ours] = row[theirs]
        log.info("step %d: %s", state.global_step, ", ".join(
            f"{k}={row[k]:.4g}" for k in ("total_loss", "loss", "reward_mean", "expo_nll", "time/step")
            if isinstance(row.get(k), (int, float))))
        self.rows.append(row)
        if not self.writes:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        if self.live is not None:
            self.live.add(row)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Post what the live poster still holds (one try; the stage posts any leftover at the end)."""
        if self.live is not None:
            self.live.flush()


__all__ = ["MetricsWriter"]
