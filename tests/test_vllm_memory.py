"""GPU memory around a vLLM engine (no vLLM, no GPU: tests/fake_vllm.py stands in for both).

vLLM claims share x total of a card as it starts and refuses to start when that much is not free. So
the generation stages put no transformers copy of the model on the GPU before the engine, and the
share asked for is the configured one cut to what is free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import expo.modeling
from expo.config import ExpoConfig, load_config
from expo.errors import ModelError
from expo.io import read_json, write_jsonl
from expo.scratch_models import char_tokenizer
from fake_vllm import GIB, FakeLLM, fake_gpu, install, model_dir  # noqa: F401 (a fixture)


def data_dir(root: Path) -> Path:
    rows = [{"id": str(i), "question": f"What is {i}+1?", "answer": str(i + 1), "level": 1,
             "solution": f"{i}+1={i + 1}"} for i in range(3)]
    write_jsonl(root / "data" / "train.jsonl", rows)
    write_jsonl(root / "data" / "eval.jsonl", rows)
    return root / "data"


def vllm_config(*extra: str) -> ExpoConfig:
    return load_config(None, ["generation.backend=vllm", "generation.max_new_tokens=6",
                              "explain.samples_per_question=2", "explain.keep_per_question=1",
                              "explain.solve_rate_samples=0", "evaluate.samples=2", *extra])


def record_loads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every transformers load of the model: the device asked for, and the engines built and still
    running at that moment. The model itself is loaded on the CPU (there is no GPU here)."""
    loads: list[dict[str, Any]] = []
    real = expo.modeling.load_model

    def load_model(source: Any, cfg: Any, device: str | None = None) -> tuple[Any, Any]:
        loads.append({"device": expo.modeling.resolve_device(device), "engines_built": len(FakeLLM.built),
                      "engines_alive": sum(not llm.shut_down for llm in FakeLLM.built)})
        return real(source, cfg, device="cpu")

    monkeypatch.setattr(expo.modeling, "load_model", load_model)
    return loads


def reply(text: str) -> list[int]:
    tok = char_tokenizer()
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


@pytest.mark.parametrize("free_gib,configured,expected", [
    (79.0, 0.9, 0.9),  # an empty card: the configured share
    (40.0, 0.9, 0.487),  # 40 GiB free: (40 - 1) / 80, rounded down
    (40.0, 0.3, 0.3),  # a smaller configured share fits as it is
    (14.0, 0.9, 0.162),  # a 7B model's bf16 weights already on the card: what is left
])
def test_the_engine_share_follows_the_free_memory(monkeypatch: pytest.MonkeyPatch, free_gib: float,
                                                  configured: float, expected: float) -> None:
    from expo.generation.engine import EngineSpec, engine_kwargs

    fake_gpu(monkeypatch, free_gib=free_gib, total_gib=80)
    spec = EngineSpec(model="m", max_model_len=64, memory=configured)
    assert engine_kwargs(spec)["gpu_memory_utilization"] == expected
    # vLLM's own check: free memory on startup >= share x total
    assert expected * 80 * GIB <= free_gib * GIB


def test_a_full_card_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from expo.generation.engine import EngineSpec, engine_kwargs

    fake_gpu(monkeypatch, free_gib=1.2, total_gib=80)
    with pytest.raises(ModelError, match=r"^cuda:0 has 1\.2 of 80\.0 GiB free: too little for a vLLM engine"):
        engine_kwargs(EngineSpec(model="m", max_model_len=64))


@pytest.mark.parametrize("env,devices", [
    ({}, list(range(4))),  # one process, tensor parallel over the 4 cards: the fullest one decides
    ({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "2"}, [2]),  # torchrun: the process's own card
])
def test_the_memory_is_read_on_the_engine_cards(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                env: dict[str, str], devices: list[int]) -> None:
    from expo.config import GenerationConfig
    from expo.generation.vllm import VLLMGenerator

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    llm = install(monkeypatch)
    gpu = fake_gpu(monkeypatch, free_gib=70, count=4)
    VLLMGenerator(model_dir, char_tokenizer(), GenerationConfig(backend="vllm"), memory=0.9)
    assert sorted(set(gpu.asked)) == devices
    assert llm.built[0].kwargs["gpu_memory_utilization"] == 0.862  # (70 - 1) / 80


def test_explain_with_vllm_puts_no_model_on_the_gpu_before_the_engine(monkeypatch: pytest.MonkeyPatch,
                                                                      model_dir: Path,
                                                                      tmp_path: Path) -> None:
    """The explanations stage samples from the engine (its share computed from the free memory), then
    releases it, and only then loads the model for the in-distribution check."""
    from expo.explain import generate_explanations

    llm = install(monkeypatch, reply_ids=reply("1+1=2 so 2"))
    fake_gpu(monkeypatch, free_gib=60, total_gib=80)
    loads = record_loads(monkeypatch)
    stats = generate_explanations(vllm_config(), data_dir(tmp_path), model_dir, tmp_path / "out")
    # One transformers load, for the check, once the engine was built and shut down; the card has room.
    assert loads == [{"device": "cuda", "engines_built": 1, "engines_alive": 0}]
    (engine,) = llm.built
    assert stats["samples"] == 6 and engine.requests == 3  # sampled by the engine
    assert engine.kwargs["gpu_memory_utilization"] == 0.737  # (60 - 1) / 80, under the configured 0.9
    assert (tmp_path / "out" / "in_distribution.json").is_file()


def test_the_check_falls_back_to_the_cpu_when_the_card_stays_full(monkeypatch: pytest.MonkeyPatch,
                                                                  model_dir: Path,
                                                                  tmp_path: Path) -> None:
    from expo.explain import generate_explanations

    install(monkeypatch, reply_ids=reply("2"))
    gpu = fake_gpu(monkeypatch, free_gib=60, total_gib=80)
    loads = record_loads(monkeypatch)
    from expo.generation import engine

    real_release = engine.release_engine

    def release_that_frees_nothing() -> None:
        real_release()
        gpu.free_gib = 0.0  # the engine's memory did not come back

    monkeypatch.setattr(engine, "release_engine", release_that_frees_nothing)
    generate_explanations(vllm_config(), data_dir(tmp_path), model_dir, tmp_path / "out")
    assert loads == [{"device": "cpu", "engines_built": 1, "engines_alive": 0}]


def test_evaluate_with_vllm_loads_no_transformers_model(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                        tmp_path: Path) -> None:
    from expo.evaluate import evaluate_model

    llm = install(monkeypatch, reply_ids=reply("2"))
    fake_gpu(monkeypatch, free_gib=30, total_gib=80)
    loads = record_loads(monkeypatch)
    metrics = evaluate_model(str(model_dir), data_dir(tmp_path), vllm_config(), tmp_path / "out")
    assert loads == []  # the engine holds the only copy of the weights
    (engine,) = llm.built
    assert engine.kwargs["gpu_memory_utilization"] == 0.362  # (30 - 1) / 80
    assert engine.requests > 0 and read_json(tmp_path / "out" / "metrics.json") == metrics


@pytest.mark.parametrize("trusted", [False, True])
def test_the_generation_stages_engine_trusts_a_models_code_only_when_asked(monkeypatch: pytest.MonkeyPatch,
                                                                           model_dir: Path, tmp_path: Path,
                                                                           trusted: bool) -> None:
    """model.trust_remote_code reaches the engine of the explanations and evaluation stages (a model
    whose architecture is its repo's own Python loads there as it does in training)."""
    from expo.evaluate import evaluate_model
    from expo.explain import generate_explanations

    llm = install(monkeypatch, reply_ids=reply("2"))
    fake_gpu(monkeypatch, free_gib=60, total_gib=80)
    record_loads(monkeypatch)
    cfg = vllm_config(f"model.trust_remote_code={str(trusted).lower()}")
    generate_explanations(cfg, data_dir(tmp_path), model_dir, tmp_path / "explain")
    evaluate_model(str(model_dir), data_dir(tmp_path), cfg, tmp_path / "evaluate")
    assert [engine.kwargs["trust_remote_code"] for engine in llm.built] == [trusted, trusted]
