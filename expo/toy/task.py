"""The embedded default task, "needle": find the one number with a 7; level 5 uses numbers the model never met.

Why this task: ExPO helps where a model never samples a right answer but can explain a given one.
A question is a list of twenty distinct 3-digit numbers of which exactly one contains the digit 7;
the answer is that number. Every 3-digit number is one token for the tiny model (expo.toy.model), so
whether a number contains a 7 is knowledge the model has to learn per number, as a language model
learns facts, not something it can read off the digits.

The numbers come in two kinds. *Familiar* ones are the numbers the warm-up's questions use (236 with
a 7, 324 without). *Unfamiliar* ones never appear in a warm-up question (16 with a 7, the other 324
without). A level-k list is unfamiliar with probability (k-1)/4, else familiar: level 1 is all
familiar, level 5 all unfamiliar, levels 2-4 in between.

- Solving: `Which has a seven? 512 903 ... 374 ...` -> `374:yes \\boxed{374}` (name it, check it).
  On level 5 the model cannot know which number has the 7: it answers a familiar number with a 7
  from memory, so GRPO's rollouts there are all wrong and carry no gradient.
- Explaining a given answer (`The answer is 374.` after the question) is the same line with the
  number copied from the hint: possible at every level. Training on those explanations teaches the
  model the unfamiliar needles, which is what ExP-GRPO can do and GRPO cannot.

Why the unfamiliar needles are few (16): the ExPO term has 50 steps to teach them; each is then the
answer of ~50 training questions of the run (with 126, the ExPO term alone taught none of them in 100
steps: probe P17). A blind pick among the list is right 1 time in 20, and the base model rarely picks
an unfamiliar number at all (level-5 pass@1 0-7 %, docs/embedded-default.md).
Rows follow the MATH schema; `expo.data` maps `builtin:needle` to `generate_rows` and extracts the gold
answer from the solution's last `\\boxed{}`.

    rows = generate_rows(seed=0, n_per_level=400)
    rows[0]["problem"]   # 'Which has a seven? 512 903 ...'
"""

from __future__ import annotations

import random
import re

LEVELS = (1, 2, 3, 4, 5)
LIST_LENGTH = 20
QUESTION_PREFIX = "Which has a seven?"  # no digit in the prefix: the only 7 is the needle's
# The characters any problem, solution or check can contain (for a small vocabulary).
TASK_CHARS = "0123456789: \\{}" + "boxed" + "yesno" + QUESTION_PREFIX

NUMBERS = range(100, 1000)


def has_property(n: int) -> bool:
    """True when `n` contains the digit 7."""
    return "7" in str(n)


GOOD = tuple(n for n in NUMBERS if has_property(n))  # 252 numbers
BAD = tuple(n for n in NUMBERS if not has_property(n))  # 648 numbers
# Every 16th number with a 7 is unfamiliar (16 numbers spread over 117 .. 971), and every other one without.
UNFAMILIAR_GOOD = GOOD[1::16]
FAMILIAR_GOOD = tuple(n for n in GOOD if n not in UNFAMILIAR_GOOD)
FAMILIAR_BAD, UNFAMILIAR_BAD = BAD[::2], BAD[1::2]


def unfamiliar_share(level: int) -> float:
    """The probability that a level-`level` list is made of unfamiliar numbers: 0 at level 1, 1 at level 5."""
    return (level - LEVELS[0]) / (LEVELS[-1] - LEVELS[0])


def step(n: int) -> str:
    """One checked number: `512:no`, `374:yes`."""
    return f"{n}:{'yes' if has_property(n) else 'no'}"


def solution(numbers: list[int]) -> str:
    """The worked answer: the needle, checked, then boxed."""
    needle = next((n for n in numbers if has_property(n)), None)
    if needle is None:
        raise ValueError(f"no number with the property in {numbers}")
    return verification(needle)


def contradicted_checks(explanations: list[str]) -> str:
    """The embedded task's reading of an in-distribution check against ExPO's premise: how many
    explanations box the given number after checking it wrong (`373:no \\boxed{373}`). The verifier
    judges the boxed answer only, so they pass; the policy, unaided, would not box a number it has
    just checked `no`, which makes them unlikely under the solve prompt. Empty when there are none."""
    wrong = sum(1 for text in explanations if re.fullmatch(r"\s*(\d+):no\s*\\boxed\{\1\}\s*", text))
    if not wrong:
        return ""
    return (f"In this task {wrong} of {len(explanations)} accepted explanations box the given number after "
            "checking it wrong (\"373:no \\boxed{373}\"): the verifier judges the boxed answer only, and the "
            "policy, unaided, would not box a number it has just checked \"no\", so these texts are "
            "unlikely under the solve prompt, while the expert solution's check is right.")


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
    """Nineteen distinct numbers without a 7 and one with, in a random place; all familiar or all
    unfamiliar (`unfamiliar_share(level)`)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    unfamiliar = rng.random() < unfamiliar_share(level)
    good, bad = (UNFAMILIAR_GOOD, UNFAMILIAR_BAD) if unfamiliar else (FAMILIAR_GOOD, FAMILIAR_BAD)
    numbers = rng.sample(bad, LIST_LENGTH - 1)
    numbers.insert(rng.randrange(LIST_LENGTH), rng.choice(good))
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
