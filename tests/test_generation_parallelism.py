"""The explanations and evaluation stages on several GPUs (expo.cluster.generation): which layout a pod
takes, and the stages run as one process per GPU. No GPU here: the rule is checked on the GPUs and card
sizes a pod would report, and the data-parallel launch runs as two real torchrun processes (gloo) with
the transformers backend, against the same stage in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expo.cluster import generation
from expo.cluster.pod import TrainProcessesError
from expo.config import ExpoConfig, load_config
from expo.io import read_json, read_jsonl, write_jsonl
from expo.plan import GiB
from fake_vllm import install
from trainkit import make_folders, pipeline_task_env, rows

QWEN_7B = {"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def model_folder(tmp_path: Path, config: dict | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("sets,gpus,card_gib,config,expected", [
    ([], 4, 80, QWEN_7B, 4),  # one card holds the 7B with room to spare: an engine per GPU
    ([], 4, 16, QWEN_7B, 1),  # it does not: one engine across the four
    ([], 4, 80, None, 1),  # a model of unknown shape stays tensor parallel
    ([], 1, 80, QWEN_7B, 1),  # one GPU: in this process
    (["generation.parallelism=tensor"], 4, 80, QWEN_7B, 1),
    (["generation.parallelism=data"], 4, 16, QWEN_7B, 4),  # told so (the plan warns it does not fit)
    (["generation.backend=hf"], 4, 80, QWEN_7B, 1),  # transformers: one process
])
def test_a_pod_runs_one_process_per_gpu_when_one_card_holds_the_model(monkeypatch, tmp_path, sets, gpus,
                                                                        card_gib, config, expected):
    install(monkeypatch)  # vllm importable: backend auto resolves to it on a GPU
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    backend = [] if any(s.startswith("generation.backend") for s in sets) else ["generation.backend=vllm"]
    cfg = load_config(None, [*backend, *sets])
    for stage in ("generate_explanations", "evaluate"):
        got = generation.stage_processes(cfg, stage, model_folder(tmp_path / stage, config), visible_gpus=gpus,
                                         card_bytes=int(card_gib * GiB))
        assert got == expected, stage


def test_the_worker_gets_the_stages_config_and_paths():
    cfg = ExpoConfig()
    argv = generation.worker_argv(4, cfg, "evaluate", "/d", "/m", "/o", name="grpo")
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    assert argv[6] == "expo.cluster.generation_worker"
    assert argv[argv.index("--stage") + 1] == "evaluate" and argv[argv.index("--name") + 1] == "grpo"
    assert json.loads(argv[argv.index("--config-json") + 1])["generation"]["parallelism"] == "auto"


def stage_config(stage: str) -> str:
    from expo.stages import stage_config_yaml

    cfg = load_config(None, ["generation.backend=hf", "generation.max_new_tokens=12",
                             "explain.temperature=0.0",  # greedy: the same text whichever process samples it
                             "explain.samples_per_question=1", "explain.keep_per_question=1",
                             "explain.solve_rate_samples=0", "evaluate.samples=2"])
    return stage_config_yaml(cfg, stage)


@pytest.fixture
def stage_env(monkeypatch, tmp_path):
    pipeline_task_env(monkeypatch, tmp_path, "generation-parallelism-test")
    make_folders(tmp_path, n=5)
    write_jsonl(tmp_path / "data" / "eval.jsonl", rows(5))
    return tmp_path


def run_stages(root: Path, out: Path) -> tuple[dict, dict]:
    from expo import stages

    explained = stages.generate_explanations(stage_config("generate_explanations"), str(root / "data"),
                                             str(root / "model"), str(out / "explanations"))
    evaluated = stages.evaluate(stage_config("evaluate"), "base", str(root / "model"), str(root / "data"),
                                str(out / "evaluation"))
    return explained, evaluated


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_stages_run_as_two_processes_and_write_what_one_writes(monkeypatch, stage_env):
    root = stage_env
    one = run_stages(root, root / "one")
    monkeypatch.setattr(generation, "stage_processes", lambda *args, **kwargs: 2)
    two = run_stages(root, root / "two")
    assert (one[0]["generation/processes"], two[0]["generation/processes"]) == (1, 2)
    same = lambda m: {k: v for k, v in m.items() if not k.startswith("generation/") and "seconds" not in k}  # noqa: E731
    assert same(two[0]) == same(one[0])  # the explanations' metrics, read from what the processes wrote
    assert read_jsonl(root / "two" / "explanations" / "explanations.jsonl") == read_jsonl(
        root / "one" / "explanations" / "explanations.jsonl")
    metrics = {n: read_json(root / n / "evaluation" / "metrics.json") for n in ("one", "two")}
    assert metrics["two"]["questions"] == 5 and metrics["two"]["name"] == "base"
    assert [q["greedy"] for q in metrics["two"]["per_question"]] == [
        q["greedy"] for q in metrics["one"]["per_question"]]
    assert set(two[1]) == set(one[1])  # the evaluation's flat metrics, for MLflow and the step's Metrics


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_failing_process_is_one_line_naming_the_stage(monkeypatch, stage_env):
    from expo import stages

    (stage_env / "data" / "train.jsonl").unlink()
    monkeypatch.setattr(generation, "stage_processes", lambda *args, **kwargs: 2)
    with pytest.raises(TrainProcessesError) as err:
        stages.generate_explanations(stage_config("generate_explanations"), str(stage_env / "data"),
                                     str(stage_env / "model"), str(stage_env / "out"))
    message = str(err.value)
    assert message.startswith("generate_explanations: the per-GPU processes (torchrun) exited with code")
    assert "train.jsonl" in message and "\n" not in message
