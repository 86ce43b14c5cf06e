r"""Verifier throughput: one worker against the process pool, on realistic MATH and GSM8K answer pairs.

What: a few thousand (completion, gold) pairs, generated deterministically: MATH-style reasoning ending in
`\boxed{}` with equivalent or wrong forms of the gold (fractions as decimals, reordered sets, surds,
intervals, degrees, percentages, units), GSM8K-style text ending in a number or `#### n`, plus a handful
of pathological items (towers of powers, deep nesting, a megabyte of text). Each pair carries the label
it was generated with, so the table also shows how often the verifier agrees with it.

How: the same pairs go through `expo.verify.judge_batch` with a 1-worker pool (sequential, the same
timeout machinery) and with a pool of every usable core, after both pools are warm. A third row sends
one pair per message to show what per-item IPC would cost. The modes take turns for `--repeat` rounds
and each keeps its fastest round (a shared machine's load comes and goes). Prints a table, then one
JSON line last:
`items, sequential_per_s, pool_per_s, speedup, worst_s, timeout_s` (+ workers, load, agreement).

    .venv/bin/python bench/verify.py [--items 3000] [--timeout 2] [--workers N] [--repeat 2] [--seed 0]

The speed-up is bounded by the cores the OS gives us: on a shared machine, run it when it is quiet
(the load averages printed before and after say how quiet it was).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from fractions import Fraction

from expo.verify import (Outcome, VerifierPool, VerifyOptions, extract_answer, judge_batch, prepare_gold,
                         usable_cpus)

FILLER = ["Let", "us", "compute", "the", "sum", "so", "we", "get", "then", "note", "that", "hence", "by",
          "symmetry", "substituting", "gives", "which", "means", "therefore", "clearly", "thus"]

PATHOLOGICAL = [
    r"\boxed{9^{9^{9^{9^{9}}}}}",
    r"\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",
    r"\boxed{(10^{10^{8}})!}",
    "step " * 200_000 + r"\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    r"\boxed{" + r"\frac{1}{" * 400 + "2" + "}" * 400 + "}",
]


def reasoning(rng: random.Random, words: int) -> str:
    """Filler prose with some inline LaTeX, like a model's chain of thought."""
    out = []
    for i in range(words):
        out.append(rng.choice(FILLER))
        if i % 12 == 11:
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            out.append(rf"$\frac{{{a}}}{{{b}}} + {a} = {a * b}$.")
    return " ".join(out)


def math_answer(rng: random.Random, correct: bool) -> tuple[str, str]:
    """(gold, boxed content): an equivalent rewriting of the gold when `correct`, else a near miss."""
    a, b = rng.randint(1, 60), rng.randint(2, 60)
    kind = rng.randrange(8)
    wrong = 0 if correct else rng.choice([1, 2])
    if kind == 0:  # a fraction, answered as a decimal or \dfrac
        f = Fraction(a, b) + wrong
        if f.denominator in (2, 4, 5, 8, 10, 20, 25):
            return rf"\frac{{{a}}}{{{b}}}", f"{float(f):g}"
        return rf"\frac{{{a}}}{{{b}}}", rf"\dfrac{{{f.numerator}}}{{{f.denominator}}}"
    if kind == 1:  # a surd: \sqrt{k^2 m} against k\sqrt{m}
        m = rng.choice([2, 3, 5, 6, 7])
        return rf"{a}\sqrt{{{m}}}", rf"\sqrt{{{a * a * m + wrong}}}"
    if kind == 2:  # a multiple of pi
        return rf"{a}\pi", rf"\pi \cdot {a + wrong}"
    if kind == 3:  # an interval
        lo, hi = sorted((a, b + 61))
        return f"({lo}, {hi}]", f"({lo},{hi + wrong}]" if wrong else f"( {lo} , {hi} ]"
    if kind == 4:  # a set, answered in another order
        return rf"\{{{a}, {b}, {a + b}\}}", rf"\{{{a + b}, {b}, {a + wrong}\}}"
    if kind == 5:  # a polynomial, answered reordered
        return f"x^2 + {a}x + {b}", f"{b + wrong} + {a}x + x^2"
    if kind == 6:  # degrees
        return rf"{a}^\circ", f"{a + wrong}"
    return f"{a * 1000 + b}", f"{a},{b:03d}" if not wrong else f"{a},{b + wrong:03d}"  # thousands


def gsm8k_answer(rng: random.Random, correct: bool) -> tuple[str, str]:
    """(gold, completion tail) in one of GSM8K's usual endings."""
    n = rng.randint(1, 250_000)
    m = n if correct else n + rng.choice([-10, -1, 1, 2, 100])
    ending = rng.randrange(4)
    if ending == 0:
        return str(n), f"So the answer is {m:,}."
    if ending == 1:
        return str(n), f"\n#### {m}"
    if ending == 2:
        return str(n), f"That costs ${m} in total."
    return str(n), rf"The final answer is $\boxed{{{m}}}$."


def make_pairs(items: int, seed: int) -> tuple[list[str], list[str], list[float]]:
    """`items` (completion, gold, expected reward) triples, pathological ones spread through them."""
    rng = random.Random(seed)
    completions, golds, labels = [], [], []
    for _ in range(items - len(PATHOLOGICAL)):
        correct = rng.random() < 0.5
        prose = reasoning(rng, rng.randint(40, 300))
        if rng.random() < 0.6:
            gold, boxed = math_answer(rng, correct)
            completions.append(f"{prose}\n\nTherefore the answer is $\\boxed{{{boxed}}}$.")
        else:
            gold, tail = gsm8k_answer(rng, correct)
            completions.append(f"{prose} {tail}")
        golds.append(gold)
        labels.append(1.0 if correct else 0.0)
    for k, bad in enumerate(PATHOLOGICAL):
        at = (k + 1) * len(completions) // (len(PATHOLOGICAL) + 1)
        completions.insert(at, bad)
        golds.insert(at, "1")
        labels.insert(at, 0.0)
    return completions, golds, labels


def timed(fn) -> tuple[list[Outcome], float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=3000, help="pairs to verify (default 3000)")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-pair timeout in seconds (default 2)")
    parser.add_argument("--workers", type=int, default=None, help="pool workers (default: usable cores)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds; each mode keeps its fastest (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.items <= len(PATHOLOGICAL):
        parser.error(f"--items must exceed the {len(PATHOLOGICAL)} pathological items")

    completions, golds, labels = make_pairs(args.items, args.seed)
    opts = VerifyOptions(timeout_s=args.timeout)
    workers = args.workers or usable_cpus()
    load_before = os.getloadavg()[0]
    rows = []
    best: dict[str, tuple[list[Outcome], float]] = {}
    with VerifierPool(1) as one, VerifierPool(workers) as many:
        one.start()
        many.start()
        # The same pairs with one pair per message: the IPC cost that chunking avoids.
        tasks = [(extract_answer(c, opts), prepare_gold(g, opts)) for c, g in zip(completions, golds)]
        modes = {"seq": lambda: judge_batch(completions, golds, opts, pool=one),
                 "pool": lambda: judge_batch(completions, golds, opts, pool=many),
                 "single": lambda: many.run(tasks, opts.timeout_s, chunk_size=1)}
        for _ in range(max(1, args.repeat)):
            for mode, fn in modes.items():
                out, secs = timed(fn)
                if mode not in best or secs < best[mode][1]:
                    best[mode] = (out, secs)
    load_after = os.getloadavg()[0]

    for name, n_workers, mode in [("sequential (1 worker)", 1, "seq"),
                                  (f"pool ({workers} workers)", workers, "pool"),
                                  ("pool, 1 pair/message", workers, "single")]:
        out, secs = best[mode]
        agree = sum(o.reward == y for o, y in zip(out, labels)) / len(labels)
        rows.append((name, n_workers, len(out), secs, len(out) / secs, max(o.seconds for o in out),
                     sum(o.timed_out for o in out), agree))
    print(f"{'mode':<24}{'workers':>8}{'items':>7}{'seconds':>9}{'items/s':>9}{'worst s':>9}"
          f"{'timeouts':>9}{'agree':>8}")
    for name, w, n, secs, rate, worst, tos, agree in rows:
        print(f"{name:<24}{w:>8}{n:>7}{secs:>9.2f}{rate:>9.1f}{worst:>9.2f}{tos:>9}{agree:>8.1%}")
    mismatch = [(c[-60:], g, o.reward, y) for c, g, o, y in zip(completions, golds, best["pool"][0], labels)
                if o.reward != y and not o.timed_out]
    for tail, gold, got, want in mismatch[:5]:
        print(f"  disagrees with its label: ...{tail!r} vs {gold!r}: got {got}, label {want}")
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}; "
          f"usable cores {usable_cpus()}")
    worst = max(rows[0][5], rows[1][5])
    print(json.dumps({
        "items": args.items, "sequential_per_s": round(rows[0][4], 2), "pool_per_s": round(rows[1][4], 2),
        "speedup": round(rows[1][4] / rows[0][4], 3), "worst_s": round(worst, 3), "timeout_s": args.timeout,
        "workers": workers, "single_item_messages_per_s": round(rows[2][4], 2),
        "agreement": round(rows[1][7], 4), "load_avg_before": round(load_before, 2),
        "load_avg_after": round(load_after, 2),
    }))


if __name__ == "__main__":
    main()
