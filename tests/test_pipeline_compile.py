"""The compiled pipeline, checked structurally: every stage, accelerators on GPU steps, CPU and memory
from the config, caching, retries, secrets referenced by name and never inlined, the shared volume and
/dev/shm."""

from pathlib import Path

import pytest
import yaml

from expo.config import load_config
from expo.errors import ConfigError
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
        assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_WORKSPACE",
                "AWS_SECRET_ACCESS_KEY"} <= envs
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


def _resources(executors: dict, name: str) -> dict:
    return executors[name]["container"]["resources"]


def _amounts(resources: dict) -> tuple[str, str, str, str]:
    return (resources["resourceCpuRequest"], resources["resourceCpuLimit"],
            resources["resourceMemoryRequest"], resources["resourceMemoryLimit"])


def test_pod_resources_come_from_the_config(tmp_path):
    """The 8-GPU recipe's cluster section (64 CPU / 512Gi per training pod) reaches the train task;
    explanations and evaluations take their own keys; prepare_model downloads or converts on the CPU
    and holds no GPU."""
    recipe = Path(__file__).resolve().parent.parent / "configs" / "qwen2.5-3b-math.yaml"
    cfg = load_config(recipe, ["cluster.generate_cpu='12'", "cluster.generate_memory=96Gi",
                               "cluster.evaluate_cpu='8'", "cluster.evaluate_memory=64Gi",
                               "cluster.model_cpu='4'", "cluster.model_memory=48Gi"])
    assert (cfg.cluster.train_cpu, cfg.cluster.train_memory, cfg.cluster.gpus_train) == ("64", "512Gi", 8)
    spec, _ = yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    train = _resources(executors, "exec-train")
    assert _amounts(train) == ("64", "64", "512Gi", "512Gi")
    assert train["accelerator"]["resourceCount"] == "8"
    assert _amounts(_resources(executors, "exec-generate-explanations")) == ("12", "12", "96Gi", "96Gi")
    for name in ("exec-evaluate", "exec-evaluate-2"):
        assert _amounts(_resources(executors, name)) == ("8", "8", "64Gi", "64Gi")
    model = _resources(executors, "exec-prepare-model")
    assert "accelerator" not in model
    assert _amounts(model) == ("4", "4", "48Gi", "48Gi")


def test_a_trainjob_step_only_supervises(tmp_path):
    """With several nodes the TrainJob's nodes train (cluster.train_cpu / train_memory each, in the
    TrainJob); the step that launches and watches it holds no GPU."""
    spec, _ = yaml.safe_load_all(compile_pipeline(load_config(None, ["cluster.train_nodes=2",
                                                                     "cluster.gpus_train=8"]),
                                                  tmp_path / "p.yaml").read_text())
    train = _resources(spec["deploymentSpec"]["executors"], "exec-train")
    assert "accelerator" not in train and train["resourceMemoryLimit"] == "8G"


@pytest.mark.parametrize("override,key", [
    ("cluster.train_cpu=lots", "cluster.train_cpu"),
    ("cluster.evaluate_memory=64GB", "cluster.evaluate_memory"),
])
def test_a_bad_pod_amount_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(None, [override])
