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

The speed-up is bounded by the CPU the OS gives us. Linux's autogroup scheduler shares CPU between
sessions, not processes: on a machine that other sessions keep busy, 2 workers get no more CPU than 1
and the speed-up reads ~1x whatever the design. So the table also shows the cores each mode actually
got (worker CPU seconds / wall seconds), items per worker-CPU-second, the parent's CPU (the IPC
cost that chunks avoid) and the load averages. Run it on a quiet machine for the real number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

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


@dataclass
class Run:
    """One mode's fastest round: outcomes, wall seconds, and the CPU seconds its processes used."""

    outcomes: list[Outcome]
    wall_s: float
    worker_cpu_s: float
    parent_cpu_s: float


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of the given live processes (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            pass  # a worker replaced mid-run: its CPU time is lost (rare: only hard kills replace)
    return total / os.sysconf("SC_CLK_TCK")


def measure(fn: Callable[[], list[Outcome]], pool: VerifierPool) -> Run:
    pids = pool.worker_pids()
    cpu0, parent0, t0 = cpu_seconds(pids), time.process_time(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    pids = sorted(set(pids) | set(pool.worker_pids()))
    return Run(out, wall, cpu_seconds(pids) - cpu0, time.process_time() - parent0)


def run_modes(completions: list[str], golds: list[str], opts: VerifyOptions, workers: int,
              repeat: int) -> dict[str, Run]:
    """Each mode's fastest of `repeat` rounds; the modes take turns so load swings hit them alike."""
    best: dict[str, Run] = {}
    with VerifierPool(1) as one, VerifierPool(workers) as many:
        one.start()
        many.start()  # start-up (imports, warm-up) is not what we measure
        # The same pairs with one pair per message: the IPC cost that chunking avoids.
        tasks = [(extract_answer(c, opts), prepare_gold(g, opts)) for c, g in zip(completions, golds)]
        modes = {"seq": (lambda: judge_batch(completions, golds, opts, pool=one), one),
                 "pool": (lambda: judge_batch(completions, golds, opts, pool=many), many),
                 "single": (lambda: many.run(tasks, opts.timeout_s, chunk_size=1), many)}
        for _ in range(max(1, repeat)):
            for mode, (fn, pool) in modes.items():
                run = measure(fn, pool)
                if mode not in best or run.wall_s < best[mode].wall_s:
                    best[mode] = run
    return best


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
    workers = args.workers or usable_cpus()
    load_before = os.getloadavg()[0]
    best = run_modes(completions, golds, VerifyOptions(timeout_s=args.timeout), workers, args.repeat)
    load_after = os.getloadavg()[0]

    names = {"seq": ("sequential (1 worker)", 1), "pool": (f"pool ({workers} workers)", workers),
             "single": ("pool, 1 pair/message", workers)}
    print(f"{'mode':<23}{'workers':>8}{'items':>6}{'wall s':>8}{'items/s':>9}{'cores got':>10}"
          f"{'items/cpu-s':>12}{'parent cpu s':>13}{'worst s':>8}{'timeouts':>9}{'agree':>7}")
    for mode, run in best.items():
        name, w = names[mode]
        n = len(run.outcomes)
        agree = sum(o.reward == y for o, y in zip(run.outcomes, labels)) / n
        print(f"{name:<23}{w:>8}{n:>6}{run.wall_s:>8.2f}{n / run.wall_s:>9.1f}"
              f"{run.worker_cpu_s / run.wall_s:>10.2f}{n / max(run.worker_cpu_s, 1e-9):>12.1f}"
              f"{run.parent_cpu_s:>13.2f}{max(o.seconds for o in run.outcomes):>8.2f}"
              f"{sum(o.timed_out for o in run.outcomes):>9}{agree:>7.1%}")
    for c, g, o, y in zip(completions, golds, best["pool"].outcomes, labels):
        if o.reward != y and not o.timed_out:
            print(f"  disagrees with its label: ...{c[-60:]!r} vs {g!r}: got {o.reward}, label {y}")
    seq, pool = best["seq"], best["pool"]
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}; usable cores "
          f"{usable_cpus()}; the kernel shares CPU between sessions (autogroup), so on a busy shared machine "
          f"{workers} workers may get no more CPU than one ('cores got')")
    print(json.dumps({
        "items": args.items, "sequential_per_s": round(args.items / seq.wall_s, 2),
        "pool_per_s": round(args.items / pool.wall_s, 2), "speedup": round(seq.wall_s / pool.wall_s, 3),
        "worst_s": round(max(o.seconds for r in (seq, pool) for o in r.outcomes), 3),
        "timeout_s": args.timeout, "workers": workers,
        "cores_got_sequential": round(seq.worker_cpu_s / seq.wall_s, 2),
        "cores_got_pool": round(pool.worker_cpu_s / pool.wall_s, 2),
        "single_pair_messages_per_s": round(args.items / best["single"].wall_s, 2),
        "agreement": round(sum(o.reward == y for o, y in zip(pool.outcomes, labels)) / args.items, 4),
        "load_avg_before": round(load_before, 2), "load_avg_after": round(load_after, 2),
    }))


if __name__ == "__main__":
    main()
