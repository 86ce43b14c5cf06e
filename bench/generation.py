"""Tokens/s of the batched HF generation backend against one prompt at a time (same model, same settings).

What: a tiny random Qwen2 (~2.4M parameters, character tokenizer), 32 prompts, 64 new tokens each,
sampling at temperature 1. Both runs are forced to generate exactly 64 tokens per prompt (EOS ignored:
`min_new_tokens = max_new_tokens`), so they do the same work. A third row times plain transformers
`generate` on the same batch: if our batched backend were much slower than it, the overhead would be
ours (padding, logprob recording, decoding), not the model's.

Why: batching is what makes sampling n explanations per question affordable on CPU; the target is a
speed-up of at least 10x at batch 32 (plain transformers reaches 12-20x on these machines).

How:
    .venv/bin/python bench/generation.py [--prompts 32] [--new-tokens 64] [--hidden 192] [--layers 4]
Prints a table, then one JSON line with `tokens_per_s_batched`, `tokens_per_s_single`, `speedup`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from expo.config import GenerationConfig
from expo.generation.hf import HFGenerator
from expo.tiny import char_tokenizer, tiny_qwen2


def make_prompts(count: int) -> list[str]:
    """Varied lengths (20-60 characters), as real questions: batching must pay for its padding."""
    base = "Which number has a digit sum divisible by 3? 82 94 90 17 25 43 58 61 76 88 "
    return [base[: 20 + (7 * i) % 41] for i in range(count)]


def timed(fn, repeat: int = 1) -> float:
    """Median wall time of `repeat` calls (a batched call lasts under a second: one run is noise)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def plain_generate(model, tok, prompts: list[str], new_tokens: int) -> None:
    enc = tok(prompts, return_tensors="pt", padding=True)
    model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden=args.hidden, layers=args.layers, heads=4).eval()
    params = sum(p.numel() for p in model.parameters())
    prompts = make_prompts(args.prompts)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, batch_size=args.prompts, backend="hf")
    gen = HFGenerator(model, tok, cfg, ignore_eos=True)
    gen.generate(prompts[:2], n=1, temperature=1.0, seed=0)  # warm-up: allocator, kernels

    outs: list = []
    batched_s = timed(lambda: outs.__setitem__(slice(None), gen.generate(prompts, n=1, temperature=1.0, seed=0)),
                      repeat=5)
    tokens_batched = sum(c.num_tokens for per in outs for c in per)
    single_outs: list = []
    single_s = timed(lambda: [single_outs.extend(gen.generate([p], n=1, temperature=1.0, seed=0))
                              for p in prompts])
    tokens_single = sum(c.num_tokens for per in single_outs for c in per)
    with torch.no_grad():
        plain_s = timed(lambda: plain_generate(model, tok, prompts, args.new_tokens), repeat=5)
    tokens_plain = args.prompts * args.new_tokens

    rows = [("hf backend, batched", args.prompts, tokens_batched, batched_s),
            ("hf backend, one prompt at a time", 1, tokens_single, single_s),
            ("plain transformers generate, batched", args.prompts, tokens_plain, plain_s)]
    print(f"tiny Qwen2: {params / 1e6:.2f}M parameters, {args.prompts} prompts, {args.new_tokens} new tokens "
          f"each (forced), sampling at temperature 1, torch threads {torch.get_num_threads()}")
    print(f"{'mode':<40} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for name, batch, tokens, seconds in rows:
        print(f"{name:<40} {batch:>5} {tokens:>7} {seconds:>8.2f} {tokens / seconds:>9.0f}")
    result = {
        "tokens_per_s_batched": round(tokens_batched / batched_s, 1),
        "tokens_per_s_single": round(tokens_single / single_s, 1),
        "speedup": round((tokens_batched / batched_s) / (tokens_single / single_s), 2),
        "tokens_per_s_plain_transformers": round(tokens_plain / plain_s, 1),
        "new_tokens_per_prompt": args.new_tokens, "prompts": args.prompts, "parameters": params,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
