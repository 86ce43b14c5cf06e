"""expo.metrics: pass@k, intervals, by-level aggregation and paired deltas against hand-computed values."""

from __future__ import annotations

import math

import pytest

from expo.metrics import (QuestionResult, aggregate, compare, level_key, mean_interval, pass_at_k,
                          pass_interval, sorted_levels, summarize, wilson_interval)


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 2, 0.5),             # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 0, 2, 0.0),             # nothing correct: never passes
    (4, 0, 4, 0.0),
    (4, 4, 1, 1.0),             # everything correct
    (5, 2, 5, 1.0),             # k = n with c > 0: the only subset holds a correct sample
    (5, 2, 1, 0.4),             # pass@1 = c / n
    (5, 2, 3, 0.9),             # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (10, 3, 2, 24 / 45),        # 1 - C(7,2)/C(10,2) = 1 - 21/45
    (200, 1, 100, 0.5),         # 1 - C(199,100)/C(200,100) = 1 - 100/200; binomials ~1e58, no overflow
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_form_for_every_k():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("successes, n, lo, hi", [
    # p=.5: centre (.5 + 1.96^2/20)/(1 + 1.96^2/10) = .5; half 1.96*sqrt(.025 + 3.8416/400)/1.38416 = .26341
    (5, 10, 0.23659, 0.76341),
    # p=0: centre = half = (3.8416/20)/1.38416 = .138770, so (0, .277540)
    (0, 10, 0.0, 0.27754),
    (10, 10, 0.72246, 1.0),  # mirror image of 0 of 10
])
def test_wilson_interval_hand_values(successes, n, lo, hi):
    got = wilson_interval(successes, n, z=1.96)
    assert got == pytest.approx((lo, hi), abs=1e-5)


@pytest.mark.parametrize("n", range(1, 101))
def test_wilson_interval_contains_the_proportion_exactly_at_the_ends(n):
    # 0 of 75 once gave lo = 3.5e-18 > 0: a negative error bar that crashed the report's plot.
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    lo, hi = wilson_interval(1, n)
    assert lo <= 1 / n <= hi


def test_wilson_interval_without_data_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mean_interval_hand_values():
    # mean .5; var = (.09+.01+.01+.09)/3 = .0666..; half = 1.96 * sqrt(.0666../4) = .253035
    mean, lo, hi = mean_interval([0.2, 0.4, 0.6, 0.8], z=1.96)
    assert (mean, lo, hi) == pytest.approx((0.5, 0.246965, 0.753035), abs=1e-6)


def test_mean_interval_edges():
    assert mean_interval([0.3]) == (0.3, 0.0, 1.0)  # one question: spread unknown, whole range
    assert mean_interval([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)  # no spread: collapses (documented)
    assert mean_interval([0.0, 1.0], bounds=(0.0, 1.0))[1:] == (0.0, 1.0)  # clipped to the bounds
    with pytest.raises(ValueError):
        mean_interval([])


def _questions() -> list[QuestionResult]:
    return [
        QuestionResult("q1", 1, n=4, c=4, greedy=True, tokens=[10] * 4, truncated=0),
        QuestionResult("q2", 1, n=4, c=2, greedy=False, tokens=[20] * 4, truncated=1),
        QuestionResult("q3", 2, n=4, c=1, greedy=True, tokens=[30] * 4, truncated=2),
        QuestionResult("q4", None, n=4, c=0, greedy=False, tokens=[40] * 4, truncated=4),
    ]


def test_summarize_overall_hand_values():
    s = summarize(_questions())
    assert s["questions"] == 4 and s["samples_per_question"] == 4
    assert sorted(s["pass@k"], key=int) == ["1", "2", "3", "4"]
    assert s["pass@1"]["mean"] == pytest.approx((1 + 0.5 + 0.25 + 0) / 4)  # 0.4375
    # pass@2 per question: 1, 1 - C(2,2)/C(4,2) = 5/6, 1 - C(3,2)/C(4,2) = 1/2, 0
    assert s["pass@k"]["2"]["mean"] == pytest.approx((1 + 5 / 6 + 0.5 + 0) / 4)
    assert s["pass@k"]["4"]["mean"] == pytest.approx(0.75)
    assert s["greedy"]["mean"] == 0.5 and s["greedy"]["correct"] == 2
    assert (s["greedy"]["lo"], s["greedy"]["hi"]) == pytest.approx(wilson_interval(2, 4))
    assert s["mean_tokens"] == pytest.approx(25.0)
    assert s["truncated_fraction"] == pytest.approx(7 / 16)


def test_aggregate_by_level():
    agg = aggregate(_questions())
    assert list(agg["by_level"]) == ["1", "2", "unknown"]
    one = agg["by_level"]["1"]
    assert one["questions"] == 2
    assert one["pass@1"]["mean"] == pytest.approx(0.75)
    assert one["pass@k"]["2"]["mean"] == pytest.approx((1 + 5 / 6) / 2)
    assert one["greedy"]["mean"] == 0.5
    assert one["mean_tokens"] == 15 and one["truncated_fraction"] == pytest.approx(1 / 8)
    two = agg["by_level"]["2"]  # one question: the Wilson interval of 0.25 of 1
    assert two["pass@1"] == pytest.approx({"mean": 0.25, "lo": wilson_interval(0.25, 1)[0],
                                           "hi": wilson_interval(0.25, 1)[1]})
    assert agg["by_level"]["unknown"]["pass@1"]["mean"] == 0.0


def test_pass_interval_never_collapses_on_all_wrong():
    # 40 questions, none solved: the normal interval is [0, 0]; Wilson's upper bound for 0 of n is
    # z^2 / (n + z^2) = 3.8416 / 43.8416 = 0.087624
    assert pass_interval([0.0] * 40, z=1.96) == pytest.approx((0.0, 0.0, 0.087624), abs=1e-6)
    # all equal but not 0 or 1: Wilson of 20 of 40 -> centre .5, half 1.96*sqrt(.25/40 + 3.8416/6400)/1.09604
    half = 1.96 * math.sqrt(0.25 / 40 + 3.8416 / 6400) / (1 + 3.8416 / 40)
    assert pass_interval([0.5] * 40, z=1.96) == pytest.approx((0.5, 0.5 - half, 0.5 + half))
    # with spread it is the normal interval over questions
    assert pass_interval([0.2, 0.4, 0.6, 0.8], z=1.96) == mean_interval([0.2, 0.4, 0.6, 0.8], z=1.96)


def test_summarize_without_greedy():
    s = summarize([QuestionResult("a", 1, n=2, c=1)])
    assert s["greedy"] is None and s["mean_tokens"] == 0.0


def test_level_keys_sort_numerically():
    assert level_key(None) == "unknown" and level_key(3) == "3"
    assert sorted_levels(["unknown", "10", "2", "1"]) == ["1", "2", "10", "unknown"]


def test_compare_paired_deltas():
    base = [QuestionResult("a", 1, 4, 0), QuestionResult("b", 1, 4, 2), QuestionResult("c", 2, 4, 4)]
    other = [QuestionResult("a", 1, 4, 4), QuestionResult("b", 1, 4, 2), QuestionResult("c", 2, 4, 2),
             QuestionResult("d", 2, 4, 4)]  # d is not in base: ignored
    cmp = compare(base, other)
    assert cmp["k"] == 4
    overall = cmp["overall"]
    assert overall["questions"] == 3
    # pass@1 diffs: +1, 0, -0.5 -> mean 1/6; var = (.8333^2 + .1667^2 + .6667^2)/2 = .58333
    d = overall["pass@1"]["delta"]
    assert d["mean"] == pytest.approx(1 / 6)
    assert d["lo"] == pytest.approx(1 / 6 - 1.959964 * math.sqrt(0.583333 / 3), abs=1e-5)  # -0.6977
    assert d["hi"] == 1.0  # clipped
    assert overall["pass@1"]["base"] == pytest.approx(0.5)
    assert overall["pass@1"]["other"] == pytest.approx(2 / 3)
    # pass@4: base 0, 1, 1; other 1, 1, 1 -> delta 1/3
    assert overall["pass@k"]["delta"]["mean"] == pytest.approx(1 / 3)
    assert list(cmp["by_level"]) == ["1", "2"]
    assert cmp["by_level"]["1"]["pass@1"]["delta"]["mean"] == pytest.approx(0.5)
    assert cmp["by_level"]["2"]["pass@1"]["delta"] == {"mean": -0.5, "lo": -1.0, "hi": 1.0}


def test_compare_needs_shared_questions():
    with pytest.raises(ValueError, match="share no question"):
        compare([QuestionResult("a", 1, 2, 1)], [QuestionResult("b", 1, 2, 1)])


def test_question_result_round_trip():
    q = _questions()[1]
    assert QuestionResult.from_dict(q.to_dict()) == q
