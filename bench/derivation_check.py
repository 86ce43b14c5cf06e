r"""The "derived, not pasted" check (`explain.require_derivation`) measured on stored text: nothing generated.

What, two measurements:
(a) false rejects on real solutions: reference solutions judged as if they were explanations, each with
    its gold answer: a seeded sample of GSM8K train (`--gsm8k-sample`, the answer after `####`) and all of
    MATH-500 dev (solution + answer column). Of those that pass the other filters (verified right
    answer, reasoning, no hint wording), the share that also pass the derivation check, by source and
    level. A reference solution derives its answer, so every miss here is the rule's false reject.
(b) with `--explanations PATH` (an `explanations.jsonl` of the explain stage: `explanation`, `answer`,
    `level`, `passed`): of the samples that passed the filters of that run, the share that also pass
    the derivation check, by level; `--show N` prints N rejected ones to read.

How: `expo.verify.locate_answer` finds each final answer, `expo.verify.rewards` (the verifier pool)
judges it, `expo.explain.judge_text` with and without `require_derivation` says why. Prints a table,
then one JSON line last:
`gsm8k_refs_pass, math_refs_pass, explanations_passed, explanations_derived_share` (+ by level).

    .venv/bin/python bench/derivation_check.py [--gsm8k-sample 1000] [--seed 0] \
        [--explanations runs/explanations/explanations.jsonl] [--show 5]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from expo.explain import judge_text
from expo.io import read_jsonl
from expo.verify import rewards

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def reference_items(data_dir: Path, gsm8k_sample: int, seed: int) -> list[dict[str, Any]]:
    """(source, level, text, gold) of the reference solutions: GSM8K sampled, MATH-500 dev whole."""
    items = []
    gsm8k = data_dir / "gsm8k_train.jsonl"
    if gsm8k.is_file():
        rows = read_jsonl(gsm8k)
        for row in random.Random(seed).sample(rows, min(gsm8k_sample, len(rows))):
            gold = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
            items.append({"source": "gsm8k", "level": "-", "text": row["answer"], "gold": gold})
    math = data_dir / "math500_dev.jsonl"
    if math.is_file():
        for row in read_jsonl(math):
            items.append({"source": "math500", "level": str(row.get("level")), "text": row["solution"],
                          "gold": str(row["answer"])})
    return items


def judge(items: list[dict[str, Any]]) -> None:
    """Adds `base` (the reason without the check, None = passes) and `derived` to each item."""
    scores = rewards([it["text"] for it in items], [it["gold"] for it in items])
    for it, score in zip(items, scores):
        it["base"] = judge_text(it["text"], score, 5)
        it["derived"] = judge_text(it["text"], score, 5, require_derivation=True) is None


def shares(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """By `key`: how many passed the other filters and the share of those that pass the check too."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for it in items:
        if it["base"] is None:
            counts[it[key]]["passed"] += 1
            counts[it[key]]["derived"] += it["derived"]
    return {k: {"passed": c["passed"], "derived": c["derived"],
                "share": round(c["derived"] / c["passed"], 4) if c["passed"] else None}
            for k, c in sorted(counts.items())}


def print_table(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'group':<16}{'passed':>8}{'derived':>9}{'share':>8}")
    for name, r in rows.items():
        share = "-" if r["share"] is None else f"{r['share']:.1%}"
        print(f"{name:<16}{r['passed']:>8}{r['derived']:>9}{share:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with gsm8k_train / math500_dev")
    parser.add_argument("--gsm8k-sample", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--explanations", type=Path, help="an explanations.jsonl of the explain stage")
    parser.add_argument("--show", type=int, default=0, help="print this many rejected explanations")
    args = parser.parse_args()

    refs = reference_items(args.data, args.gsm8k_sample, args.seed)
    judge(refs)
    for it in refs:
        it["group"] = it["source"] if it["source"] == "gsm8k" else f"{it['source']}/L{it['level']}"
    by_source = shares(refs, "source")
    print(f"(a) reference solutions judged as explanations ({args.data})")
    print("    references the other filters reject (not counted):",
          dict(Counter(it["base"] for it in refs if it["base"])))
    print_table("share of the references passing the other filters that pass require_derivation",
                {**by_source, **{k: v for k, v in shares(refs, "group").items() if k != "gsm8k"}})
    summary: dict[str, Any] = {"gsm8k_refs_pass": by_source.get("gsm8k", {}).get("share"),
                               "math_refs_pass": by_source.get("math500", {}).get("share")}

    if args.explanations:
        records = read_jsonl(args.explanations)
        items = [{"level": str(r.get("level")), "text": r["explanation"], "gold": str(r["answer"]),
                  "passed": r["passed"]} for r in records]
        judge(items)
        kept = [it for it in items if it["passed"]]
        for it in kept:
            it["base"] = None  # passed under the run's own settings (require_boxed included)
        by_level = shares(kept, "level")
        total = shares([dict(it, all="all") for it in kept], "all").get("all", {"passed": 0, "derived": 0})
        print_table(f"(b) {args.explanations}: samples that passed, share also derived, by level",
                    {**by_level, "all": total})
        rejected = [it for it in kept if not it["derived"]]
        for it in rejected[: args.show]:
            print(f"\n--- level {it['level']}, gold {it['gold']!r}, not derived:\n{it['text'][-400:]}")
        summary.update(explanations_passed=total["passed"], explanations_derived=total["derived"],
                       explanations_derived_share=total.get("share"),
                       explanations_by_level={k: v["share"] for k, v in by_level.items()})
    summary["refs_by_group"] = {k: v["share"] for k, v in shares(refs, "group").items()}
    print(json.dumps(summary))


if __name__ == "__main__":  # the verifier pool's workers must not re-run this script
    main()
