"""The needle task: deterministic generation, the level = depth of the good number (the one containing
a 7), one good number per list, solutions whose boxed answer is that number, and the MATH verifier
agreeing with it."""

from __future__ import annotations

import random

import pytest

from expo.answers import last_boxed
from expo.toy.task import (BAD, GOOD, LEVELS, LIST_LENGTH, generate_rows, has_property, parse_numbers,
                           sample_numbers, scan_solution, step, verification)


@pytest.mark.parametrize("n, ok", [
    (17, True),   # 7 in the ones place
    (70, True),   # 7 in the tens place
    (77, True),   # both
    (10, False),
    (82, False),
    (69, False),
])
def test_has_property_is_containing_the_digit_7(n: int, ok: bool) -> None:
    assert has_property(n) is ok


def test_good_and_bad_partition_the_two_digit_numbers() -> None:
    # 70..79 (10 numbers) and 17, 27, .., 97 without 77 (8 more): 18 good, 90 - 18 = 72 bad.
    assert GOOD == (17, 27, 37, 47, 57, 67, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 87, 97)
    assert len(BAD) == 72
    assert set(GOOD) | set(BAD) == set(range(10, 100))


def test_the_question_has_no_7_but_the_needle() -> None:
    row = generate_rows(0, 1)[0]
    assert row["problem"].count("7") == sum(str(n).count("7") for n in parse_numbers(row["problem"]) if n in GOOD)


def test_scan_and_verification_formats_by_hand() -> None:
    assert step(82) == "82:no"
    assert step(47) == "47:yes"
    assert scan_solution([82, 94, 47, 11]) == "82:no 94:no 47:yes \\boxed{47}"
    assert verification("47") == "47:yes \\boxed{47}"


def test_generation_is_deterministic_and_seed_dependent() -> None:
    assert generate_rows(3, 5) == generate_rows(3, 5)
    assert generate_rows(3, 5) != generate_rows(4, 5)


def test_rows_have_math_schema_and_every_level() -> None:
    rows = generate_rows(0, 20)
    assert len(rows) == 20 * len(LEVELS)
    assert {r["level"] for r in rows} == {f"Level {k}" for k in LEVELS}
    for r in rows:
        assert set(r) == {"problem", "solution", "level", "type"}
        assert r["type"] == "Needle"


def test_exactly_one_good_number_at_the_depth_of_the_level() -> None:
    for r in generate_rows(1, 50):
        numbers = parse_numbers(r["problem"])
        assert len(numbers) == LIST_LENGTH == len(set(numbers))
        good = [i for i, n in enumerate(numbers) if has_property(n)]
        assert len(good) == 1
        level = int(r["level"].split()[-1])
        assert good[0] in (2 * level - 2, 2 * level - 1)  # level k: position 2k-1 or 2k (1-based)
        answer = last_boxed(r["solution"])
        assert answer == str(numbers[good[0]])
        assert r["solution"].count(":") == good[0] + 1  # one checked step per scanned number


def test_problems_are_distinct_so_dedupe_keeps_them() -> None:
    rows = generate_rows(0, 400)
    assert len({r["problem"] for r in rows}) == len(rows)


def test_bad_level_and_count_are_rejected() -> None:
    with pytest.raises(ValueError):
        generate_rows(0, -1)
    with pytest.raises(ValueError):
        parse_numbers("What is 2+2?")
    with pytest.raises(ValueError):
        sample_numbers(random.Random(0), 6)


def test_rows_pass_the_math_verifier() -> None:
    verify = pytest.importorskip("expo.verify")
    rows = generate_rows(2, 2)
    golds = [last_boxed(r["solution"]) for r in rows]
    assert verify.rewards([r["solution"] for r in rows], golds) == [1.0] * len(rows)
    # A verification of the answer is accepted; a different good number is not.
    assert verify.is_equivalent(verification(golds[0]), golds[0])
    other = next(n for n in GOOD if str(n) != golds[0])
    assert not verify.is_equivalent(verification(other), golds[0])
