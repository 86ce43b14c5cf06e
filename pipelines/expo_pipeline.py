"""The ExPO DAG: wiring, resources, caching, retries, secrets and volumes. No stage logic lives here.

    data -> model -> base evaluation
                  -> explanations -> [train -> evaluate] per arm (ParallelFor) -> report
                                                                  -> register (dsl.If the best arm beat base)
    exit handler: close the MLflow parent run with the pipeline's status

Build it from a config with `build_pipeline(cfg)`, compile with `compile_pipeline(cfg, path)`.
The pipeline takes typed root parameters (expo.params.PARAMETERS: model and data sources, arms, steps,
expo_beta, ...) whose defaults are the config's values, so the KFP UI and `expo submit --param` change
them without a recompile. Each task receives only the config sections its stage reads
(expo.stages.STAGE_SECTIONS), with the parameterised keys taken out, plus a `params` text holding only
the parameters of those sections: a change to a training setting re-runs training and what follows it,
and nothing before.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable

from kfp import compiler, dsl
from kfp import kubernetes as k8s

import components as c
from expo import params as P
from expo.config import ExpoConfig, to_dict
from expo.cluster.trainjob import KUEUE_LABEL, MLFLOW_CLIENT_LABEL, MLFLOW_SECRET_KEYS
from expo.stages import STAGE_SECTIONS, stage_config_yaml
from expo.workspace import MOUNT_PATH, WORKSPACE_ENV



def static_key(cfg: ExpoConfig) -> str:
    """A digest of what shapes the results apart from the pipeline parameters (and where it runs)."""
    data = P.strip(to_dict(cfg))
    data.pop("cluster")
    data.pop("tracking")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def run_key(cfg: ExpoConfig) -> str:
    """A digest of everything that shapes the results (not where they run): names the run's summary.
    The report and register tasks compute the same from `P.run_key_text` once KFP fills the values in."""
    return P.run_key(static_key(cfg), P.defaults(cfg))


def pipeline_arguments(cfg: ExpoConfig) -> dict[str, Any]:
    """The root parameters' values for `cfg` (what `expo run` passes; also the compiled defaults)."""
    return P.defaults(cfg)


def build_pipeline(cfg: ExpoConfig, for_cluster: bool = True) -> Callable[..., Any]:
    """The pipeline function for `cfg`. `for_cluster=False` leaves out Kubernetes-only settings
    (kfp.local ignores them and warns about each)."""
    conf = {stage: stage_config_yaml(cfg, stage, parameterised=True) for stage in STAGE_SECTIONS}
    static = static_key(cfg)
    place = _Placement(cfg, for_cluster)
    names = [p.name for p in P.PARAMETERS]

    def expo_pipeline(*args: Any) -> None:
        values = dict(zip(names, args))  # KFP channels, filled in at run time
        par = {stage: P.template(P.stage_params(sections), values)
               for stage, sections in STAGE_SECTIONS.items()}
        key = P.run_key_text(static, values)
        closer = place.small(c.finish_run(config=conf["finish_run"], run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
                             cache=False, retries=True)
        with dsl.ExitHandler(closer, name="expo-run"):
            data = place.small(c.prepare_data(config=conf["prepare_data"], params=par["prepare_data"]),
                               retries=True)
            # Downloading or converting a model is CPU work: it holds no GPU.
            model = place.pod(c.prepare_model(config=conf["prepare_model"], params=par["prepare_model"],
                                              data=data.outputs["data"]), "model", retries=True)
            base_eval = place.pod(c.evaluate(config=conf["evaluate"], params=par["evaluate"], name="base",
                                             model=model.outputs["model"], data=data.outputs["data"]),
                                  "evaluate", shm=True)
            base_eval.set_display_name("evaluate-base")
            explanations = place.pod(c.generate_explanations(
                config=conf["generate_explanations"], params=par["generate_explanations"],
                data=data.outputs["data"], model=model.outputs["model"]), "generate", shm=True)
            with dsl.ParallelFor(items=values["arms"]) as arm:
                train_task = c.train(config=conf["train"], params=par["train"], arm=arm,
                                     data=data.outputs["data"], model=model.outputs["model"],
                                     explanations=explanations.outputs["explanations"])
                if cfg.cluster.train_nodes > 1:  # the step only supervises a TrainJob, whose nodes train
                    trained = place.small(train_task, retries=True)
                else:
                    trained = place.pod(train_task, "train", shm=True, retries=True)
                arm_eval = place.pod(c.evaluate(config=conf["evaluate"], params=par["evaluate"], name=arm,
                                                model=trained.outputs["trained"], data=data.outputs["data"]),
                                     "evaluate", shm=True)
                arm_eval.set_display_name("evaluate-arm")
            report = place.small(c.report(
                config=conf["report"], params=par["report"], run_key=key,
                base_eval=base_eval.outputs["results"], arm_evals=dsl.Collected(arm_eval.outputs["results"]),
                trained=dsl.Collected(trained.outputs["trained"]),
                explanations=explanations.outputs["explanations"]))
            with dsl.If(report.outputs["Output"] != "", name="best-arm-beats-base"):
                place.small(c.register(config=conf["register"], params=par["register"], run_key=key,
                                       arm=report.outputs["Output"], model=report.outputs["best_model"],
                                       summary=report.outputs["summary"]), retries=True)

    defaults = P.defaults(cfg)
    # KFP reads the root parameters (names, types, defaults) from the signature and their
    # descriptions from the docstring's Args; both come from the one table in expo.params.
    expo_pipeline.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[p.name],
                          annotation=p.type) for p in P.PARAMETERS])
    expo_pipeline.__doc__ = P.docstring()
    return dsl.pipeline(name=_pipeline_name(cfg), description="ExPO: self-explanation-guided RL, with GRPO "
                        "baselines, verifier-based evaluation and gated MLflow registration.")(expo_pipeline)


def compile_pipeline(cfg: ExpoConfig, output: str | Path) -> Path:
    """Write the KFP IR YAML of the pipeline for `cfg` to `output`."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg, for_cluster=True), str(output))
    return output


def _pipeline_name(cfg: ExpoConfig) -> str:
    name = "".join(ch if ch.isalnum() else "-" for ch in cfg.name.lower()).strip("-")
    return name or "expo"


class _Placement:
    """Applies the per-task settings in one place instead of pasting a chain of set_* on every task."""

    def __init__(self, cfg: ExpoConfig, for_cluster: bool):
        self.cluster = cfg.cluster
        self.for_cluster = for_cluster

    def small(self, task: dsl.PipelineTask, cache: bool = True, retries: bool = False) -> dsl.PipelineTask:
        task.set_caching_options(cache)
        if self.for_cluster:
            task.set_cpu_request("1").set_cpu_limit("2").set_memory_request("2G").set_memory_limit("8G")
        return self._common(task, retries)

    def pod(self, task: dsl.PipelineTask, stage: str, shm: bool = False,
            retries: bool = False) -> dsl.PipelineTask:
        """A task that holds a whole model: `cluster.<stage>_cpu` / `<stage>_memory` (request = limit)
        and `cluster.gpus_<stage>` GPUs (prepare_model: none)."""
        task.set_caching_options(True)
        if self.for_cluster:
            cpu, memory = getattr(self.cluster, f"{stage}_cpu"), getattr(self.cluster, f"{stage}_memory")
            task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
            gpus = getattr(self.cluster, f"gpus_{stage}", 0)
            if gpus > 0:
                task.set_accelerator_type(self.cluster.accelerator_type).set_accelerator_limit(gpus)
                if self.cluster.kueue_queue:  # Kueue admits the pod when its LocalQueue has the GPU quota
                    k8s.add_pod_label(task, label_key=KUEUE_LABEL, label_value=self.cluster.kueue_queue)
            if shm:
                # vLLM tensor parallelism and NCCL exchange through /dev/shm; the default 64 MB is too small.
                k8s.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
        return self._common(task, retries)

    def _common(self, task: dsl.PipelineTask, retries: bool) -> dsl.PipelineTask:
        # Task retries are for a cluster's transient faults (preempted nodes, a flaky store); locally a
        # failure is deterministic and a retry only repeats it. Tracking calls retry on their own.
        if retries and self.for_cluster and self.cluster.retries > 0:
            task.set_retry(num_retries=self.cluster.retries, backoff_duration="30s", backoff_factor=2.0)
        if not self.for_cluster:
            return task
        task.set_container_image(self.cluster.image)
        task.set_env_variable(WORKSPACE_ENV, MOUNT_PATH)
        k8s.mount_pvc(task, pvc_name=self.cluster.workspace_pvc, mount_path=MOUNT_PATH)
        # manifests/base NetworkPolicy admits only pods with this label to the MLflow server.
        k8s.add_pod_label(task, label_key=MLFLOW_CLIENT_LABEL, label_value="true")
        # Credentials come from Kubernetes secrets at run time; no value is ever in the compiled YAML.
        k8s.use_secret_as_env(task, secret_name=self.cluster.mlflow_secret, secret_key_to_env=MLFLOW_SECRET_KEYS,
                              optional=True)
        k8s.use_secret_as_env(task, secret_name=self.cluster.storage_secret, secret_key_to_env={
            "endpoint": "MLFLOW_S3_ENDPOINT_URL", "access-key": "AWS_ACCESS_KEY_ID",
            "secret-key": "AWS_SECRET_ACCESS_KEY"}, optional=True)
        if self.cluster.hf_token_secret:  # gated hub models and data sets
            k8s.use_secret_as_env(task, secret_name=self.cluster.hf_token_secret,
                                  secret_key_to_env={"token": "HF_TOKEN"}, optional=True)
        # The KFP run id (a pod label) names the MLflow parent run without entering any cache key.
        k8s.use_field_path_as_env(task, env_name="EXPO_PIPELINE_RUN_ID",
                                  field_path="metadata.labels['pipeline/runid']")
        return task
