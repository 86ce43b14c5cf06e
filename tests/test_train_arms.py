"""The arm table (expo.train.arms): each arm's trainer, NLL term, weights and needs, worked out by hand."""

from __future__ import annotations

import pytest

from expo.cli.train import ARMS as CLI_ARMS
from expo.config import ALGORITHMS, TrainConfig
from expo.errors import ConfigError
from expo.train.arms import ARMS, arm_spec

# 5 steps, linear schedule: expo_beta x (1, .75, .5, .25, 0) over steps 0..4
TC = TrainConfig(steps=5, expo_beta=0.04, expo_beta_schedule="linear", sft_beta=0.1)


def test_one_list_of_arm_names() -> None:
    """The table, the config's check of train.arms and the CLI's --arm choices name the same arms
    (the CLI keeps a literal: `expo --help` imports no config)."""
    assert tuple(ARMS) == ALGORITHMS == CLI_ARMS
    assert all(arm.name == name for name, arm in ARMS.items())


@pytest.mark.parametrize("name,trainer,nll,beta,expo_beta,weights", [
    ("grpo", "grpo", None, 0.0, 0.0, [0.0] * 5),
    ("exp-grpo", "grpo", "expo", 0.04, 0.04, [0.04, 0.03, 0.02, 0.01, 0.0]),
    ("grpo-sft", "grpo", "sft", 0.1, 0.0, [0.1] * 5),  # its weight is sft_beta; ExPO's stays 0
    ("exp-dpo", "dpo", None, 0.0, 0.0, [0.0] * 5),
    ("sdft", "sdft", None, 0.0, 0.0, [0.0] * 5),  # its teacher is the policy on the explanation prompt
])
def test_each_arm_by_hand(name: str, trainer: str, nll: str | None, beta: float, expo_beta: float,
                          weights: list[float]) -> None:
    arm = arm_spec(name)
    assert (arm.trainer, arm.nll, arm.beta(TC), arm.expo_beta(TC)) == (trainer, nll, beta, expo_beta)
    assert [arm.weight_at(TC)(step) for step in range(5)] == pytest.approx(weights, abs=1e-15)


@pytest.mark.parametrize("name,expo_beta,sft_beta,term,explanations,solutions", [
    ("grpo", 0.04, 0.1, False, False, False),
    ("exp-grpo", 0.04, 0.1, True, True, False),
    ("exp-grpo", 0.0, 0.1, False, False, False),  # weight 0: no term, so no explanations needed
    ("grpo-sft", 0.04, 0.1, True, False, True),
    ("grpo-sft", 0.04, 0.0, False, False, True),  # no term, but the check for solutions stays
    ("exp-dpo", 0.0, 0.0, False, True, False),  # DPO's chosen side is an explanation, whatever the weights
    ("sdft", 0.04, 0.1, False, False, False),  # it needs the answer only, never the explanations stage
])
def test_what_each_arm_needs(name: str, expo_beta: float, sft_beta: float, term: bool, explanations: bool,
                             solutions: bool) -> None:
    tc = TrainConfig(expo_beta=expo_beta, sft_beta=sft_beta)
    arm = arm_spec(name)
    assert (arm.has_nll_term(tc), arm.needs_explanations(tc), arm.needs_solutions) == (
        term, explanations, solutions)


def test_an_unknown_arm_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown arm 'ppo' \(known: grpo, exp-grpo, grpo-sft, exp-dpo, sdft\)"):
        arm_spec("ppo")
