"""The generation interface every sampler in the pipeline uses, and the prompt policy both backends share.

`Generator.generate(prompts, n, temperature, max_new_tokens, seed)` returns, for each prompt, a list of
`n` `Completion`s (an empty list for a prompt that was skipped). Temperature 0 means greedy decoding.
Backends: `HFGenerator` (batched transformers `generate`, CPU or GPU) and `VLLMGenerator` (vllm.LLM);
`expo.generation.make_generator` picks one from `GenerationConfig.backend`.

Prompt policy (same in both backends, `encode_prompts`):
- a prompt's ids are `expo.prompts.prompt_ids`, the ids TRL's trainers compute from the same text
  (one BOS, never two), so what is sampled and evaluated is what is trained;
- a prompt longer than `max_prompt_tokens` is truncated from the left (the question's end and the
  assistant header are what the model answers from) or skipped, per `overlong_prompt`, and counted;
- an empty or whitespace-only prompt is skipped (returned as `[]`) and counted, with a warning, rather
  than raising: one bad row must not end a long sampling run, and callers see the empty list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from expo.config import GenerationConfig
from expo.errors import ModelError
from expo.progress import rate
from expo.prompts import prompt_ids

log = logging.getLogger(__name__)


@dataclass
class Completion:
    """One sampled continuation of a prompt.

    `logprob` is the sum over the generated tokens (EOS included when produced) of
    log p_model(token | prefix) under the model's own distribution: raw logits, temperature 1, no top-p.
    That is the quantity the paper's in-distribution check averages per token, and what vLLM reports by
    default (`raw_logprobs`), so both backends agree. `truncated`: stopped at `max_new_tokens` without EOS.
    """

    text: str
    token_ids: list[int]
    logprob: float
    num_tokens: int
    truncated: bool


@dataclass
class GenerationStats:
    """Running counters of one generator (read by the samplers for their statistics and progress)."""

    calls: int = 0
    sequences: int = 0
    tokens: int = 0  # generated tokens kept in completions
    # tokens of the batch being decoded, counted per decoding step (hf backend), so progress moves
    # inside one long generate call; folded into `tokens` when the batch ends
    tokens_in_flight: int = 0
    sequences_in_flight: int = 0  # samples finished inside the running call (vllm backend), likewise
    seconds: float = 0.0  # wall time inside generate
    prompts_truncated: int = 0
    prompts_skipped_overlong: int = 0
    prompts_skipped_empty: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def generated(self) -> int:
        """Tokens generated so far, those of the batch still decoding included."""
        return self.tokens + self.tokens_in_flight

    def finished(self) -> int:
        """Samples finished so far, those of the running call included."""
        return self.sequences + self.sequences_in_flight


def progress_reader(stats: GenerationStats, expected: int) -> Callable[[], str]:
    """A progress line for `expo.progress.watch` over one stage's generation: `12/256 samples, 3,104
    tokens, 84 tok/s`. Samples finish per batch; tokens move every decoding step, so a long batch
    still shows progress."""
    base_seq, base_tok, started = stats.finished(), stats.generated(), time.perf_counter()

    def read() -> str:
        tokens = stats.generated() - base_tok
        return (f"{stats.finished() - base_seq}/{expected} samples, {tokens:,} tokens, "
                f"{rate(tokens, time.perf_counter() - started)} tok/s")

    return read


@runtime_checkable
class Generator(Protocol):
    """What the explanation sampler, the trainer's regeneration and the evaluator call."""

    stats: GenerationStats

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 max_new_tokens: int | None = None, seed: int | None = None) -> list[list[Completion]]:
        """`n` completions per prompt ([] for a skipped prompt); greedy when `temperature == 0`."""
        ...

    def load_weights(self, model_or_state_dict: Any) -> None:
        """Generate from these weights from now on (the live training model: no round trip to disk)."""
        ...


@dataclass
class EncodedPrompts:
    """Token ids per prompt (None = skipped) and what the policy did to them."""

    ids: list[list[int] | None]
    truncated: int = 0
    skipped_overlong: int = 0
    skipped_empty: int = 0
    skipped: list[int] = field(default_factory=list)


def encode_prompts(prompts: list[str], tokenizer: Any, cfg: GenerationConfig) -> EncodedPrompts:
    """Tokenize prompts and apply the overlong/empty policy of the module docstring."""
    out = EncodedPrompts(ids=[])
    limit = cfg.max_prompt_tokens
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(prompt, tokenizer) if prompt.strip() else []
        if not ids:
            out.ids.append(None)
            out.skipped_empty += 1
            out.skipped.append(i)
        elif len(ids) > limit and cfg.overlong_prompt == "skip":
            out.ids.append(None)
            out.skipped_overlong += 1
            out.skipped.append(i)
        elif len(ids) > limit:
            out.ids.append(ids[-limit:])
            out.truncated += 1
        else:
            out.ids.append(ids)
    if out.skipped_empty:
        log.warning("skipped %d empty prompt(s)", out.skipped_empty)
    if out.skipped_overlong or out.truncated:
        what = "skipped" if cfg.overlong_prompt == "skip" else "truncated from the left"
        log.warning("%d prompt(s) longer than generation.max_prompt_tokens=%d %s",
                    out.skipped_overlong + out.truncated, limit, what)
    return out


def begin_generate(prompts: list[str], n: int, max_new_tokens: int | None, tokenizer: Any,
                   cfg: GenerationConfig, stats: GenerationStats) -> tuple[EncodedPrompts, int]:
    """The opening of every backend's `generate`: check `n`, encode the prompts under the prompt policy
    and count in `stats` what the policy did. Returns the encoded prompts and the token budget to use."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    encoded = encode_prompts(prompts, tokenizer, cfg)
    stats.prompts_truncated += encoded.truncated
    stats.prompts_skipped_overlong += encoded.skipped_overlong
    stats.prompts_skipped_empty += encoded.skipped_empty
    return encoded, max_new_tokens or cfg.max_new_tokens


def first_eos(tokens: list[int], eos_ids: Any) -> int | None:
    """Index of the first end token among generated `tokens`, or None when the row never ended."""
    return next((j for j, t in enumerate(tokens) if t in eos_ids), None)


def end_ids(configured: Any, tokenizer: Any) -> tuple[int, ...]:
    """Every id that ends a completion: a generation config's `eos_token_id` (an int or a list: Qwen
    instruct has two) and the tokenizer's. Both backends stop on, and cut at, the same set."""
    ids: list[int] = []
    if isinstance(configured, int):
        ids.append(configured)
    elif configured:
        ids.extend(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise ModelError("the tokenizer and the model's generation config define no EOS token")
    return tuple(dict.fromkeys(ids))


def model_path(model: Any) -> str:
    """The folder or hub id a loaded model came from (vLLM loads from there)."""
    if isinstance(model, (str, Path)):
        return str(model)
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
    return str(path)
