"""A stand-in for the `vllm` package and for a GPU, so the vLLM backend's wiring runs on this CPU
without vLLM: which engine is built (its keyword arguments), on how much of which card, and when.

    llm = install(monkeypatch, reply_ids=[...])     # `import vllm` gives the fake; no engine yet
    gpu = fake_gpu(monkeypatch, free_gib=40)        # torch.cuda reports one card of 80 GiB, 40 free
    ...                                             # code under test
    llm.built[0].kwargs["gpu_memory_utilization"]  # what the engine was asked for

Every request is answered with `reply_ids` (each of its n samples the same).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch

GIB = 1 << 30


class FakeLLM:
    """`vllm.LLM`: records its keyword arguments and whether it was shut down."""

    built: ClassVar[list[FakeLLM]] = []
    reply_ids: ClassVar[list[int]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.shut_down = False
        self.requests = 0
        # what expo.generation.engine.release_engine calls; no model_config: the spec gives the length
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=self._shutdown))
        FakeLLM.built.append(self)

    def _shutdown(self) -> None:
        self.shut_down = True

    def generate(self, requests: list[dict[str, Any]], params: list[Any], use_tqdm: Any = None) -> list[Any]:
        self.requests += len(requests)
        def sample() -> SimpleNamespace:
            return SimpleNamespace(token_ids=list(self.reply_ids), cumulative_logprob=-1.0, logprobs=None)

        return [SimpleNamespace(outputs=[sample() for _ in range(p.n)]) for p in params]

    def reset_prefix_cache(self) -> None:
        pass

    def collective_rpc(self, *args: Any, **kwargs: Any) -> None:
        pass


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder (safetensors and tokenizer) for the fake engine to be built from."""
    from expo.scratch_models import char_tokenizer, tiny_qwen2

    folder = tmp_path_factory.mktemp("model")
    tok = char_tokenizer()
    tiny_qwen2(tok, hidden=32, layers=1, heads=2).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def install(monkeypatch: pytest.MonkeyPatch, reply_ids: list[int] | tuple[int, ...] = ()) -> type[FakeLLM]:
    """Make `import vllm` give the fake, with no process engine built yet, until the test ends."""
    from expo.generation import engine

    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(FakeLLM, "built", [])
    monkeypatch.setattr(FakeLLM, "reply_ids", list(reply_ids))
    # The engine module sets this for an in-process engine: set here so the test's environment is restored.
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    for name in ("_ENGINE", "_SPEC", "_WEIGHTS"):  # no engine yet; the process's own comes back after
        monkeypatch.setattr(engine, name, None)
    return FakeLLM


@dataclass
class FakeGPU:
    """What torch.cuda reports: `count` cards of `total_gib`, `free_gib` free on each; the devices whose
    free memory was asked for."""

    free_gib: float
    total_gib: float = 80.0
    count: int = 1
    asked: list[int | None] = field(default_factory=list)

    def mem_get_info(self, device: int | None = None) -> tuple[int, int]:
        self.asked.append(device)
        return int(self.free_gib * GIB), int(self.total_gib * GIB)


def fake_gpu(monkeypatch: pytest.MonkeyPatch, free_gib: float, total_gib: float = 80.0,
             count: int = 1) -> FakeGPU:
    """torch.cuda as a machine with `count` GPUs would report it (nothing is ever put on them)."""
    gpu = FakeGPU(free_gib, total_gib, count)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "mem_get_info", gpu.mem_get_info)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return gpu
