"""A LoggedModel per validated checkpoint, against a real MLflow store: its metrics, linked to the
validation data set, and the best one found by querying MLflow (ties: the later step)."""

import mlflow

from expo import tracking
from expo.checkpoint_models import best_checkpoint, log_checkpoint_models
from expo.config import TrackingConfig
from expo.io import write_jsonl

HISTORY = [  # a validation every step; steps 2 and 3 tie on the selection metric
    {"step": 1, "levels": {"1": 0.5, "3": 0.0}, "overall": 0.25, "value": 0.0},
    {"step": 2, "levels": {"1": 0.5, "3": 0.5}, "overall": 0.5, "value": 0.5},
    {"step": 3, "levels": {"1": 1.0, "3": 0.5}, "overall": 0.75, "value": 0.5},
]


def test_each_checkpoint_is_a_logged_model_and_the_best_is_queried(sqlite_store, tmp_path, no_tracking_env):
    eval_file = tmp_path / "eval.jsonl"
    write_jsonl(eval_file, [{"question": "1+1", "answer": "2", "level": 1}])
    cfg = TrackingConfig(tracking_uri=sqlite_store, system_metrics_interval_s=0)
    with tracking.stage_run("k-ckpt", "train", cfg, arm="exp-grpo") as run:
        ids = log_checkpoint_models(run, "exp-grpo", HISTORY, eval_file, "hardest_level_pass@1")
        best = best_checkpoint(run, "exp-grpo", "hardest_level_pass@1")
    assert sorted(ids) == [1, 2, 3] and best.model_id == ids[3]  # the tie goes to the later step
    experiment = mlflow.MlflowClient(sqlite_store).get_run(run.run_id).info.experiment_id
    found = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")
    assert {m.model_id for m in found} == set(ids.values())
    step2 = next(m for m in found if m.model_id == ids[2])
    assert (step2.name, step2.model_type, step2.source_run_id) == ("exp-grpo-step2", "checkpoint", run.run_id)
    metrics = {m.key: m for m in step2.metrics}
    assert {k: m.value for k, m in metrics.items()} == {
        "pass_at_1": 0.5, "level1/pass_at_1": 0.5, "level3/pass_at_1": 0.5, "hardest_level_pass_at_1": 0.5}
    assert {(m.step, m.dataset_name, m.dataset_digest) for m in metrics.values()} == {
        (2, "eval", tracking.file_digest(eval_file))}
    # The data set link is what search_logged_models filters on.
    linked = mlflow.search_logged_models(experiment_ids=[experiment], datasets=[{"dataset_name": "eval"}],
                                         output_format="list")
    assert len(linked) == 3
