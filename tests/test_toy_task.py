"""The needle task: deterministic generation, one good number (the one containing a 7) per list, the
level = the share of lists made of numbers the warm-up never shows, solutions whose boxed answer is the
good number, and the MATH verifier agreeing with it."""

from __future__ import annotations

import random

import pytest

from expo.answers import last_boxed
from expo.toy.task import (BAD, FAMILIAR_BAD, FAMILIAR_GOOD, GOOD, LEVELS, LIST_LENGTH, UNFAMILIAR_BAD,
                           UNFAMILIAR_GOOD, generate_rows, has_property, parse_numbers, sample_numbers, solution,
                           step, unfamiliar_share, verification)


@pytest.mark.parametrize("n, ok", [
    (107, True),  # 7 in the ones place
    (170, True),  # tens
    (701, True),  # hundreds
    (777, True),
    (100, False),
    (869, False),
])
def test_has_property_is_containing_the_digit_7(n: int, ok: bool) -> None:
    assert has_property(n) is ok


def test_good_and_bad_partition_the_three_digit_numbers() -> None:
    # Numbers without a 7: 8 choices for the hundreds (1-9 but 7), 9 each for tens and ones: 648.
    assert len(BAD) == 8 * 9 * 9 == 648
    assert len(GOOD) == 900 - 648 == 252
    assert set(GOOD) | set(BAD) == set(range(100, 1000))


def test_the_question_has_no_7_but_the_needle() -> None:
    row = generate_rows(0, 1)[0]
    assert row["problem"].count("7") == sum(str(n).count("7") for n in parse_numbers(row["problem"]) if n in GOOD)


def test_solution_and_verification_formats_by_hand() -> None:
    assert step(512) == "512:no"
    assert step(374) == "374:yes"
    assert solution([512, 903, 374, 111]) == "374:yes \\boxed{374}"
    assert verification("374") == "374:yes \\boxed{374}"
    with pytest.raises(ValueError, match="no number with the property"):
        solution([512, 903])


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


def test_exactly_one_good_number_and_it_is_the_answer() -> None:
    for r in generate_rows(1, 50):
        numbers = parse_numbers(r["problem"])
        assert len(numbers) == LIST_LENGTH == len(set(numbers))
        good = [n for n in numbers if has_property(n)]
        assert len(good) == 1
        assert last_boxed(r["solution"]) == str(good[0])


def test_familiar_and_unfamiliar_numbers_partition_good_and_bad() -> None:
    assert len(UNFAMILIAR_GOOD) == 16 and len(FAMILIAR_GOOD) == 252 - 16
    assert len(FAMILIAR_BAD) == len(UNFAMILIAR_BAD) == 648 // 2
    assert set(UNFAMILIAR_GOOD) | set(FAMILIAR_GOOD) == set(GOOD)
    assert set(UNFAMILIAR_BAD) | set(FAMILIAR_BAD) == set(BAD)
    assert not set(UNFAMILIAR_GOOD) & set(FAMILIAR_GOOD) and not set(UNFAMILIAR_BAD) & set(FAMILIAR_BAD)


def test_a_list_is_all_familiar_or_all_unfamiliar_in_the_share_of_its_level() -> None:
    # Shares by hand: level k is unfamiliar with probability (k-1)/4.
    assert [unfamiliar_share(k) for k in LEVELS] == [0.0, 0.25, 0.5, 0.75, 1.0]
    familiar = set(FAMILIAR_GOOD) | set(FAMILIAR_BAD)
    counts = {k: 0 for k in LEVELS}
    rows = generate_rows(0, 400)
    for r in rows:
        numbers = set(parse_numbers(r["problem"]))
        assert numbers <= familiar or not numbers & familiar
        counts[int(r["level"][-1])] += not numbers & familiar
    assert counts[1] == 0 and counts[5] == 400
    for k in (2, 3, 4):  # binomial(400, share): the standard deviation is at most 10
        assert abs(counts[k] - 400 * unfamiliar_share(k)) < 40


def test_the_needle_can_be_in_any_place() -> None:
    places = {next(i for i, n in enumerate(parse_numbers(r["problem"])) if n in GOOD)
              for r in generate_rows(0, 100)}
    assert places == set(range(LIST_LENGTH))


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


def test_the_embedded_task_names_its_contradicted_checks():
    from expo.toy.task import contradicted_checks, verification

    texts = ["373:no \\boxed{373}", verification(374), "758:no \\boxed{758}"]
    assert contradicted_checks(texts).startswith("In this task 2 of 3 accepted explanations box the given")
    assert contradicted_checks([verification(374)]) == ""
