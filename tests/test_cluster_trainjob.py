"""expo.cluster.trainjob: the TrainJob object, checked against Trainer v2.3.0's API two ways.

1. tests/resources/trainer-v2.3.0/trainjob.schema.json (hand-written subset of the CRD, see README there);
2. kubeflow-trainer-api 2.3.0's typed models: the round trip must give back the very same object.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from expo.cluster.trainjob import GROUP, MLFLOW_CLIENT_LABEL, TRAINER_RELEASE, VERSION, build_trainjob
from expo.config import load_config
from expo.errors import ConfigError

SCHEMA = json.loads(
    (Path(__file__).parent / "resources" / "trainer-v2.3.0" / "trainjob.schema.json").read_text()
)
W = "/workspace/trainjobs/j1"


def make(overrides: list[str] | None = None, **kw):
    cfg = load_config(None, overrides or [])
    args = dict(
        name="expo-exp-grpo-1a2b3c4d",
        cfg=cfg,
        arm="exp-grpo",
        data_path=f"{W}/data",
        model_path=f"{W}/model",
        output_path=f"{W}/output",
        namespace="expo",
    )
    args.update(kw)
    return build_trainjob(**args)


def check_list_map_keys(schema: dict, value, at: str = "") -> None:
    """The CRD's x-kubernetes-list-map-keys: list items must be unique by that key."""
    if isinstance(value, list) and "x-list-map-key" in schema:
        keys = [item[schema["x-list-map-key"]] for item in value]
        assert len(keys) == len(set(keys)), f"duplicate {schema['x-list-map-key']} in {at}: {keys}"
    if isinstance(value, dict):
        for k, v in value.items():
            if k in schema.get("properties", {}):
                check_list_map_keys(schema["properties"][k], v, f"{at}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check_list_map_keys(schema["items"], item, f"{at}[{i}]")


SETTINGS = [
    [],  # defaults: 1 node x 1 GPU
    ["cluster.train_nodes=2", "cluster.gpus_train=8"],  # the paper's multi-node setting
    ["cluster.gpus_train=0"],  # CPU-only nodes
    ["cluster.gpus_train=4", "cluster.accelerator_type=amd.com/gpu", "train.lora=true"],
]


@pytest.mark.parametrize("overrides", SETTINGS)
def test_trainjob_validates_against_crd_subset(overrides):
    job = make(overrides)
    jsonschema.validate(job, SCHEMA)
    check_list_map_keys(SCHEMA, job)


@pytest.mark.parametrize("overrides", SETTINGS)
def test_trainjob_round_trips_through_trainer_api_models(overrides):
    models = pytest.importorskip("kubeflow_trainer_api.models")
    job = make(overrides)
    parsed = models.TrainerV1alpha1TrainJob.from_dict(job)
    # Unknown fields are dropped by from_dict and wrong types raise: equality means every field is known.
    assert parsed.to_dict() == job


def test_schema_rejects_what_the_api_server_would_drop_or_refuse():
    job = make()
    job["spec"]["trainer"]["numNode"] = 2  # misspelt: a cluster would prune it and train on 1 node
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, SCHEMA)
    job = make()
    job["spec"]["trainer"]["resourcesPerNode"]["limits"]["memory"] = "lots"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, SCHEMA)


def test_nodes_gpus_and_launch_command():
    job = make(["cluster.train_nodes=2", "cluster.gpus_train=8"])
    trainer = job["spec"]["trainer"]
    assert job["apiVersion"] == f"{GROUP}/{VERSION}" and TRAINER_RELEASE == "v2.3.0"
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["resourcesPerNode"]["requests"] == trainer["resourcesPerNode"]["limits"]
    script = trainer["command"][2]
    # 2 nodes x 8 GPUs = 16 processes; rank and rendezvous come from the Trainer's PET_* variables.
    assert "--num_machines 2 --num_processes 16 --multi_gpu" in script
    assert '"$PET_NODE_RANK"' in script and '"$PET_MASTER_ADDR"' in script
    assert script.endswith('-m expo.cluster.worker "$@"')
    assert job["spec"]["runtimeRef"] == {
        "name": "expo-torch-distributed",
        "apiGroup": GROUP,
        "kind": "ClusterTrainingRuntime",
    }


def test_single_gpu_and_cpu_launch_flags():
    assert "--multi_gpu" not in make()["spec"]["trainer"]["command"][2]
    cpu = make(["cluster.gpus_train=0"])["spec"]["trainer"]
    assert "--cpu" in cpu["command"][2] and cpu["numProcPerNode"] == 1
    assert set(cpu["resourcesPerNode"]["limits"]) == {"cpu", "memory"}


def test_worker_args_carry_paths_and_config_round_trip():
    from expo.cluster.worker import load_config_json, parse_args

    job = make(["train.expo_beta=0.02"], explanations_path=f"{W}/explanations")
    args = parse_args(job["spec"]["trainer"]["args"])
    assert (args.arm, args.data, args.model, args.output, args.explanations) == (
        "exp-grpo",
        f"{W}/data",
        f"{W}/model",
        f"{W}/output",
        f"{W}/explanations",
    )
    assert load_config_json(args.config_json).train.expo_beta == 0.02


def test_workspace_volume_labels_and_secret_references():
    job = make(["cluster.workspace_pvc=my-pvc", "cluster.mlflow_secret=my-mlflow"])
    (patch,) = job["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"
    ]
    assert pod["spec"]["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": "my-pvc"}}]
    assert pod["spec"]["containers"][0]["volumeMounts"] == [{"name": "workspace", "mountPath": "/workspace"}]
    assert pod["metadata"]["labels"][MLFLOW_CLIENT_LABEL] == "true"  # else the NetworkPolicy blocks MLflow
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-mlflow",
        "key": "tracking-uri",
        "optional": True,
    }
    assert all("value" not in e for name, e in env.items() if name.startswith("MLFLOW_"))


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"name": "Expo_Job"}, "TrainJob name"),
        ({"name": "e" * 64}, "TrainJob name"),
        ({"data_path": "/tmp/data"}, "data_path"),
        ({"model_path": "/workspace/../etc"}, "model_path"),
        ({"output_path": "relative/out"}, "output_path"),
        ({"explanations_path": "/workspace"}, "explanations_path"),
    ],
)
def test_bad_names_and_paths_are_config_errors(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        make(**kw)


def test_worker_bad_config_json_exits_2(capsys):
    from expo.cluster import worker

    rc = worker.main(
        ["--config-json", "{not json", "--arm", "grpo", "--data", "d", "--model", "m", "--output", "o"]
    )
    assert rc == 2 and "--config-json: not valid JSON" in capsys.readouterr().err
    rc = worker.main(
        [
            "--config-json",
            '{"train": {"stepz": 1}}',
            "--arm",
            "grpo",
            "--data",
            "d",
            "--model",
            "m",
            "--output",
            "o",
        ]
    )
    assert rc == 2 and "train.stepz" in capsys.readouterr().err


def test_worker_calls_train_arm_with_its_arguments(monkeypatch):
    import expo.train
    from expo.cluster import worker

    calls = []
    monkeypatch.setattr(expo.train, "train_arm", lambda *a, **k: calls.append(a))
    job = make(explanations_path=f"{W}/explanations")
    assert worker.main(job["spec"]["trainer"]["args"]) == 0
    (call,) = calls
    assert call[0] == "exp-grpo" and call[2:] == (
        f"{W}/data",
        f"{W}/model",
        f"{W}/explanations",
        f"{W}/output",
    )
