r"""The premise check (`expo.explain.answer_as_premise`) on real reference solutions: its false rejects.

A reference solution derives its answer, so every solution the check calls a premise is a false reject.
Judged as the explain stage judges an explanation: the final answer located by `expo.verify`, the
question passed along (an answer among the question's givens is never a premise). Sources: a seeded
sample of GSM8K train (the solution, then "The answer is n.") and all of MATH-500 dev, from
../shared/data. Nothing is generated. Prints a table, then one JSON line last.

    .venv/bin/python bench/premise_check.py [--gsm8k-sample 2000] [--seed 0] [--show 3]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from expo.answers import last_boxed
from expo.explain import answer_as_premise
from expo.verify import VerifyOptions, locate_answer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def solutions(gsm8k_sample: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """(question, solution) pairs by source."""
    gsm8k = []
    for line in (DATA / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        reasoning, answer = row["answer"].split("####")
        gsm8k.append((row["question"], f"{reasoning.strip()} The answer is {answer.strip()}."))
    math = [(row["problem"], row["solution"]) for row in map(json.loads, (DATA / "math500_dev.jsonl")
                                                              .read_text(encoding="utf-8").splitlines())
            if last_boxed(row["solution"])]
    return {"gsm8k": random.Random(seed).sample(gsm8k, min(gsm8k_sample, len(gsm8k))), "math500": math}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm8k-sample", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=0, help="print this many flagged solutions per source")
    args = parser.parse_args()
    result = {}
    print(f"{'source':<10} {'solutions':>9} {'premise':>8} {'false reject %':>15}")
    for source, pairs in solutions(args.gsm8k_sample, args.seed).items():
        flagged = [text for question, text in pairs
                   if (found := locate_answer(text, VerifyOptions())) is not None
                   and answer_as_premise(text, found, question)]
        share = 100.0 * len(flagged) / len(pairs)
        print(f"{source:<10} {len(pairs):>9} {len(flagged):>8} {share:>15.2f}")
        for text in flagged[: args.show]:
            print("   ", text[:240].replace("\n", " "))
        result[f"{source}_solutions"], result[f"{source}_false_rejects"] = len(pairs), len(flagged)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
