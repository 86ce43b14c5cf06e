"""The compiled pipeline, checked structurally: every stage, accelerators on GPU steps, caching,
retries, secrets referenced by name and never inlined, the shared volume and /dev/shm."""

import pytest
import yaml

from expo.config import load_config
from expo.stages import STAGE_SECTIONS
from pipelines.expo_pipeline import build_pipeline, compile_pipeline, run_key

STAGES = [stage.replace("_", "-") for stage in STAGE_SECTIONS]  # each stage's component, as KFP names it
GPU_STEPS = ["exec-train", "exec-generate-explanations", "exec-evaluate", "exec-evaluate-2"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("compile") / "pipeline.yaml"
    compile_pipeline(load_config(None, ["cluster.gpus_train=4", "cluster.accelerator_type=nvidia.com/gpu"]),
                     path)
    spec, platform = yaml.safe_load_all(path.read_text())
    return path.read_text(), spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec):
    """Every task of every DAG in the spec, by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def test_every_stage_present(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for stage in STAGES:
        assert f"exec-{stage}" in executors, stage


def test_accelerators_on_gpu_steps_only(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name in GPU_STEPS:
        acc = executors[name]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu"
    assert executors["exec-train"]["container"]["resources"]["accelerator"]["resourceCount"] == "4"
    for name in ("exec-prepare-data", "exec-report", "exec-register", "exec-finish-run"):
        resources = executors[name]["container"]["resources"]
        assert "accelerator" not in resources
        assert resources["resourceMemoryLimit"] and resources["resourceCpuRequest"]


def test_caching_on_except_exit_handler(compiled):
    _, spec, _ = compiled
    tasks = _tasks(spec)
    for name, task in tasks.items():
        if "componentRef" not in task or name.startswith(("exit-handler", "for-loop", "condition")):
            continue
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (name != "finish-run"), name


def test_retries_on_transient_steps(compiled):
    _, spec, _ = compiled
    tasks = _tasks(spec)
    for name in ("prepare-data", "prepare-model", "train", "register", "finish-run"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2, name


def test_secrets_by_reference_and_volumes(compiled, monkeypatch):
    _, _, k8s = compiled
    for name, executor in k8s.items():
        secrets = {s["secretName"]: s for s in executor["secretAsEnv"]}
        assert set(secrets) == {"expo-mlflow", "expo-object-store"}, name
        envs = {e["envVar"] for s in secrets.values() for e in s["keyToEnv"]}
        assert {"MLFLOW_TRACKING_URI", "AWS_SECRET_ACCESS_KEY"} <= envs
        assert executor["pvcMount"][0]["mountPath"] == "/workspace"
        assert executor["fieldPathAsEnv"][0]["name"] == "EXPO_PIPELINE_RUN_ID"
    for name in GPU_STEPS:
        assert k8s[name]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"


def test_no_secret_value_in_compiled_yaml(tmp_path, monkeypatch):
    planted = "planted-secret-7f3a9c"
    for var in ("MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "KF_PIPELINES_TOKEN", "HF_TOKEN"):
        monkeypatch.setenv(var, planted)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://user:{planted}@mlflow.example")
    path = compile_pipeline(load_config(), tmp_path / "p.yaml")
    assert planted not in path.read_text()


def test_stage_inputs_carry_only_their_sections(compiled):
    text, spec, _ = compiled
    tasks = _tasks(spec)
    data_conf = yaml.safe_load(tasks["prepare-data"]["inputs"]["parameters"]["config"]["runtimeValue"]["constant"])
    assert set(data_conf) == {"name", "tracking", "data"}  # a training change cannot touch data prep
    train_conf = yaml.safe_load(tasks["train"]["inputs"]["parameters"]["config"]["runtimeValue"]["constant"])
    assert "train" in train_conf and "data" not in train_conf and "register" not in train_conf


def test_run_key_ignores_where_it_runs():
    a = load_config()
    b = load_config(None, ["cluster.image=other:1", "tracking.experiment=x"])
    c = load_config(None, ["train.steps=3"])
    assert run_key(a) == run_key(b) != run_key(c)


def test_local_build_leaves_out_kubernetes_settings():
    from google.protobuf.json_format import MessageToJson

    local_spec = MessageToJson(build_pipeline(load_config(), for_cluster=False).pipeline_spec)
    cluster_spec = MessageToJson(build_pipeline(load_config(), for_cluster=True).pipeline_spec)
    assert '"accelerator"' in cluster_spec and '"resourceCpuLimit"' in cluster_spec
    assert '"accelerator"' not in local_spec and '"resourceCpuLimit"' not in local_spec
