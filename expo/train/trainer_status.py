"""A TrainJob's progress as Kubeflow Trainer shows it (`status.trainerStatus`), true for every arm.

Kubeflow Trainer (v2.2+, TrainJobStatus) gives a TrainJob's pods `KUBEFLOW_TRAINER_SERVER_URL`, a CA
certificate (`KUBEFLOW_TRAINER_SERVER_CA_CERT`) and a token file (`KUBEFLOW_TRAINER_SERVER_TOKEN`), and
takes `POST {"trainerStatus": {"progressPercentage", "estimatedRemainingSeconds", "metrics": [{"name",
"value"}], "lastUpdatedTime"}}` with `Authorization: Bearer <token>`: the protocol of transformers'
KubeflowCallback, which transformers adds to every Trainer in such a pod. That callback counts one
Trainer's `global_step / max_steps`; our arms are not one Trainer: ExP-DPO trains a Trainer per round
(each would restart at 0 % and reach 100 % early), so this module turns it off (DISABLE_KUBEFLOW_INTEGRATION,
set when it is imported, before any Trainer exists) and reports instead. The count is the arm's own, the one
its progress lines print (expo.train.progress.StepProgress: `step N/total` across rounds), and the
metrics are the arm's: loss and reward, and ExPO's acceptance, NLL, ExPO term and zero-variance fraction.

Rank 0 alone reports: 0 % when the arm starts, a report each time the whole percentage moves (at most
101 per arm, whatever its length), 100 % once the arm has trained and saved its model (`finish_open`,
from train_arm); a failed POST is logged and never stops training.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

URL_ENV = "KUBEFLOW_TRAINER_SERVER_URL"
CA_ENV = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
TOKEN_ENV = "KUBEFLOW_TRAINER_SERVER_TOKEN"
# The step logs' keys reported as metrics (TRL's names and ours), under these names.
METRICS = {"loss": "loss", "reward": "reward", "acceptance": "expo_acceptance", "expo_nll": "expo_nll",
           "expo_term": "expo_term", "frac_reward_zero_std": "zero_variance_fraction",
           "rewards/margins": "dpo_margin", "learning_rate": "learning_rate"}

_OPEN: list["TrainerStatus"] = []  # reporters whose arm has not reported 100 % yet

if os.environ.get(URL_ENV, "").strip():  # one reporter per arm: ours, not transformers' per Trainer
    os.environ["DISABLE_KUBEFLOW_INTEGRATION"] = "TRUE"


class TrainerStatus:
    """Reports one arm's progress to the Kubeflow Trainer status endpoint."""

    def __init__(self, url: str, token_file: str | None = None, ca_file: str | None = None) -> None:
        self.url, self.token_file = url, token_file
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.metrics: dict[str, float] = {}
        self.started: float | None = None
        self.percent = -1
        self.total = 0
        _OPEN.append(self)

    @classmethod
    def from_env(cls) -> "TrainerStatus | None":
        """The reporter of a TrainJob pod with TrainJobStatus on; None anywhere else."""
        url = os.environ.get(URL_ENV, "").strip()
        return cls(url, os.environ.get(TOKEN_ENV), os.environ.get(CA_ENV)) if url else None

    def begin(self, total: int) -> None:
        """The arm starts (or resumes): 0 % and the configured total, once."""
        self.total = total
        if self.started is None:
            self.started = time.monotonic()
            self._post(0, None, force=True)

    def observe(self, logs: dict[str, Any]) -> None:
        """Keep the newest value of each reported metric from a step's logs."""
        for key, name in METRICS.items():
            value = logs.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.metrics[name] = float(value)

    def step(self, done: int, total: int) -> None:
        """`done` of `total` steps trained: under 100 % until `finish` (saving the model is still to come)."""
        self.total = total
        percent = min(99, int(100 * done / total)) if total > 0 else 0
        if percent < self.percent:
            return  # never backwards (a resumed step redone)
        eta = None
        if self.started is not None and done > 0:
            eta = (time.monotonic() - self.started) / done * max(0, total - done)
        self._post(percent, eta, extra={"current_step": done, "total_steps": total})

    def finish(self) -> None:
        """The arm has trained: 100 %, with its last metrics."""
        if self in _OPEN:
            _OPEN.remove(self)
            self._post(100, 0.0, extra={"current_step": self.total, "total_steps": self.total}, force=True)

    def _post(self, percent: int, eta: float | None, extra: dict[str, float] | None = None,
              force: bool = False) -> None:
        if not force and percent == self.percent:
            return
        status: dict[str, Any] = {"lastUpdatedTime": dt.datetime.now(dt.timezone.utc).isoformat(),
                                  "progressPercentage": percent}
        if eta is not None:
            status["estimatedRemainingSeconds"] = int(eta)
        metrics = {**self.metrics, **(extra or {})}
        if metrics:
            status["metrics"] = [{"name": k, "value": f"{v:g}"} for k, v in metrics.items()]
        headers = {"Content-Type": "application/json"}
        if self.token_file and Path(self.token_file).is_file():  # a projected token rotates: read it each time
            headers["Authorization"] = f"Bearer {Path(self.token_file).read_text(encoding='utf-8').strip()}"
        request = urllib.request.Request(self.url, data=json.dumps({"trainerStatus": status}).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.context):
                pass
            self.percent = percent
        except Exception as exc:  # the status is a view of training, never a reason to stop it
            log.warning("TrainJob status not updated (%s): %s", self.url, " ".join(str(exc).split())[:200])


def finish_open() -> None:
    """Report 100 % for every arm of this process that has not (ExP-DPO's last round may be skipped)."""
    for status in list(_OPEN):
        status.finish()


__all__ = ["METRICS", "TrainerStatus", "finish_open"]
