"""Which answer-conditioned prompt makes a real chat model's self-explanations verify? A small sweep.

What: for a recipe (default: configs/smollm2-135m-ladder.yaml), its data stage and model stage once,
then for each hint wording / position below, the explain stage's own sampler and judge
(`expo.explain.sample_explanations`) on the same training questions, and once the unconditioned solve
rate on them. Prints a table (acceptance by level, truncated share, the main reject reasons, per
wording) and then one JSON line.

Why: ExPO rests on "knowing the answer makes a problem explainable". Whether it does depends on how
the answer is stated to the model: a 135M chat model given a long instruction writes lists of empty
steps; a stronger one given "the correct answer is" writes more and is cut at the token limit. The
recipe's wording is chosen from this table (docs/real-model.md), not from guesses.

    nice .venv/bin/python bench/hint_wording.py --out /tmp/hints --questions 4 --samples 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

WORDINGS = {
    # the library default (expo/config.py PromptConfig.hint_template)
    "default": (None, "before"),
    "default-after": (None, "after"),
    "stated-before": ("The correct answer is {answer}.", "before"),
    "stated-after": ("The correct answer is {answer}.", "after"),
    "reference-before": ("Reference answer: {answer}. Solve the problem step by step; your final answer "
                         "must match it.", "before"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smollm2-135m-ladder.yaml")
    parser.add_argument("--out", required=True, help="work folder (data and model are reused)")
    parser.add_argument("--questions", type=int, default=4, help="training questions per level")
    parser.add_argument("--samples", type=int, default=2, help="explanations per question and wording")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--only", nargs="*", default=None, help="wordings to run (default: all)")
    return parser.parse_args()


def pick_questions(rows: list[dict[str, Any]], per_level: int) -> list[dict[str, Any]]:
    """The first `per_level` training rows of each level (the split is already seeded)."""
    seen: Counter = Counter()
    picked = []
    for row in rows:
        if seen[row.get("level")] < per_level:
            seen[row.get("level")] += 1
            picked.append(row)
    return picked


def main() -> None:
    args = parse_args()
    from expo.config import load_config
    from expo.data.prepare import prepare_data
    from expo.explain import sample_explanations
    from expo.generation import make_generator
    from expo.io import read_jsonl
    from expo.modeling import load_model, prepare_model

    cfg = load_config(args.config)
    out = Path(args.out)
    if not (out / "data" / "train.jsonl").is_file():
        prepare_data(cfg.data, out / "data")
    if not (out / "model" / "config.json").is_file():
        prepare_model(cfg.model, out / "data", out / "model", prompts=cfg.prompts)
    rows = pick_questions(read_jsonl(out / "data" / "train.jsonl"), args.questions)
    model, tokenizer = load_model(out / "model", cfg.model)
    generator = make_generator(model, tokenizer, cfg.generation)
    explain = dataclasses.replace(cfg.explain, samples_per_question=args.samples,
                                  keep_per_question=args.samples, solve_rate_samples=0)
    if args.max_new_tokens:
        explain = dataclasses.replace(explain, max_new_tokens=args.max_new_tokens)

    results: dict[str, Any] = {}
    solve = dataclasses.replace(explain, samples_per_question=1, solve_rate_samples=args.samples)
    started = time.perf_counter()
    _, stats = sample_explanations(generator, rows, solve, cfg.prompts, tokenizer, None, "probe",
                                   generation=cfg.generation)
    results["solve"] = {"seconds": round(time.perf_counter() - started, 1),
                        "by_level": {lv: s["solve_rate"] for lv, s in stats["by_level"].items()},
                        "overall": stats["solve_rate"]}
    for name, (template, position) in WORDINGS.items():
        if args.only and name not in args.only:
            continue
        prompts = dataclasses.replace(cfg.prompts, hint_position=position,
                                      **({"hint_template": template} if template else {}))
        started = time.perf_counter()
        records, stats = sample_explanations(generator, rows, explain, prompts, tokenizer, None, "probe",
                                             generation=cfg.generation)
        results[name] = {
            "seconds": round(time.perf_counter() - started, 1), "template": prompts.hint_template,
            "position": position, "overall": stats["acceptance_rate"],
            "by_level": {lv: s["acceptance_rate"] for lv, s in stats["by_level"].items()},
            "truncated": sum(r["reject_reason"] == "truncated" for r in records) / max(1, len(records)),
            "reject_reasons": stats["reject_reasons"],
        }
    levels = sorted(results["solve"]["by_level"])
    print(f"{len(rows)} questions ({args.questions} per level), {args.samples} samples each, "
          f"{explain.max_new_tokens or cfg.generation.max_new_tokens} new tokens for explanations")
    print(f"{'wording':<18} " + " ".join(f"L{lv:<6}" for lv in levels) + " all     truncated  reasons")
    print(f"{'solve (no hint)':<18} " + " ".join(f"{results['solve']['by_level'][lv]:<7.2f}" for lv in levels)
          + f" {results['solve']['overall']:<7.2f}")
    for name, r in results.items():
        if name == "solve":
            continue
        print(f"{name:<18} " + " ".join(f"{r['by_level'].get(lv, 0):<7.2f}" for lv in levels)
              + f" {r['overall']:<7.2f} {r['truncated']:<10.2f} {r['reject_reasons']}")
    print(json.dumps({"bench": "hint_wording", "config": args.config, "questions": len(rows),
                      "samples": args.samples, "results": results}))


if __name__ == "__main__":
    main()
