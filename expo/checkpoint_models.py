"""One MLflow LoggedModel per validated checkpoint of an arm, its validation metrics linked to the
validation data set, and the chosen checkpoint found by querying them.

Why: MLflow 3 makes a model a first-class object with its own metrics, and `mlflow.search_logged_models`
is how a user finds the best one across runs; a checkpoint that exists only as a line of
`validation.jsonl` is invisible there. Each validation point (expo.train.validation) becomes a LoggedModel
of the arm's train run (`model_type` "checkpoint", tags `expo.arm`, `expo.step`), with `pass_at_1`,
`level<N>/pass_at_1` and the selection metric as its metrics at that step, logged against the data
stage's `eval` data set (same name and digest as the data stage's input). The weights stay where
training left them (no upload per checkpoint): the registered version is the one uploaded, and its
LoggedModel names the checkpoint's (`expo.checkpoint_model_id`).

    ids = log_checkpoint_models(run, "exp-grpo", history, data_dir / "eval.jsonl", "hardest_level_pass@1")
    best = best_checkpoint(run, "exp-grpo", "hardest_level_pass@1")   # the LoggedModel, ties: later step
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from expo.tracking import StageRun, file_digest, mlflow_key

MODEL_TYPE = "checkpoint"


def _dataset(path: Path) -> Any:
    """The validation rows as the MLflow data set the data stage logged (`eval`, same digest)."""
    import mlflow
    import pandas as pd

    from expo.io import read_jsonl

    return mlflow.data.from_pandas(pd.DataFrame(read_jsonl(path)), source=str(path.resolve()), name="eval",
                                   digest=file_digest(path))


def checkpoint_metrics(point: dict[str, Any], select_metric: str) -> dict[str, float]:
    """A validation point as LoggedModel metrics: pass_at_1, level<N>/pass_at_1, the selection metric."""
    out = {"pass_at_1": float(point["overall"])}
    out.update({f"level{lv}/pass_at_1": float(v) for lv, v in point["levels"].items()})
    if point.get("value") is not None and not math.isnan(point["value"]):
        out[mlflow_key(select_metric)] = float(point["value"])
    return out


def log_checkpoint_models(run: StageRun, arm: str, history: list[dict[str, Any]], eval_file: str | Path,
                          select_metric: str) -> dict[int, str]:
    """A LoggedModel per validation point of `history`, metrics linked to `eval_file`; returns step -> id."""
    client = run.conn.client
    experiment_id = run.conn.call("get run", client.get_run, run.run_id).info.experiment_id
    ids: dict[int, str] = {}
    with warnings.catch_warnings():  # what MLflow says of any local data set (see expo.tracking.log_dataset)
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        dataset = _dataset(Path(eval_file))
        for point in sorted(history, key=lambda p: p["step"]):
            ids[int(point["step"])] = _log_one(run, arm, point, dataset, experiment_id, select_metric)
    return ids


def _log_one(run: StageRun, arm: str, point: dict[str, Any], dataset: Any, experiment_id: str,
             select_metric: str) -> str:
    """One checkpoint's LoggedModel and its metrics at its step; returns its model id."""
    import mlflow

    step = int(point["step"])
    model = run.conn.call("create checkpoint model", mlflow.create_external_model, name=f"{arm}-step{step}",
                          source_run_id=run.run_id, experiment_id=experiment_id, model_type=MODEL_TYPE,
                          tags={"expo.arm": arm, "expo.step": str(step)}, params={"step": str(step)})
    run.conn.call("log checkpoint metrics", mlflow.log_metrics, checkpoint_metrics(point, select_metric),
                  step=step, run_id=run.run_id, model_id=model.model_id, dataset=dataset)
    return model.model_id


def best_checkpoint(run: StageRun, arm: str, select_metric: str) -> Any | None:
    """The arm's checkpoint LoggedModel best on `select_metric` (ties: the later step), by querying
    MLflow; None when the run logged none with that metric."""
    import mlflow

    experiment_id = run.conn.call("get run", run.conn.client.get_run, run.run_id).info.experiment_id
    key = mlflow_key(select_metric)
    found = run.conn.call(
        "search checkpoint models", mlflow.search_logged_models, experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run.run_id}' AND tags.`expo.arm` = '{arm}'",
        order_by=[{"field_name": f"metrics.{key}", "ascending": False}], output_format="list")
    scored = [(m, {x.key: x.value for x in m.metrics or []}.get(key)) for m in found]
    scored = [(m, v) for m, v in scored if v is not None and not math.isnan(v)]
    if not scored:
        return None
    top = max(v for _, v in scored)
    return max((m for m, v in scored if v == top), key=lambda m: int(m.tags.get("expo.step", 0)))


__all__ = ["MODEL_TYPE", "best_checkpoint", "checkpoint_metrics", "log_checkpoint_models"]
