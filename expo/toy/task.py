"""The embedded default task, "needle": search versus verify, with levels 1 to 5.

Why this task: ExPO helps where a model cannot *find* answers but can *check* a given one. Here a
question is a list of ten distinct 2-digit numbers of which exactly one contains the digit 7.

- Solving is a search: the worked solution checks the numbers one by one until the good one,
  one step per number (`82:no 94:no 47:yes \\boxed{47}`).
- Explaining a given answer is one verification step (`47:yes \\boxed{47}`), equally easy at every
  level.
- The level is how deep the good number sits: level k puts it at position 2k-1 or 2k (1-based), so a
  level-5 solution is a scan of 9 or 10 steps while a warm-up on levels 1-2 only ever saw up to 4.

Why "contains 7" (docs/embedded-default.md): picking the good number *directly*, which is what the
self-explanations teach under the plain prompt, is one attention hop (find the 7, copy its number),
so a 0.4M-parameter model can learn it from a few hundred explanations; the digit-sum property used
before needed an implicit sum per number and was not learned. 18 of the 90 two-digit numbers qualify
(70-79 and x7), so the answer set stays large. Rows follow the MATH schema; `expo.data` maps
`builtin:needle` to `generate_rows` and extracts the gold answer from the solution's last `\\boxed{}`.

    rows = generate_rows(seed=0, n_per_level=400)
    rows[0]["problem"]   # 'Which has a seven? 82 94 47 ...'
"""

from __future__ import annotations

import random

LEVELS = (1, 2, 3, 4, 5)
LIST_LENGTH = 10
QUESTION_PREFIX = "Which has a seven?"  # no digit in the prefix: the only 7 is the needle's
# The characters any problem, solution or verification step can contain (for a small vocabulary).
TASK_CHARS = "0123456789: \\{}" + "boxed" + "yesno" + QUESTION_PREFIX

_NUMBERS = range(10, 100)

def has_property(n: int) -> bool:
    """True when `n` contains the digit 7."""
    return "7" in str(n)


GOOD = tuple(n for n in _NUMBERS if has_property(n))  # 18 numbers: 17, 27, .., 70-79, .., 97
BAD = tuple(n for n in _NUMBERS if not has_property(n))  # 72 numbers


def step(n: int) -> str:
    """One checked step: `82:no`, `47:yes`."""
    return f"{n}:{'yes' if has_property(n) else 'no'}"


def scan_solution(numbers: list[int]) -> str:
    """The search: check numbers in order up to and including the first good one, then box it."""
    steps = []
    for n in numbers:
        steps.append(step(n))
        if has_property(n):
            return " ".join(steps) + f" \\boxed{{{n}}}"
    raise ValueError(f"no number with the property in {numbers}")


def verification(answer: int | str) -> str:
    """The answer-conditioned explanation: one check of the given answer, then the box."""
    n = int(answer)
    return f"{step(n)} \\boxed{{{n}}}"


def make_problem(numbers: list[int]) -> str:
    return f"{QUESTION_PREFIX} " + " ".join(str(n) for n in numbers)


def parse_numbers(problem: str) -> list[int]:
    """The list back out of a problem text (inverse of `make_problem`)."""
    if not problem.startswith(QUESTION_PREFIX):
        raise ValueError(f"not a needle problem: {problem[:60]!r}")
    return [int(tok) for tok in problem[len(QUESTION_PREFIX):].split()]


def sample_numbers(rng: random.Random, level: int) -> list[int]:
    """Nine distinct bad numbers and one good one at position 2*level-1 or 2*level (1-based)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    numbers = rng.sample(BAD, LIST_LENGTH - 1)
    position = 2 * level - 2 + rng.randrange(2)  # 0-based
    numbers.insert(position, rng.choice(GOOD))
    return numbers


def generate_rows(seed: int, n_per_level: int) -> list[dict]:
    """`n_per_level` MATH-schema rows per level 1..5, the same for the same seed.

    Each row: {"problem", "solution" (the scan, ending in \\boxed{answer}), "level": "Level k",
    "type": "Needle"}. Lists repeat with probability ~1e-17 per pair, so dedupe keeps all rows.
    """
    if n_per_level < 0:
        raise ValueError(f"n_per_level must be >= 0, got {n_per_level}")
    rng = random.Random(f"needle/{seed}")  # str seeds hash stably across processes
    rows = []
    for level in LEVELS:
        for _ in range(n_per_level):
            numbers = sample_numbers(rng, level)
            rows.append({
                "problem": make_problem(numbers),
                "solution": scan_solution(numbers),
                "level": f"Level {level}",
                "type": "Needle",
            })
    return rows
