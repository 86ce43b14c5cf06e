"""expo.gates: each outcome of both gates, on numbers worked out by hand.

Gate 1 (report stage): the best arm vs the base model. Gate 2 (register stage): the candidate vs the
champion. Both: "beats" means value > reference + margin, strictly. tests/test_registry.py checks gate 2
end to end against a real MLflow server (tags, aliases, races); this file checks the rule alone.
"""

from __future__ import annotations

import math

import pytest

from expo.gates import (ALREADY_CHAMPION, KEPT, NO_METRIC, PROMOTED, beats, best_arm_vs_base,
                        candidate_vs_champion, gate_value)

NAN = math.nan
METRIC = "hardest_level_pass@1"


def model(hardest: float, easy: float = 0.9, overall: float | None = None) -> dict:
    """A model summary with levels 1 and 3 (level 3 the hardest) and, optionally, an overall pass@1."""
    out: dict = {"levels": {"1": {"pass@1": easy}, "3": {"pass@1": hardest}}}
    if overall is not None:
        out["overall"] = {"pass@1": overall}
    return out


@pytest.mark.parametrize("summary, metric, expected", [
    (model(0.2), METRIC, 0.2),  # the highest level, not the first or the last listed
    ({"levels": {"10": {"pass@1": 0.1}, "9": {"pass@1": 0.5}}}, METRIC, 0.1),  # levels compare as numbers
    (model(0.2, overall=0.55), "overall_pass@1", 0.55),
    (model(0.2), "overall_pass@1", NAN),  # no overall part
    ({"levels": {"3": {"pass@k": 0.4}}}, METRIC, NAN),  # the level lacks the metric
    ({}, METRIC, NAN),  # no levels at all
    (model(0.2), "pass@1", NAN),  # neither hardest_level_ nor overall_: no gate value
])
def test_gate_value(summary, metric, expected):
    value = gate_value(summary, metric)
    assert (math.isnan(value) and math.isnan(expected)) or value == expected


@pytest.mark.parametrize("value, reference, margin, expected", [
    (0.31, 0.30, 0.0, True),
    (0.30, 0.30, 0.0, False),  # a tie does not beat
    (0.35, 0.30, 0.05, False),  # a tie at the margin does not beat (0.35 > 0.35 is false)
    (0.36, 0.30, 0.05, True),
    (0.29, 0.30, -0.02, True),  # a negative margin lets a slightly worse value through
    (NAN, 0.30, 0.0, False),
    (0.30, NAN, 0.0, False),
])
def test_beats_is_strict(value, reference, margin, expected):
    assert beats(value, reference, margin) is expected


@pytest.mark.parametrize("models, margin, expected", [
    # the best arm beats the base by more than the margin: register it
    ({"base": model(0.10), "grpo": model(0.20), "exp-grpo": model(0.30)}, 0.0,
     {"best_arm": "exp-grpo", "best_value": 0.30, "base_value": 0.10, "register": True}),
    # no arm beats the base: the best is still named, but not registered
    ({"base": model(0.40), "grpo": model(0.20), "exp-grpo": model(0.30)}, 0.0,
     {"best_arm": "exp-grpo", "best_value": 0.30, "base_value": 0.40, "register": False}),
    # the best arm equals the base: a tie does not beat
    ({"base": model(0.30), "exp-grpo": model(0.30)}, 0.0,
     {"best_arm": "exp-grpo", "best_value": 0.30, "base_value": 0.30, "register": False}),
    # a tie at the margin: 0.35 is not more than 0.30 + 0.05
    ({"base": model(0.30), "exp-grpo": model(0.35)}, 0.05,
     {"best_arm": "exp-grpo", "best_value": 0.35, "base_value": 0.30, "register": False}),
    # just over the margin
    ({"base": model(0.30), "exp-grpo": model(0.36)}, 0.05,
     {"best_arm": "exp-grpo", "best_value": 0.36, "base_value": 0.30, "register": True}),
    # the smoke preset's margin -1: any arm with a value registers
    ({"base": model(0.50), "grpo": model(0.0)}, -1.0,
     {"best_arm": "grpo", "best_value": 0.0, "base_value": 0.50, "register": True}),
    # NaN base (the base model has no such number): any arm with a value registers
    ({"base": {"levels": {}}, "grpo": model(0.10)}, 0.0,
     {"best_arm": "grpo", "best_value": 0.10, "base_value": NAN, "register": True}),
    # an arm without a value is no candidate; the other one wins
    ({"base": model(0.10), "grpo": {"levels": {"3": {}}}, "sft": model(0.20)}, 0.0,
     {"best_arm": "sft", "best_value": 0.20, "base_value": 0.10, "register": True}),
    # no arm has a value: nothing to register
    ({"base": model(0.10), "grpo": {}}, 0.0,
     {"best_arm": "", "best_value": NAN, "base_value": 0.10, "register": False}),
    # only the base was evaluated
    ({"base": model(0.10)}, 0.0,
     {"best_arm": "", "best_value": NAN, "base_value": 0.10, "register": False}),
    # two arms tie: the first name in sorted order, whatever order they came in
    ({"base": model(0.10), "sft": model(0.30), "grpo": model(0.30)}, 0.0,
     {"best_arm": "grpo", "best_value": 0.30, "base_value": 0.10, "register": True}),
])
def test_best_arm_vs_base(models, margin, expected):
    decision = best_arm_vs_base(models, METRIC, margin)
    assert set(decision) == set(expected)
    for key, want in expected.items():
        got = decision[key]
        assert (isinstance(want, float) and math.isnan(want) and math.isnan(got)) or got == want, key


@pytest.mark.parametrize("candidate, champion, cand_value, champ_value, margin, expected", [
    (1, None, 0.30, None, 0.05, PROMOTED),  # nobody holds the alias
    (2, 1, 0.33, 0.30, 0.05, KEPT),  # better, but not by more than the margin
    (2, 1, 0.35, 0.30, 0.05, KEPT),  # a tie at the margin keeps the champion
    (3, 1, 0.36, 0.30, 0.05, PROMOTED),
    (2, 1, 0.20, 0.30, 0.0, KEPT),  # worse
    (2, 1, 0.30, 0.30, 0.0, KEPT),  # equal
    (2, 2, 0.30, 0.30, 0.0, ALREADY_CHAMPION),
    (2, None, None, None, 0.0, NO_METRIC),  # the candidate has no value, even without a champion
    (2, 1, None, 0.30, 0.0, NO_METRIC),
    (2, 1, 0.90, None, 0.0, NO_METRIC),  # the champion has no value: no improvement can be shown
    (2, 1, NAN, 0.30, 0.0, KEPT),  # a NaN candidate never beats
    (2, None, NAN, None, 0.0, PROMOTED),  # ... but the first version takes a free alias
])
def test_candidate_vs_champion(candidate, champion, cand_value, champ_value, margin, expected):
    assert candidate_vs_champion(candidate, champion, cand_value, champ_value, margin) == expected
