"""`step 8/50` progress lines per training arm, with the step's reward and ExPO term (expo.progress).

A Trainer callback: each per-step log becomes, at most every couple of seconds (and always for the last
step), `[progress] train exp-grpo: step 8/50  reward 0.312  expo 0.0521  2.1 s/step`. Arms train side
by side under `expo run`, so every line names its arm and the total. Rank 0 alone prints. Within a
step, a heartbeat (`step 8/50 running, 64 s`) fills any 20 s the step's own lines (its rollouts'
tokens) leave silent. In a Kubeflow TrainJob the same count goes to the job's status
(expo.train.trainer_status), so `kubectl get trainjob` shows the step the lines print.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from transformers import TrainerCallback

from expo.progress import Heartbeat, Progress
from expo.train.trainer_status import TrainerStatus

# (shown as, keys in the step's logs: TRL's names and ours; the first present wins)
FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward", "reward_mean")),
    ("expo", ("expo_term",)),  # weight x NLL: what the ExPO term added to the loss
    ("margin", ("rewards/margins",)),  # ExP-DPO: chosen minus rejected implicit reward (TRL's DPO log)
    ("loss", ("total_loss", "loss")),
)


def step_text(step: int, total: int, logs: dict[str, Any]) -> str:
    """`step 8/50  reward 0.312  expo 0.0521  2.1 s/step` (fields missing or NaN are left out)."""
    parts = [f"step {step}/{total}"]
    for shown, keys in FIELDS:
        value = next((logs[k] for k in keys if isinstance(logs.get(k), (int, float))), None)
        if value is not None and math.isfinite(value) and not (shown == "expo" and value == 0.0):
            parts.append(f"{shown} {value:.4g}")
    seconds = logs.get("time/step")
    if isinstance(seconds, (int, float)) and seconds > 0:
        parts.append(f"{seconds:.1f} s/step")
    return "  ".join(parts)


class StepProgress(TrainerCallback):
    """Prints `step_text` for arm `arm` as the trainer logs each step.

    `total` (default: the trainer's max_steps) and `offset` (steps done before this trainer) count an
    arm trained by several trainers in turn, ExP-DPO's rounds, as one `step N/total` sequence.
    """

    def __init__(self, arm: str, every_s: float = 2.0, total: int | None = None, quiet_s: float = 20.0) -> None:
        self.tick = Progress(f"train {arm}", every_s=every_s)
        self.main = int(os.environ.get("RANK", "0")) == 0
        self.total, self.offset = total, 0
        # a step of a real model takes minutes, most of it in phases that print nothing of their own
        self.heartbeat = Heartbeat(f"train {arm}", quiet_s=quiet_s)
        self.status = TrainerStatus.from_env() if self.main else None

    def _total(self, args: Any, state: Any) -> int:
        return self.total or state.max_steps or args.max_steps

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.status is not None:
            self.status.begin(self._total(args, state))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not self.main:
            return
        step, total = self.offset + state.global_step + 1, self.total or state.max_steps or args.max_steps
        began = time.monotonic()
        self.heartbeat.start(lambda: f"step {step}/{total} running, {time.monotonic() - began:.0f} s")

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.heartbeat.stop()
        if self.status is not None:
            self.status.step(self.offset + state.global_step, self._total(args, state))

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.heartbeat.stop()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kw: Any) -> None:
        if not self.main or not logs or "loss" not in logs or "train_loss" in logs:
            return
        if self.status is not None:
            self.status.observe(logs)
        total = self.total or state.max_steps or args.max_steps
        step = self.offset + state.global_step
        self.tick.update(step_text(step, total, logs), force=step >= total)


__all__ = ["StepProgress", "step_text"]
