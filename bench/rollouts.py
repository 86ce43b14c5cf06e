"""GRPO rollout generation: one prefill per distinct prompt (ours) against TRL's repeated prefill.

What: the embedded default's model shape (tiny Qwen2, one token per 3-digit number) on its prompts (a
question with twenty numbers), 16 distinct prompts x G rollouts, 16 new tokens each (EOS ignored, so
both sides do the same work), sampling at temperature 1. "repeated" is what TRL's transformers path
runs: `generate` on the batch with each prompt G times. "shared" is `expo.generation.shared_prefix`:
each distinct prompt prefilled once, its cache copied to the G rows. The two alternate, median of
`--repeats`; they return the same samples for the same seed (tests/test_generation.py).

Why: the per-step phase timings showed generation as the largest phase of a training step on CPU
(docs/benchmarks.md); the prefill is its part that grows with G for no new information.

    .venv/bin/python bench/rollouts.py [--prompts 16] [--groups 4,8,16] [--new-tokens 16] [--repeats 5]

Prints a table, then one JSON line: {"repeated_s", "shared_s", "speedup"} for the first G, and
"by_group" for all.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
from transformers import GenerationConfig

from expo.generation.hf import left_pad
from expo.generation.shared_prefix import sample_shared_prefix
from expo.scratch_models import tiny_qwen2
from expo.toy.model import TinyArch, toy_tokenizer
from expo.toy.task import generate_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--groups", default="4,8,16", help="G values (rollouts per prompt)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    questions = [r["problem"] + "\n" for r in generate_rows(0, a.prompts)]
    random.Random(0).shuffle(questions)
    questions = questions[: a.prompts]
    tok = toy_tokenizer([(q, "") for q in questions])
    arch = TinyArch()
    model = tiny_qwen2(tok, hidden=arch.hidden, layers=arch.layers, heads=arch.heads).eval()
    ids = [tok(q, add_special_tokens=False)["input_ids"] for q in questions]
    config = GenerationConfig(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=True,
                              temperature=1.0, top_k=0, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)

    def repeated(batch: list[list[int]]) -> None:
        inputs, mask = left_pad(batch, tok.pad_token_id, torch.device("cpu"))
        with torch.no_grad():
            model.generate(input_ids=inputs, attention_mask=mask, generation_config=config)

    def shared(batch: list[list[int]]) -> None:
        sample_shared_prefix(model, batch, config, pad_token_id=tok.pad_token_id)

    results = []
    for G in [int(g) for g in a.groups.split(",")]:
        batch = [p for p in ids for _ in range(G)]  # what TRL's RepeatSampler yields
        repeated(batch), shared(batch)  # warm-up: allocator, kernels
        times: dict[str, list[float]] = {"repeated": [], "shared": []}
        for _ in range(a.repeats):  # alternate, so load from other processes hits both alike
            for name, fn in (("repeated", repeated), ("shared", shared)):
                started = time.perf_counter()
                fn(batch)
                times[name].append(time.perf_counter() - started)
        rep, sha = statistics.median(times["repeated"]), statistics.median(times["shared"])
        results.append({"G": G, "rollouts": len(batch), "repeated_s": round(rep, 4), "shared_s": round(sha, 4),
                        "speedup": round(rep / sha, 2)})

    print(f"tiny Qwen2 {model.num_parameters() / 1e6:.2f}M parameters, {a.prompts} prompts of "
          f"{statistics.mean(map(len, ids)):.0f} tokens, {a.new_tokens} new tokens, torch threads "
          f"{torch.get_num_threads()}, median of {a.repeats}")
    print(f"{'G':>3} {'rollouts':>9} {'repeated prefill s':>19} {'shared prefill s':>17} {'speedup':>8}")
    for r in results:
        print(f"{r['G']:>3} {r['rollouts']:>9} {r['repeated_s']:>19.3f} {r['shared_s']:>17.3f} {r['speedup']:>8.2f}")
    first = results[0]
    print(json.dumps({"repeated_s": first["repeated_s"], "shared_s": first["shared_s"], "speedup": first["speedup"],
                      "G": first["G"], "prompts": a.prompts, "new_tokens": a.new_tokens, "by_group": results}))


if __name__ == "__main__":
    main()
