"""Batched transformers `generate`: the backend on CPU and wherever vLLM is not installed.

How: the `n` samples of each prompt are separate rows; rows are sorted longest first (similar lengths
share a batch, so little padding is computed), left-padded with an attention mask, and run
`batch_size` rows per `generate` call with the KV cache. Qwen2-style models derive position ids from
the attention mask inside `generate` (`_prepare_position_ids_for_generation`), so a left-padded row
decodes exactly as it would alone; tests/test_generation.py checks batched greedy == one-by-one greedy.

Sampling settings come only from the call and `GenerationConfig`: a checkpoint's own
`generation_config.json` (Qwen's top_k=20, repetition_penalty=1.05, ...) is neutralised, so a
temperature means the same thing for every model and for the vLLM backend.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers import LogitsProcessor, LogitsProcessorList

from expo.config import GenerationConfig
from expo.errors import ModelError
from expo.generation.base import Completion, GenerationStats, begin_generate, end_ids, first_eos


class HFGenerator:
    """`Generator` over a transformers causal LM held in memory.

    `ignore_eos=True` forces exactly `max_new_tokens` tokens per row (benchmarks: equal work per row).
    """

    def __init__(self, model: Any, tokenizer: Any, cfg: GenerationConfig, ignore_eos: bool = False) -> None:
        self.model, self.tokenizer, self.cfg, self.ignore_eos = model, tokenizer, cfg, ignore_eos
        self.stats = GenerationStats()
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    def load_weights(self, model_or_state_dict: Any) -> None:
        """A module is adopted as it is (no copy: the live policy); a state dict is loaded in place."""
        if isinstance(model_or_state_dict, torch.nn.Module):
            self.model = model_or_state_dict
            return
        try:
            self.model.load_state_dict(model_or_state_dict, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"load_weights: state dict does not fit the model: {str(exc).splitlines()[0]}") \
                from exc

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 max_new_tokens: int | None = None, seed: int | None = None) -> list[list[Completion]]:
        started = time.perf_counter()
        encoded, max_new = begin_generate(prompts, n, max_new_tokens, self.tokenizer, self.cfg, self.stats)
        greedy = temperature == 0.0
        copies = 1 if greedy else n  # greedy samples are identical: decode once, copy
        rows = [(i, k, ids) for i, ids in enumerate(encoded.ids) if ids is not None for k in range(copies)]
        rows.sort(key=lambda row: -len(row[2]))  # stable: a prompt's samples keep their order
        results: list[list[Completion | None]] = [[None] * copies if ids is not None else []
                                                  for ids in encoded.ids]
        with _seeded(seed, self.model.device), _eval_mode(self.model):
            for start in range(0, len(rows), self.cfg.batch_size):
                batch = rows[start : start + self.cfg.batch_size]
                done = self._generate_batch([ids for _, _, ids in batch], temperature, max_new)
                for (i, k, _), completion in zip(batch, done):
                    results[i][k] = completion
        out = [[c for c in per_prompt if c is not None] for per_prompt in results]
        if greedy and n > 1:
            out = [[replace(c, token_ids=list(c.token_ids)) for c in per * n] for per in out]
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - started
        return out

    def _generate_batch(self, batch: list[list[int]], temperature: float, max_new: int) -> list[Completion]:
        input_ids, attention = left_pad(batch, self.pad_id, self.model.device)  # (B, T), (B, T)
        recorder = _LogprobRecorder()
        sequences = self.model.generate(
            input_ids=input_ids, attention_mask=attention, generation_config=self._config(temperature, max_new),
            logits_processor=LogitsProcessorList([recorder, StepTokenCounter(self.stats, self.eos_ids)]),
        )
        new_tokens = sequences[:, input_ids.shape[1] :]  # (B, L), L <= max_new
        token_logprobs = recorder.finish(new_tokens)  # (B, L)
        completions = [self._completion(new_tokens[b].tolist(), token_logprobs[b])
                       for b in range(len(batch))]
        self.stats.tokens_in_flight = 0  # the batch's tokens are counted whole below
        self.stats.sequences += len(completions)
        self.stats.tokens += sum(c.num_tokens for c in completions)
        return completions

    def _completion(self, tokens: list[int], logprobs: torch.Tensor) -> Completion:
        # A row without EOS never finished, so generate ran it to max_new: all its tokens are real
        # (padding only follows an EOS). With ignore_eos every row is max_new long by construction.
        eos_at = None if self.ignore_eos else first_eos(tokens, self.eos_ids)
        kept = tokens if eos_at is None else tokens[: eos_at + 1]
        return Completion(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            token_ids=kept,
            logprob=float(logprobs[: len(kept)].sum()),
            num_tokens=len(kept),
            truncated=eos_at is None,
        )

    def _config(self, temperature: float, max_new: int) -> HFGenerationConfig:
        """Only our settings: every knob a checkpoint may set is given its neutral value explicitly,
        because `generate` fills unset (None) fields from the model's own generation config."""
        sampling = temperature > 0.0
        settings: dict[str, Any] = {
            "max_new_tokens": max_new, "do_sample": sampling, "num_beams": 1, "num_return_sequences": 1,
            "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "use_cache": True,
            "pad_token_id": self.pad_id, "eos_token_id": list(self.eos_ids),
        }
        if sampling:  # warpers apply only when sampling (setting them for greedy only draws warnings)
            settings.update(temperature=temperature, top_p=self.cfg.top_p, top_k=0, typical_p=1.0,
                            epsilon_cutoff=0.0, eta_cutoff=0.0)
        if getattr(self.model.generation_config, "min_p", None) is not None:
            settings["min_p"] = 0.0
        if self.ignore_eos:
            settings["min_new_tokens"] = max_new  # EOS is masked until max_new: every row does equal work
        else:
            settings["min_length"] = 0
        return HFGenerationConfig(**settings)


class _LogprobRecorder(LogitsProcessor):
    """Records log p_model(token) of each generated token, holding one (B, V) step at a time.

    `generate` calls processors with the raw next-token logits before the temperature and top-p
    warpers (they are appended after custom processors), so these are the model's own probabilities.
    At step t the token chosen at step t-1 is the last column of `input_ids`; `finish` reads the last.
    """

    def __init__(self) -> None:
        self.prev: torch.Tensor | None = None  # (B, V) log-softmax of the previous step
        self.steps: list[torch.Tensor] = []  # each (B,)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))  # (B,)
        self.prev = torch.log_softmax(scores.float(), dim=-1)  # (B, V)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        if self.prev is not None and len(self.steps) < new_tokens.shape[1]:
            self.steps.append(self.prev.gather(1, new_tokens[:, -1:]).squeeze(1))  # (B,)
        if not self.steps:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.steps, dim=1).to("cpu")  # (B, L)


class StepTokenCounter(LogitsProcessor):
    """Counts, at every decoding step, the tokens of rows still decoding into `stats.tokens_in_flight`,
    so the progress a stage shows moves every step, not once per finished batch. The caller folds the
    count into `stats.tokens` when the batch ends (and sets it back to 0)."""

    def __init__(self, stats: GenerationStats, eos_ids: tuple[int, ...]) -> None:
        self.stats, self.eos_ids = stats, eos_ids
        self.done: torch.Tensor | None = None  # (B,) rows that have emitted an end token
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started:  # the first call comes before any token was generated
            last = input_ids[:, -1]  # (B,) the token chosen at the previous step
            done = self.done if self.done is not None else torch.zeros_like(last, dtype=torch.bool)
            self.stats.tokens_in_flight += int((~done).sum())
            self.done = done | torch.isin(last, torch.tensor(self.eos_ids, device=last.device))
        self.started = True
        return scores


def left_pad(batch: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one left-padded batch (generation continues from the right edge) and its mask."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
    for b, ids in enumerate(batch):
        input_ids[b, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[b, width - len(ids) :] = 1
    return input_ids.to(device), attention.to(device)


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """Every id that ends a completion (`expo.generation.base.end_ids`, as the vLLM backend uses)."""
    return end_ids(getattr(model.generation_config, "eos_token_id", None), tokenizer)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for one call and restore the caller's RNG state afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off while sampling; a model under training goes back to train mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
