"""Each KFP component called through `.python_func` with real artifacts in a temp folder: the thin
wrappers pass the right paths to the stages, write their Metrics files (kfp.local only caches tasks
whose Metrics file exists) and return what the DAG branches on. A chain on a tiny budget."""

import json
from pathlib import Path

import pytest
from kfp import dsl

import components as c
from expo.config import load_pipeline_config
from expo.stages import STAGE_SECTIONS, stage_config_yaml
from trainkit import pipeline_task_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TINY = ["data.builtin_per_level=6", "model.warmup_steps=5", "generation.max_new_tokens=8", "train.overlong_buffer=2",
        "evaluate.samples=2", "explain.samples_per_question=1", "explain.solve_rate_samples=0",
        "train.arms=[grpo,sdft]", "train.steps=1", "train.prompts_per_step=2", "train.num_generations=2",
        "train.checkpoint_every=1", "register.model_name=components-test"]


def artifact(cls, root: Path, name: str, metadata: dict | None = None):
    art = cls(name=name, uri=str(root / name), metadata=metadata or {})
    return art


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Run every component once, in DAG order, sharing one MLflow store and pipeline run id."""
    root = tmp_path_factory.mktemp("components")
    mp = pytest.MonkeyPatch()
    pipeline_task_env(mp, root, "components-test-run")
    cfg = load_pipeline_config(None, TINY)
    conf = {stage: stage_config_yaml(cfg, stage) for stage in STAGE_SECTIONS}
    a = {}
    a["data"], a["data_m"] = artifact(dsl.Dataset, root, "data"), artifact(dsl.Metrics, root, "data_m")
    c.prepare_data.python_func(config=conf["prepare_data"], data=a["data"], metrics=a["data_m"])
    a["model"], a["model_m"] = artifact(dsl.Model, root, "model"), artifact(dsl.Metrics, root, "model_m")
    c.prepare_model.python_func(config=conf["prepare_model"], data=a["data"], model=a["model"],
                                metrics=a["model_m"])
    a["base"], a["base_m"] = artifact(dsl.Dataset, root, "base"), artifact(dsl.Metrics, root, "base_m")
    c.evaluate.python_func(config=conf["evaluate"], name="base", model=a["model"], data=a["data"],
                           results=a["base"], metrics=a["base_m"])
    a["expl"], a["expl_m"] = artifact(dsl.Dataset, root, "expl"), artifact(dsl.Metrics, root, "expl_m")
    c.generate_explanations.python_func(config=conf["generate_explanations"], data=a["data"],
                                        model=a["model"], explanations=a["expl"], metrics=a["expl_m"])
    a["trained"], a["train_m"] = artifact(dsl.Model, root, "trained"), artifact(dsl.Metrics, root, "train_m")
    c.train.python_func(config=conf["train"], arm="grpo", data=a["data"], model=a["model"],
                        explanations=a["expl"], trained=a["trained"], metrics=a["train_m"])
    a["arm"], a["arm_m"] = artifact(dsl.Dataset, root, "arm"), artifact(dsl.Metrics, root, "arm_m")
    c.evaluate.python_func(config=conf["evaluate"], name="grpo", model=a["trained"], data=a["data"],
                           results=a["arm"], metrics=a["arm_m"])
    # the self-distillation arm through the same two components
    a["sdft"], a["sdft_m"] = artifact(dsl.Model, root, "sdft"), artifact(dsl.Metrics, root, "sdft_m")
    c.train.python_func(config=conf["train"], arm="sdft", data=a["data"], model=a["model"],
                        explanations=a["expl"], trained=a["sdft"], metrics=a["sdft_m"])
    a["sdft_eval"], a["sdft_eval_m"] = artifact(dsl.Dataset, root, "sdft_eval"), artifact(dsl.Metrics, root,
                                                                                           "sdft_eval_m")
    c.evaluate.python_func(config=conf["evaluate"], name="sdft", model=a["sdft"], data=a["data"],
                           results=a["sdft_eval"], metrics=a["sdft_eval_m"])
    outs = {name: artifact(cls, root, name) for name, cls in (
        ("summary", dsl.Dataset), ("best", dsl.Model), ("page", dsl.HTML), ("md", dsl.Markdown),
        ("report_m", dsl.Metrics))}
    decision = c.report.python_func(
        config=conf["report"], run_key="k1", base_eval=a["base"], arm_evals=[a["arm"], a["sdft_eval"]],
        trained=[a["trained"], a["sdft"]], explanations=a["expl"], summary=outs["summary"], best_model=outs["best"],
        page=outs["page"], markdown=outs["md"], metrics=outs["report_m"])
    a.update(outs)
    uri = c.register.python_func(config=conf["register"], run_key="k1", arm="grpo", model=outs["best"],
                                 summary=outs["summary"])
    status = dsl.PipelineTaskFinalStatus(state="SUCCEEDED", pipeline_job_resource_name="r",
                                         pipeline_task_name="t", error_code=None, error_message=None)
    c.finish_run.python_func(config=conf["finish_run"], run_id="kfp-run-1", status=status)
    yield root, a, decision, uri
    mp.undo()


def test_every_metrics_file_is_written(chain):
    _, a, _, _ = chain
    for key in ("data_m", "model_m", "base_m", "expl_m", "train_m", "arm_m", "report_m"):
        assert Path(a[key].path).is_file(), key
        json.loads(Path(a[key].path).read_text())
    assert json.loads(Path(a["data_m"].path).read_text())["rows_out"] == 30


def test_outputs_land_where_the_next_stage_reads(chain):
    _, a, decision, _ = chain
    assert (Path(a["data"].path) / "train.jsonl").is_file()
    assert (Path(a["model"].path) / "config.json").is_file()
    assert (Path(a["trained"].path) / "model" / "config.json").is_file()
    assert (Path(a["expl"].path) / "explanations.jsonl").is_file()
    assert Path(a["page"].path).read_text().lstrip().lower().startswith("<!doctype html")
    assert decision in ("grpo", "sdft", "")  # the arm to register, "" when it did not beat base
    assert (Path(a["best"].path) / "config.json").is_file()  # the best arm's model, linked for register


def test_the_sdft_arm_trains_logs_and_reports_like_every_arm(chain):
    """Its train step's MLflow run holds its step metrics; the report has its rows beside GRPO's."""
    import mlflow

    root, a, _, _ = chain
    assert (Path(a["sdft"].path) / "model" / "config.json").is_file()
    assert json.loads(Path(a["sdft_m"].path).read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("expo").experiment_id],
                              filter_string="tags.`expo.arm` = 'sdft'")
    train_runs = [r for r in runs if "loss" in r.data.metrics]
    assert train_runs and "reward_mean" in train_runs[0].data.metrics
    page = Path(a["md"].path).read_text()
    assert "| sdft | all |" in page and "## Cost per arm" in page


def test_register_and_finish(chain):
    import mlflow

    root, _, _, uri = chain
    assert uri.startswith("models:/components-test/")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    assert "candidate" in client.get_model_version("components-test", uri.rsplit("/", 1)[1]).aliases
    parent = client.search_runs([client.get_experiment_by_name("expo").experiment_id],
                                filter_string="tags.`expo.role` = 'pipeline'")
    assert len(parent) == 1
    assert parent[0].info.status == "FINISHED" and parent[0].data.tags["kfp.run_id"] == "kfp-run-1"
