"""What a pipeline run's MLflow parent says about the whole run, and what `expo run` reads back at the end.

The stages fill their own nested runs; the parent would otherwise hold only tags. So that a user who
opens the parent (or compares parents in the MLflow UI) sees the run as a whole:
- `describe_parent` writes the resolved config as parameters, the headline metrics (each model's gate
  metric and overall pass@1, `headline_metrics`) and tags saying which steps ran and which came from
  cache; a run whose report came from cache names the parent that computed it (`expo.results_from`).
  The report stage writes the headline metrics itself (`log_headline`), so a cluster run has them too.
- `registered_aliases` reads the registered version's aliases from the registry when the run ends:
  an alias moved since (the gate of a later run, `expo promote`) shows as it is now, never as it was.

    info = describe_parent(key, cfg.tracking, pipeline=cfg.name, config=to_dict(cfg), summary=summary,
                           executed=["train grpo", ...], cached=["prepare-data", ...], run_key=rk)
    info["run_id"], info["run_name"], info["experiment"]
    registered_aliases("models:/expo-smoke/2", cfg.tracking)   # ["candidate", "champion"]
"""

from __future__ import annotations

import math
from typing import Any

from expo import gates
from expo.config import TrackingConfig
from expo.tracking import (KEY_TAG, ROLE_TAG, Connection, config_params, connect, mlflow_key, parent_run,
                           redact_uri, tag_run)

RUN_KEY_TAG = "expo.run_key"  # the digest of everything that shapes the results (pipelines run_key)
RESULTS_FROM_TAG = "expo.results_from"  # the parent whose report step computed this run's results


def headline_metrics(models: dict[str, dict[str, Any]], gate_metric: str) -> dict[str, float]:
    """`<model>/<gate metric>` and `<model>/overall_pass_at_1` for every model of a summary (NaN left out)."""
    out: dict[str, float] = {}
    for name, summary in models.items():
        for metric in (gate_metric, "overall_pass@1"):
            value = gates.gate_value(summary, metric)
            if not math.isnan(value):
                out[f"{name}/{mlflow_key(metric)}"] = value
    return out


def log_headline(conn: Connection, parent_id: str, summary: dict[str, Any], gate_metric: str) -> None:
    """The headline metrics and the gate's choice on the parent run (the report stage calls it)."""
    from mlflow.entities import Metric
    import time

    now = int(time.time() * 1000)
    points = [Metric(k, float(v), now, 0) for k, v in headline_metrics(summary["models"], gate_metric).items()]
    if points:
        conn.call("log headline metrics", conn.client.log_batch, parent_id, metrics=points)
    tag_run(conn, parent_id, {"expo.best_arm": summary.get("best_arm", ""),
                           "expo.gate_metric": gate_metric, "expo.register": str(bool(summary.get("register")))})


def _results_from(conn: Connection, parent_id: str, run_key: str, report_ran: bool) -> str:
    """This parent when its report step ran; else the newest other parent of the same results."""
    if report_ran:
        return parent_id
    parent = conn.call("get parent run", conn.client.get_run, parent_id)
    where = f"tags.`{RUN_KEY_TAG}` = '{run_key}' and tags.`{ROLE_TAG}` = 'pipeline'"
    found = conn.call("search parents", conn.client.search_runs, [parent.info.experiment_id],
                      filter_string=where, max_results=50, order_by=["attributes.start_time DESC"])
    earlier = [r for r in found if r.info.run_id != parent_id]
    if not earlier:
        return ""
    return earlier[0].data.tags.get(RESULTS_FROM_TAG) or earlier[0].info.run_id


def describe_parent(key: str, cfg: TrackingConfig, *, pipeline: str, config: dict[str, Any],
                    summary: dict[str, Any], executed: list[str], cached: list[str], run_key: str,
                    parent_id: str | None = None) -> dict[str, str]:
    """Write the run's parameters, headline metrics and reuse on its parent (found by `key`, or
    `parent_id` where the platform made it); returns what summary.json records of it."""
    from mlflow.entities import Param

    parent_id = parent_id or parent_run(key, cfg, pipeline=pipeline)
    conn = connect(cfg)
    params = config_params(config)
    parent = conn.call("get parent run", conn.client.get_run, parent_id)
    fresh = [Param(k, v) for k, v in sorted(params.items()) if k not in parent.data.params]
    for i in range(0, len(fresh), 100):  # MLflow takes at most 100 params per batch
        conn.call("log parent params", conn.client.log_batch, parent_id, params=fresh[i:i + 100])
    if summary.get("models"):
        log_headline(conn, parent_id, summary, config.get("register", {}).get("gate_metric", ""))
    results_from = _results_from(conn, parent_id, run_key, "report" in executed)
    tag_run(conn, parent_id, {KEY_TAG: key, RUN_KEY_TAG: run_key, RESULTS_FROM_TAG: results_from,
                           "expo.executed_steps": ", ".join(executed) or "none",
                           "expo.cached_steps": ", ".join(cached) or "none",
                           "expo.registered_model": summary.get("registered_model_uri") or ""})
    experiment = conn.call("get experiment", conn.client.get_experiment, parent.info.experiment_id)
    return {"run_id": parent_id, "run_name": parent.info.run_name, "experiment": experiment.name,
            "experiment_id": experiment.experiment_id, "tracking_uri": redact_uri(conn.uri),
            "results_from": results_from}


def registered_aliases(uri: str, cfg: TrackingConfig) -> list[str]:
    """The aliases the registry holds now on version `models:/NAME/VERSION`, sorted."""
    name, _, version = uri.removeprefix("models:/").rpartition("/")
    conn = connect(cfg)
    model = conn.call("get registered model", conn.client.get_registered_model, name)
    return sorted(alias for alias, v in (model.aliases or {}).items() if str(v) == version)


__all__ = ["RESULTS_FROM_TAG", "RUN_KEY_TAG", "describe_parent", "headline_metrics", "log_headline",
           "registered_aliases"]
