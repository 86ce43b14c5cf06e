"""The pipeline's stages as plain functions: config text and folders in, a metrics dict out.

Each function wraps one library stage with its MLflow nested run, so a KFP component (components/)
is one call here and nothing else, and the same stages run from tests without kfp. Every stage takes
only the config sections it depends on (`STAGE_SECTIONS`, `stage_config_yaml`), so changing a training
setting leaves the data, model and explanation steps' inputs untouched and KFP serves them from cache;
reading any other section is an error (`load_stage_config`, expo.sections), not a silent default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import yaml

from expo import gates, workspace
from expo.artifacts import META_FILE, read_card
from expo.config import ExpoConfig, to_dict
from expo.errors import DataError
from expo.explain import IN_DISTRIBUTION_FILE
from expo.io import read_json, read_jsonl, write_json
from expo.sections import partial_config

# Which config sections each stage reads: its cache key covers these and nothing else.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare_data": ("data",),
    "prepare_model": ("model", "prompts"),
    "evaluate": ("evaluate", "generation", "prompts", "model"),
    "generate_explanations": ("explain", "generation", "prompts", "model"),
    # cluster: train_nodes > 1 launches a Kubeflow Trainer TrainJob instead of training in-process.
    "train": ("train", "explain", "generation", "prompts", "model", "cluster"),
    "report": ("evaluate", "register", "train"),
    "register": ("register", "model", "train"),
    "finish_run": (),  # the exit handler
}


def stage_config_yaml(cfg: ExpoConfig, stage: str, parameterised: bool = False) -> str:
    """The YAML text of the sections `stage` reads (plus `name` and `tracking`), keys sorted.
    `parameterised`: without the keys that are pipeline parameters (expo.params), which the task gets
    as its `params` text instead (what the compiled pipeline does)."""
    from expo import params

    full = to_dict(cfg)
    part = {"name": full["name"], "tracking": full["tracking"]}
    part.update({section: full[section] for section in STAGE_SECTIONS[stage]})
    return yaml.safe_dump(params.strip(part) if parameterised else part, sort_keys=True)


def stage_params_text(cfg: ExpoConfig, stage: str) -> str:
    """The `params` text `stage` gets in the compiled pipeline, with `cfg`'s values (for tests and
    callers that run stages without KFP)."""
    from expo import params

    return params.template(params.stage_params(STAGE_SECTIONS[stage]), params.defaults(cfg))


def stage_config_dict(text: str, params_text: str = "") -> dict[str, Any]:
    """A stage's config as plain data: its YAML with the pipeline parameters' lines set on top."""
    from expo import params

    return params.apply(yaml.safe_load(text) or {}, params_text)


def load_stage_config(text: str, params_text: str = "") -> ExpoConfig:
    """Rebuild the config from a stage's YAML and its parameters. A section the text does not hold is
    an expo.sections.MissingSection: library code that reads it raises one ConfigError naming it,
    instead of running on defaults that may differ from the pipeline's config."""
    return partial_config(stage_config_dict(text, params_text))


def run_record_dir(run_key: str) -> Path | None:
    """Where the report and register stages leave what `expo run` prints (cached steps included:
    the same run key means the same results, so an earlier record is still right). `run_key` is a
    key, or the pipeline's run-key text (expo.params.run_key_text) with every parameter's value."""
    from expo.params import run_key_from_text

    root = workspace.root()
    return None if root is None else workspace.run_record_dir(root, run_key_from_text(run_key))


def checkpoint_dir(config: str, arm: str, *input_dirs: str) -> Path | None:
    """A stable checkpoint folder for one training task, keyed by what it trains on (not by the
    run), so a killed run's retry or the next `expo run` resumes instead of starting over."""
    root = workspace.root()
    if root is None:
        return None
    h = hashlib.sha256(config.encode())
    h.update(arm.encode())
    for input_dir in input_dirs:
        for name in ("stats.json", META_FILE):
            marker = Path(input_dir) / name
            if marker.is_file():
                h.update(marker.read_bytes())
    return workspace.checkpoints_dir(root, f"{arm}-{h.hexdigest()[:16]}")


@contextlib.contextmanager
def _stage_run(cfg: ExpoConfig, config: str, stage: str, arm: str | None = None,
               params_text: str = "") -> Iterator[Any]:
    """This stage's nested MLflow run under the pipeline run's parent, with the sections it read (its
    pipeline parameters applied) as params, and MLflow's system metrics (CPU, memory, GPU) sampled while
    it runs. The parent is found by the pipeline run id in the environment, never by a step input."""
    from expo import tracking
    from expo.errors import ExpoError

    try:
        with tracking.stage_run(tracking.env_pipeline_key(), stage, cfg.tracking, arm=arm,
                                pipeline=cfg.name) as run, tracking.system_metrics(run):
            tracking.log_config(stage_config_dict(config, params_text))
            yield run
    except ExpoError as exc:
        record_error(f"{stage}{'-' + arm if arm else ''}: {exc}")
        raise


def record_error(message: str) -> None:
    """Keep a stage's one-line error where `expo run` finds it (expo.workspace.error_file):
    kfp.local only reports which task failed, and the cause would be lost in the task log. The first
    error of a run wins (a later one is usually a consequence, e.g. the exit handler's)."""
    root, run_id = workspace.root(), os.environ.get("EXPO_PIPELINE_RUN_ID", "")
    if root is None or not run_id:
        return
    path = workspace.error_file(root, run_id)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as fh:  # "x": never overwrite the first error
            fh.write(" ".join(message.split()))


def prepare_data(config: str, output_dir: str, params: str = "") -> dict[str, float]:
    from expo import tracking
    from expo.data import prepare_data as prepare

    cfg = load_stage_config(config, params)
    with _stage_run(cfg, config, "prepare_data", params_text=params):
        result = prepare(cfg.data, output_dir)
        empty = result.empty_validation(cfg.data.eval_fraction)
        if empty:  # every model is evaluated on it: fail here, not after the model is built
            raise DataError(f"data: the validation split (eval.jsonl) is empty: {empty}; the pipeline evaluates "
                            "every model on it")
        tracking.log_dataset(Path(output_dir) / "train.jsonl", context="train", name="train")
        tracking.log_dataset(Path(output_dir) / "eval.jsonl", context="eval", name="eval")
        if (Path(output_dir) / "test.jsonl").is_file():
            tracking.log_dataset(Path(output_dir) / "test.jsonl", context="test", name="test")
        stats = read_json(Path(output_dir) / "stats.json")
        metrics = {"rows_in": stats["rows_in"], "rows_out": stats["rows_out"],
                   "train_rows": stats["train"], "eval_rows": stats["eval"]}
        if "test" in stats:
            metrics["test_rows"] = stats["test"]["rows"]
        metrics.update({f"skipped/{reason}": n for reason, n in stats["skipped"].items()})
        tracking.log_metrics(metrics)
    return metrics


def prepare_model(config: str, data_dir: str, output_dir: str, params: str = "") -> dict[str, float]:
    from expo import tracking
    from expo.modeling import prepare_model as prepare

    cfg = load_stage_config(config, params)
    with _stage_run(cfg, config, "prepare_model", params_text=params):
        prepare(cfg.model, data_dir, output_dir, prompts=cfg.prompts)
        meta = read_card(output_dir)
        tracking.set_tags({"expo.base_model": meta.get("base", cfg.model.source),
                           "expo.fingerprint": meta.get("fingerprint", "")})
        metrics = {key: float(value) for key, value in meta.get("metrics", {}).items()}
        tracking.log_metrics(metrics)
    return metrics


def evaluate(config: str, name: str, model_dir: str, data_dir: str, output_dir: str,
             params: str = "") -> dict[str, float]:
    from expo import tracking
    from expo.cluster.generation import run_stage_processes, stage_processes
    from expo.cpu import share_cpu_threads
    from expo.evaluate import evaluate_model, flat_metrics

    if name != "base":  # the arms' evaluations run inside the loop, beside each other
        share_cpu_threads()
    cfg = load_stage_config(config, params)
    with _stage_run(cfg, config, "evaluate", arm=name, params_text=params):
        model = str(trained_model(model_dir))
        processes = stage_processes(cfg, "evaluate", model)  # one per GPU when one card holds the model
        if processes > 1:
            result = run_stage_processes(processes, cfg, "evaluate", data_dir, model, output_dir, name=name)
        else:
            result = evaluate_model(model, data_dir, cfg, output_dir, name=name)
        metrics = flat_metrics(result)
        if "test" in result:  # the test set's numbers, apart from the validation split's
            metrics.update({f"test/{k}": v for k, v in flat_metrics(result["test"]).items()})
        tracking.log_metrics(metrics)
        tracking.log_artifacts(output_dir, f"evaluation/{name}")
    return metrics


def generate_explanations(config: str, data_dir: str, model_dir: str, output_dir: str,
                          params: str = "") -> dict[str, float]:
    from expo import tracking
    from expo.cluster.generation import run_stage_processes, stage_processes
    from expo.explain import generate_explanations as generate

    cfg = load_stage_config(config, params)
    with _stage_run(cfg, config, "generate_explanations", params_text=params):
        processes = stage_processes(cfg, "generate_explanations", model_dir)
        if processes > 1:  # one process and engine per GPU: the model fits one card
            stats = run_stage_processes(processes, cfg, "generate_explanations", data_dir, model_dir, output_dir)
        else:
            stats = generate(cfg, data_dir, model_dir, output_dir)
        tracking.log_dataset(Path(output_dir) / "explanations.jsonl", context="explanations",
                             name="explanations")
        metrics = _numbers(stats)
        tracking.log_metrics(metrics)
    return metrics


def train(config: str, arm: str, data_dir: str, model_dir: str, explanations_dir: str,
          output_dir: str, params: str = "") -> dict[str, float]:
    from expo import tracking
    from expo.cluster.pod import train_in_pod
    from expo.cluster.vllm_server import rollout_server
    from expo.cpu import share_cpu_threads

    from expo.train.live import RUN_ID_ENV, unposted
    from expo.train.validation import VALIDATION_FILE, curve_rows

    share_cpu_threads()  # the arms train side by side under kfp.local
    cfg = load_stage_config(config, params)
    with _stage_run(cfg, config, "train", arm=arm, params_text=params) as run:
        resume_from = checkpoint_dir(config, arm, data_dir, model_dir, explanations_dir)
        # Rank 0 of the training processes posts step metrics to this run as they happen.
        # vLLM server mode with no server URL: a rollout server for this arm, for as long as it trains.
        with _environment({RUN_ID_ENV: run.run_id, "MLFLOW_TRACKING_URI": run.conn.uri}), \
                rollout_server(cfg, arm, model_dir) as cfg:
            if cfg.cluster.train_nodes > 1:
                from expo.cluster import launch_trainjob

                # The job's pods run train_arm only; this step keeps the one MLflow run for the arm.
                launch_trainjob(cfg, arm, data_dir, model_dir, explanations_dir, output_dir,
                                run_id=run.run_id, checkpoint_dir=resume_from)
                summary = read_json(Path(output_dir) / "summary.json")
            else:
                # One node: one process per visible GPU of this pod (torchrun), or in this process.
                summary = train_in_pod(arm, cfg, data_dir, model_dir, explanations_dir, output_dir,
                                       checkpoint_dir=resume_from)
        steps_file = Path(output_dir) / "metrics.jsonl"
        if steps_file.is_file():  # what the live poster could not post (all of it if it never ran)
            tracking.log_metrics_series(unposted(read_jsonl(steps_file), steps_file))
        curve_file = Path(output_dir) / VALIDATION_FILE
        if curve_file.is_file():  # the learning curve: val/level<N>/pass_at_1 by step
            tracking.log_metrics_series(unposted(curve_rows(read_jsonl(curve_file)), curve_file))
            _checkpoint_models(run, cfg, arm, read_jsonl(curve_file), data_dir, output_dir)
        metrics = _numbers(summary)
        tracking.log_metrics({f"final/{k}": v for k, v in metrics.items()})
    return metrics


def _checkpoint_models(run: Any, cfg: ExpoConfig, arm: str, history: list[dict[str, Any]], data_dir: str,
                       output_dir: str) -> None:
    """A LoggedModel per validated checkpoint (expo.checkpoint_models); the one the arm's model folder
    holds is named in selection.json (`model_id`). With `select_checkpoint: best`, querying MLflow for
    the best must find the step training kept (same metric, same tie rule); a mismatch is logged."""
    import logging

    from expo.checkpoint_models import best_checkpoint, log_checkpoint_models
    from expo.train.validation import SELECTION_FILE

    ids = log_checkpoint_models(run, arm, history, Path(data_dir) / "eval.jsonl", cfg.train.select_metric)
    selection_file = Path(output_dir) / SELECTION_FILE
    if not selection_file.is_file():
        return
    selection = read_json(selection_file)
    chosen = ids.get(int(selection["step"]))
    if selection.get("chosen") == "best":
        best = best_checkpoint(run, arm, cfg.train.select_metric)
        if best is not None and best.model_id != chosen:
            logging.getLogger(__name__).warning("MLflow's best checkpoint (%s) is not the kept step %s",
                                                best.name, selection["step"])
    if chosen:
        write_json(selection_file, {**selection, "model_id": chosen})


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (child processes inherit them), then restore."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def report(config: str, run_key: str, base_eval_dir: str, arm_eval_dirs: list[str], train_dirs: list[str],
           explanations_dir: str, output_dir: str, best_model_dir: str, params: str = "") -> dict[str, Any]:
    """Compare base and arms, write the report, and decide whether any arm earned registration.

    Returns the summary (`summary.json`'s "models" part), the best arm and whether it beats the base
    model on the gate metric by more than the gate margin; the best arm's model folder is linked into
    `best_model_dir` (the register step's only model input).
    """
    from expo import tracking
    from expo.report import write_report
    from expo.run_lineage import log_headline

    cfg = load_stage_config(config, params)
    with _stage_run(cfg, config, "report", params_text=params) as run:
        evaluations = {"base": read_json(Path(base_eval_dir) / "metrics.json")}
        for eval_dir in arm_eval_dirs:
            metrics = read_json(Path(eval_dir) / "metrics.json")
            evaluations[metrics["name"]] = metrics
        training, validation, selections = {}, {}, {}
        for train_dir in train_dirs:
            meta = read_card(Path(train_dir) / "model")
            arm_name = meta.get("arm", Path(train_dir).name)
            steps_file = Path(train_dir) / "metrics.jsonl"
            if steps_file.is_file():
                training[arm_name] = read_jsonl(steps_file)
            if (Path(train_dir) / "validation.jsonl").is_file():
                validation[arm_name] = read_jsonl(Path(train_dir) / "validation.jsonl")
            if (Path(train_dir) / "selection.json").is_file():
                selections[arm_name] = read_json(Path(train_dir) / "selection.json")
        expl_stats_file = Path(explanations_dir) / "stats.json"
        expl_stats = read_json(expl_stats_file) if expl_stats_file.is_file() else None
        in_dist_file = Path(explanations_dir) / IN_DISTRIBUTION_FILE
        in_dist = read_json(in_dist_file) if in_dist_file.is_file() else None
        summary = build_summary(evaluations)
        decision = gates.best_arm_vs_base(summary["models"], cfg.register.gate_metric,
                                          cfg.register.gate_margin)
        summary.update(decision)
        if decision["best_arm"] in selections:  # which training step the candidate's weights are
            summary["checkpoint"] = {"arm": decision["best_arm"], **selections[decision["best_arm"]]}
        headline = {**decision, "metric": cfg.register.gate_metric, "margin": cfg.register.gate_margin,
                    "mlflow_run": run.parent_id, "experiment": cfg.tracking.experiment,
                    "tracking_uri": tracking.redact_uri(tracking.resolve_tracking_uri(cfg.tracking))}
        write_report(output_dir, headline=headline, in_distribution_note=_in_distribution_note(explanations_dir), evaluations=evaluations, training=training, explanation_stats=expl_stats,
                     in_distribution=in_dist if in_dist and in_dist["overall"]["paired"]["pairs"] else None,
                     title=f"ExPO run: {cfg.name}", validation=validation,
                     checkpoint={**summary.get("checkpoint", {}), "register": decision["register"]}
                     if "checkpoint" in summary else None)
        if decision["best_arm"]:
            link_tree(_find_arm_model([str(Path(d) / "model") for d in train_dirs], decision["best_arm"]),
                      Path(best_model_dir))
        write_json(Path(output_dir) / workspace.SUMMARY_FILE, summary)
        record = run_record_dir(run_key)
        if record is not None:
            write_json(record / workspace.SUMMARY_FILE, summary)
            for name in workspace.REPORT_FILES:
                if (Path(output_dir) / name).is_file():
                    (record / name).write_bytes((Path(output_dir) / name).read_bytes())
        tracking.log_artifacts(output_dir, "report")
        tracking.log_metrics({f"gate/{k}": float(v) for k, v in decision.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
        log_headline(run.conn, run.parent_id, summary, cfg.register.gate_metric)  # the run as a whole
    return summary


def _in_distribution_note(explanations_dir: str) -> str:
    """The embedded task's own reading of its in-distribution check (expo.toy.task): its check format
    (`373:no \\boxed{373}`) is its own, so other tasks' explanations give none."""
    path = Path(explanations_dir) / "explanations.jsonl"
    if not path.is_file():
        return ""
    from expo.toy.task import contradicted_checks

    return contradicted_checks([r["explanation"] for r in read_jsonl(path) if r.get("accepted")])


def build_summary(evaluations: dict[str, dict]) -> dict[str, Any]:
    """{"models": {name: {"levels": {"1": {"pass@1": .., "pass@k": ..}}, "overall": {...}}}} on the
    validation split (the held-out fraction: the gate decides on it), "evaluated_on" saying so, and
    with a test set (data.test_source) "test": {"source": .., "models": {name: same shape}}."""
    from expo.evaluate import model_summary

    summary: dict[str, Any] = {
        "models": {name: model_summary(metrics) for name, metrics in evaluations.items()}}
    tested = {name: m["test"] for name, m in evaluations.items() if "test" in m}
    summary["evaluated_on"] = {"models": "validation"}
    if tested:
        source = next(iter(tested.values())).get("source", "")
        summary["test"] = {"source": source,
                           "models": {name: model_summary(m) for name, m in tested.items()}}
        summary["evaluated_on"]["test"] = f"test: {source}"
    return summary


def register(config: str, run_key: str, arm: str, model_dir: str, summary_dir: str,
             params: str = "") -> dict[str, Any]:
    """Register the chosen arm's model, alias it `candidate`, run the champion gate, and name the
    registered version in the run's report headline."""
    from expo import registry
    from expo.report import complete_headline

    cfg = load_stage_config(config, params)
    summary = read_json(Path(summary_dir) / workspace.SUMMARY_FILE)
    with _stage_run(cfg, config, "register", arm=arm, params_text=params) as run:
        meta = read_card(model_dir)
        arm_summary = summary["models"][arm]
        gate_metric = cfg.register.gate_metric
        metrics = {gate_metric: gates.gate_value(arm_summary, gate_metric)}
        metrics.update({f"level{lv}_{k}": v for lv, vals in arm_summary["levels"].items()
                        for k, v in vals.items()})
        tags = {"expo.arm": arm, "expo.base_model": meta.get("base", ""),
                "expo.expo_beta": str(meta.get("expo_beta", cfg.train.expo_beta))}
        checkpoint = summary.get("checkpoint", {}).get("model_id")
        if checkpoint:  # the LoggedModel of the validated checkpoint these weights are
            tags["expo.checkpoint_model_id"] = checkpoint
        version = registry.log_and_register(model_dir, cfg.register.model_name, cfg.register, tags=tags,
                                            metrics=metrics, run_id=run.run_id, tracking=cfg.tracking)
        decision = registry.gate_and_promote(cfg.register.model_name, version.version, cfg.register,
                                             tracking=cfg.tracking)
    result = {**dataclasses.asdict(version), "gate": dataclasses.asdict(decision)}
    if decision.decision in (gates.PROMOTED, gates.ALREADY_CHAMPION) and "champion" not in result["aliases"]:
        result["aliases"] = [*result["aliases"], "champion"]  # the gate moved it after registration
    record = run_record_dir(run_key)
    if record is not None:
        write_json(record / workspace.REGISTERED_FILE, result)
        aliases = ", ".join(result["aliases"])
        complete_headline(record, version.uri + (f" (aliases: {aliases})" if aliases else ""))
    return result


def finish_run(config: str, status: str, run_id: str) -> None:
    """The exit handler: tag the parent run with the KFP run id and close it with the pipeline status."""
    from expo import tracking

    cfg = load_stage_config(config)
    state = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELED": "KILLED"}.get(status, "FAILED")
    tracking.close_parent(tracking.env_pipeline_key(), state, cfg.tracking,
                          tags={"kfp.run_id": run_id, "kfp.status": status}, pipeline=cfg.name)


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy where links cannot cross file systems) every file of `src` into `dst`."""
    import shutil

    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def trained_model(model_dir: str | Path) -> Path:
    """The model folder of a stage output: the train step leaves it in `<output>/model`."""
    inner = Path(model_dir) / "model"
    return inner if (inner / "config.json").is_file() else Path(model_dir)


def _find_arm_model(model_dirs: list[str], arm: str) -> Path:
    for model_dir in model_dirs:
        if read_card(model_dir).get("arm") == arm:
            return Path(model_dir)
    raise FileNotFoundError(f"no trained model for arm {arm!r} among {model_dirs}")


def _numbers(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested dict, flattened with '/' (what KFP Metrics and MLflow accept)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_numbers(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out
