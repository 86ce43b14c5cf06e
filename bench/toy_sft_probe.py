"""Diagnostic for the embedded default: can the tiny model learn the direct pick at all, without RL?

What: takes a `bench/toy_sweep.py` work folder (data/, model/, explanations/), trains the warm model
with plain next-token loss on its accepted self-explanations *under the solve prompt* (what the ExPO
term scores), then decodes greedily on the held-out hardest-level questions and prints the loss curve
(mean per 50 steps) and how often the boxed answer is right.

Why: ExP-GRPO's explanation NLL plateaued without the pick being learned (docs/embedded-default.md);
this separates "not learnable by this model" from "not learned in the ExPO phase's budget".

    nice .venv/bin/python bench/toy_sft_probe.py /tmp/sw/s2 2000
"""

from __future__ import annotations

import sys

import torch


def main(work: str, steps: int) -> None:
    from transformers import AutoModelForCausalLM

    from expo.answers import last_boxed
    from expo.config import load_pipeline_config
    from expo.io import read_jsonl
    from expo.modeling import load_tokenizer
    from expo.prompts import solve_prompt
    from expo.toy.model import WarmupRecipe, train_supervised

    torch.set_num_threads(1)  # shared machine: one thread avoids OpenMP spin-waits
    cfg = load_pipeline_config(None, [])
    tok = load_tokenizer(f"{work}/model")
    model = AutoModelForCausalLM.from_pretrained(f"{work}/model")
    accepted = [r for r in read_jsonl(f"{work}/explanations/explanations.jsonl") if r["accepted"]]
    pairs = [(solve_prompt(r["question"], tok, cfg.prompts), r["explanation"]) for r in accepted]
    losses = train_supervised(model, tok, pairs, steps=steps, seed=0, recipe=WarmupRecipe(learning_rate=1e-3))
    curve = [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 3) for i in range(0, steps, 50)]
    print("examples", len(pairs), "loss per 50 steps", curve)
    rows = read_jsonl(f"{work}/data/eval.jsonl")
    hardest = max(r["level"] for r in rows)
    rows = [r for r in rows if r["level"] == hardest]
    right = 0
    for r in rows:
        ids = tok(solve_prompt(r["question"], tok, cfg.prompts), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        right += last_boxed(text) == r["answer"]
    print(f"greedy level-{hardest} accuracy {right} / {len(rows)}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
