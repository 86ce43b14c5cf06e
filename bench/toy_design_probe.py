"""Design probe for the embedded default: does the ExPO term teach the hardest level within its budget?

What: for the task design in expo/toy/ and one seed, in one process and without RL: warm up the tiny
Qwen2 as the prepare_model stage does (`WARMUP_LEVELS`), measure the base on held-out level-1 and level-5 questions (greedy accuracy, pass@1 and pass@8 from
8 samples at 0.7, explanation acceptance), sample one self-explanation per training question, keep the
verified ones, then train *only* their NLL under the solve prompt (the ExPO term alone; batch 16) and
re-measure greedy accuracy after 25, 50 and 100 steps. Prints a table, then one JSON line.

Why: the ExPO arm of the default run gives the NLL term 50 steps of 16 explanations. A design whose
NLL alone does not teach level 5 in that budget cannot show the effect, whatever the RL settings; this
checks a design in a few minutes instead of a full run (docs/embedded-default.md).

    nice .venv/bin/python bench/toy_design_probe.py --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-steps", type=int, default=1500)
    parser.add_argument("--warmup-lr", type=float, default=3e-3)
    parser.add_argument("--nll-lr", type=float, default=1e-3)
    parser.add_argument("--nll-steps", default="25,50,100")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def boxed(text: str) -> str | None:
    from expo.answers import UnbalancedBraces, last_boxed

    try:
        return last_boxed(text)
    except UnbalancedBraces:
        return None


def generate(model, tok, prompts: list[str], greedy: bool, n: int = 1, temperature: float = 0.7,
             max_new_tokens: int = 128) -> list[list[str]]:
    outs = []
    for i in range(0, len(prompts), 64):
        chunk = prompts[i:i + 64]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=not greedy,
                                 temperature=temperature if not greedy else None, top_k=None, top_p=None,
                                 num_return_sequences=n, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        outs += [texts[j * n:(j + 1) * n] for j in range(len(chunk))]
    return outs


def main(args: argparse.Namespace) -> dict:
    from expo.answers import last_boxed
    from expo.config import load_pipeline_config
    from expo.prompts import explain_prompt, solve_prompt
    from expo.scratch_models import tiny_qwen2
    from expo.toy.model import TinyArch, WarmupRecipe, WARMUP_LEVELS, toy_tokenizer, train_supervised, warmup_pairs
    from expo.toy.task import generate_rows

    torch.set_num_threads(args.threads)
    cfg = load_pipeline_config(None, [])
    rows = generate_rows(args.seed, 400)
    for r in rows:
        r["question"], r["answer"], r["level"] = r["problem"], last_boxed(r["solution"]), int(r["level"][-1])
    random.Random(args.seed).shuffle(rows)
    held, train = rows[:400], rows[400:]
    pairs = warmup_pairs([r for r in train if r["level"] in WARMUP_LEVELS], cfg.prompts, seed=args.seed)
    tok = toy_tokenizer(pairs)
    arch = TinyArch()
    model = tiny_qwen2(tok, hidden=arch.hidden, layers=arch.layers, heads=arch.heads, seed=args.seed)
    t0 = time.perf_counter()
    losses = train_supervised(model, tok, pairs, steps=args.warmup_steps, seed=args.seed,
                              recipe=WarmupRecipe(learning_rate=args.warmup_lr))
    warm_s = time.perf_counter() - t0
    curve = [round(sum(losses[i:i + 100]) / len(losses[i:i + 100]), 3) for i in range(0, len(losses), 100)]

    def by_level(level: int) -> list[dict]:
        return [r for r in held if r["level"] == level][:80]

    def greedy_acc(level: int) -> float:
        qs = by_level(level)
        outs = generate(model, tok, [solve_prompt(r["question"], tok, cfg.prompts) for r in qs], greedy=True)
        return round(100 * sum(boxed(o[0]) == r["answer"] for o, r in zip(outs, qs)) / len(qs), 1)

    def sampled(level: int) -> tuple[float, float]:
        qs = by_level(level)
        outs = generate(model, tok, [solve_prompt(r["question"], tok, cfg.prompts) for r in qs], greedy=False, n=8)
        right = [[boxed(o) == r["answer"] for o in os_] for os_, r in zip(outs, qs)]
        return (round(100 * sum(map(sum, right)) / (8 * len(qs)), 1), round(100 * sum(map(any, right)) / len(qs), 1))

    def acceptance(rows_: list[dict]) -> tuple[float, list[tuple[str, str]]]:
        outs = generate(model, tok, [explain_prompt(r["question"], r["answer"], tok, cfg.prompts) for r in rows_],
                        greedy=False)
        kept = [(solve_prompt(r["question"], tok, cfg.prompts), o[0]) for o, r in zip(outs, rows_)
                if boxed(o[0]) == r["answer"]]
        return round(100 * len(kept) / len(rows_), 1), kept

    model.eval()
    samples = generate(model, tok, [solve_prompt(r["question"], tok, cfg.prompts) for r in by_level(5)[:4]],
                       greedy=False)
    for r, o in zip(by_level(5)[:4], samples):
        print("L5 sample:", r["question"][-44:], "->", o[0][:110], "| gold", r["answer"])
    base = {"greedy_L1": greedy_acc(1), "greedy_L5": greedy_acc(5), "sampled_L5": sampled(5),
            "acceptance_L5": acceptance(by_level(5))[0]}
    accept_train, kept = acceptance(train)
    nll = {}
    done = 0
    for target in [int(s) for s in args.nll_steps.split(",")]:
        train_supervised(model, tok, kept, steps=target - done, seed=args.seed + target,
                         recipe=WarmupRecipe(learning_rate=args.nll_lr, warmup_fraction=0.0))
        done = target
        model.eval()
        nll[target] = {"greedy_L1": greedy_acc(1), "greedy_L5": greedy_acc(5)}
    return {"seed": args.seed, "warmup_steps": args.warmup_steps,
            "vocab": len(tok), "warmup_s": round(warm_s, 1), "warmup_loss_per_100": curve, "base": base,
            "train_acceptance": accept_train, "explanations": len(kept), "after_nll": nll,
            "example": kept[0][1] if kept else None}


if __name__ == "__main__":
    report = main(parse_args())
    print(f"warm-up {report['warmup_steps']} steps in {report['warmup_s']} s, loss/100: {report['warmup_loss_per_100']}")
    print(f"base: {report['base']}  train acceptance {report['train_acceptance']}%")
    for steps, acc in report["after_nll"].items():
        print(f"after {steps} NLL steps: {acc}")
    print(json.dumps(report))
