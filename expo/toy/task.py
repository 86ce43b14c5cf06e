"""The embedded default task, "needle": find the one number with a 7, levels 1 to 5 by how deep it sits.

Why this task: ExPO helps where a model never samples a right answer but can explain a given one.
A question is a list of twenty distinct 3-digit numbers of which exactly one contains the digit 7;
the answer is that number. The level is how deep in the list it sits: level k puts it somewhere in
places 4k-3 .. 4k (1-based), so level 1 is the front of the list and level 5 the back.

- Solving: `Which has a seven? 512 903 ... 374 ...` -> `374:yes \\boxed{374}` (name it, check it).
- Explaining a given answer (`The answer is 374.` before the question) is the same one line, with
  the number copied from the hint: equally easy at every level.

The warm-up (expo.toy.model) shows the model level 1 only, in both formats. It learns to find the
needle near the front of the list and to check a given one anywhere; on level 5 it names a number
with a 7 that is not in the list, so GRPO's rollouts there are all wrong and carry no gradient,
while its answer-conditioned explanations there are mostly right: ExPO's situation.

Why 3-digit numbers: 252 of the 900 contain a 7, so a blind guess of "some number with a 7" is right
about 0.4% of the time and cannot pass for skill (with 2-digit numbers, 1 in 18: docs/embedded-default.md).
Rows follow the MATH schema; `expo.data` maps `builtin:needle` to `generate_rows` and extracts the gold
answer from the solution's last `\\boxed{}`.

    rows = generate_rows(seed=0, n_per_level=400)
    rows[0]["problem"]   # 'Which has a seven? 512 903 ...'
"""

from __future__ import annotations

import random

LEVELS = (1, 2, 3, 4, 5)
LIST_LENGTH = 20
PLACES_PER_LEVEL = LIST_LENGTH // len(LEVELS)  # level k: places 4k-3 .. 4k
QUESTION_PREFIX = "Which has a seven?"  # no digit in the prefix: the only 7 is the needle's
# The characters any problem, solution or check can contain (for a small vocabulary).
TASK_CHARS = "0123456789: \\{}" + "boxed" + "yesno" + QUESTION_PREFIX

NUMBERS = range(100, 1000)


def has_property(n: int) -> bool:
    """True when `n` contains the digit 7."""
    return "7" in str(n)


GOOD = tuple(n for n in NUMBERS if has_property(n))  # 252 numbers
BAD = tuple(n for n in NUMBERS if not has_property(n))  # 648 numbers


def step(n: int) -> str:
    """One checked number: `512:no`, `374:yes`."""
    return f"{n}:{'yes' if has_property(n) else 'no'}"


def solution(numbers: list[int]) -> str:
    """The worked answer: the needle, checked, then boxed."""
    needle = next((n for n in numbers if has_property(n)), None)
    if needle is None:
        raise ValueError(f"no number with the property in {numbers}")
    return verification(needle)


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
    """Nineteen distinct bad numbers and one good one in places 4k-3 .. 4k (1-based) for level k."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    numbers = rng.sample(BAD, LIST_LENGTH - 1)
    place = PLACES_PER_LEVEL * (level - 1) + rng.randrange(PLACES_PER_LEVEL)  # 0-based
    numbers.insert(place, rng.choice(GOOD))
    return numbers


def generate_rows(seed: int, n_per_level: int) -> list[dict]:
    """`n_per_level` MATH-schema rows per level 1..5, the same for the same seed.

    Each row: {"problem", "solution" (ending in \\boxed{answer}), "level": "Level k", "type": "Needle"}.
    Lists repeat with negligible probability, so dedupe keeps all rows.
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
                "solution": solution(numbers),
                "level": f"Level {level}",
                "type": "Needle",
            })
    return rows
