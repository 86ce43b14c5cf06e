"""vLLM backend: `vllm.LLM` over every visible GPU (tensor parallel), for the GPU image (extra `gpu`).

How: prompts are tokenized with our tokenizer under the shared prompt policy (`encode_prompts`) and
sent as token ids, one `SamplingParams` per prompt (n, temperature, top_p, max_tokens, seed + index so
identical prompts still get different samples, logprobs=0 for the sampled token's log-prob).
`Completion.logprob` is vLLM's cumulative log-prob, which by default (`logprobs_mode="raw_logprobs"`)
is under the model's raw distribution, as in the HF backend.

Weight updates (`load_weights`): with one GPU the engine runs in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, as TRL's colocate mode does) and the tensors go straight into the
engine's model via its `load_weights` (HF parameter names; pass a merged model, not a PEFT wrapper).
With several GPUs the engine's workers are other processes, so the state dict is sent to each through
`LLM.collective_rpc` (one CPU copy per worker). Not exercised on this project's CI machines (no vLLM
there); tests/test_generation.py has a `vllm`-marked test for a GPU image.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from expo.config import GenerationConfig
from expo.errors import ModelError
from expo.generation.base import Completion, GenerationStats, begin_generate


class VLLMGenerator:
    """`Generator` over `vllm.LLM`, loaded from a model folder or hub id."""

    def __init__(self, model_path: str | Path, tokenizer: Any, cfg: GenerationConfig, ignore_eos: bool = False,
                 gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False) -> None:
        import torch

        try:
            import vllm
        except ImportError as exc:
            raise ModelError("generation.backend is 'vllm' but vllm is not installed "
                             "(pip install 'expo-pipeline[gpu]', or set generation.backend=hf)") from exc
        self.tokenizer, self.cfg, self.ignore_eos = tokenizer, cfg, ignore_eos
        self.stats = GenerationStats()
        self._vllm = vllm
        self.tensor_parallel_size = max(1, torch.cuda.device_count())
        if self.tensor_parallel_size == 1:
            # In-process engine: load_weights can reach the model object directly.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.llm = vllm.LLM(
            model=str(model_path), tensor_parallel_size=self.tensor_parallel_size, dtype="auto",
            seed=cfg.seed, max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
            gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code,
        )

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 max_new_tokens: int | None = None, seed: int | None = None) -> list[list[Completion]]:
        started = time.perf_counter()
        encoded, max_new = begin_generate(prompts, n, max_new_tokens, self.tokenizer, self.cfg, self.stats)
        greedy = temperature == 0.0
        live = [i for i, ids in enumerate(encoded.ids) if ids is not None]
        requests = [{"prompt_token_ids": encoded.ids[i]} for i in live]
        params = [self._vllm.SamplingParams(
            n=1 if greedy else n,  # greedy samples are identical (older vLLM refuses n > 1 greedy)
            temperature=temperature, top_p=1.0 if greedy else self.cfg.top_p, max_tokens=max_new,
            seed=None if seed is None else seed + i, logprobs=0, ignore_eos=self.ignore_eos,
        ) for i in live]
        outputs = self.llm.generate(requests, params, use_tqdm=False) if requests else []
        results: list[list[Completion]] = [[] for _ in prompts]
        for i, request_output in zip(live, outputs):
            completions = [_completion(o) for o in request_output.outputs]
            results[i] = completions * n if greedy else completions
            self.stats.sequences += len(completions)
            self.stats.tokens += sum(c.num_tokens for c in completions)
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - started
        return results

    def load_weights(self, model_or_state_dict: Any) -> None:
        state = model_or_state_dict
        if hasattr(state, "state_dict"):
            state = state.state_dict()
        weights = [(name, tensor.detach()) for name, tensor in state.items()]
        engine_model = _engine_model(self.llm)
        if engine_model is not None:
            engine_model.load_weights(weights)
        else:
            cpu = [(name, tensor.to("cpu")) for name, tensor in weights]
            self.llm.collective_rpc(_load_in_worker, args=(cpu,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights


def _completion(output: Any) -> Completion:
    token_ids = list(output.token_ids)
    logprob = output.cumulative_logprob
    if logprob is None and output.logprobs:
        logprob = sum(step[tok].logprob for step, tok in zip(output.logprobs, token_ids))
    return Completion(text=output.text, token_ids=token_ids, logprob=float(logprob or 0.0),
                      num_tokens=len(token_ids), truncated=output.finish_reason == "length")


def _engine_model(llm: Any) -> Any | None:
    """The model object of an in-process engine, or None when the workers are other processes."""
    try:
        return llm.llm_engine.model_executor.driver_worker.model_runner.model
    except AttributeError:
        return None


def _load_in_worker(worker: Any, weights: list) -> None:
    """Runs inside each vLLM worker process (collective_rpc passes the worker first)."""
    worker.model_runner.model.load_weights(weights=weights)
