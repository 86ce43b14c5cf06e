"""expo.losses: schedules, the token-mean NLL, group selection; every expectation worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from expo.errors import ConfigError
from expo.losses import combine, expo_beta_at, group_advantages, token_mean_nll, unsolved_groups


@pytest.mark.parametrize("step,total,schedule,expected", [
    (0, 10, "constant", 0.04),
    (9, 10, "constant", 0.04),
    (0, 10, "linear", 0.04),
    (5, 10, "linear", 0.02),  # halfway: half the weight
    (10, 10, "linear", 0.0),  # decays to 0 at the last step
    (15, 10, "linear", 0.0),  # past the end stays at 0, never negative
    (0, 10, "cosine", 0.04),
    (5, 10, "cosine", 0.02),  # 0.04 * (1 + cos(pi/2)) / 2
    (10, 10, "cosine", 0.0),
    (2, 8, "cosine", 0.04 * (1 + math.cos(math.pi / 4)) / 2),  # 0.0341421...
])
def test_expo_beta_schedule(step: int, total: int, schedule: str, expected: float) -> None:
    assert expo_beta_at(step, total, 0.04, schedule) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kwargs,words", [
    ({"schedule": "exponential"}, "unknown schedule"),
    ({"beta": -0.1}, "expo_beta"),
    ({"total": 0}, "train.steps"),
])
def test_expo_beta_rejects_bad_settings(kwargs: dict, words: str) -> None:
    args = {"step": 0, "total": 10, "beta": 0.04, "schedule": "constant", **kwargs}
    with pytest.raises(ConfigError, match=words):
        expo_beta_at(**args)


def test_token_mean_nll_by_hand() -> None:
    """Vocabulary of 2. Row 0: one target token, logits (0, 0) -> p = 1/2, NLL ln 2.
    Row 1: three target tokens, logits (2, 0) for target 0 -> p = e^2/(e^2+1), NLL ln(1 + e^-2) each.
    Token-mean over the 4 target tokens: (ln 2 + 3 ln(1 + e^-2)) / 4 = 0.26876...
    (a mean of per-row means would give (ln 2 + ln(1 + e^-2)) / 2 = 0.40999..., so this tells them apart)."""
    input_ids = torch.tensor([[1, 0, 0, 0, 0],   # prompt token, then target 0; the rest is padding
                              [1, 0, 0, 0, 1]])  # prompt token, targets 0 0 0, then an unscored token
    target_mask = torch.tensor([[0, 1, 0, 0, 0],
                                [0, 1, 1, 1, 0]])
    logits = torch.zeros(2, 5, 2)
    logits[1, :, 0] = 2.0  # row 1 predicts token 0 with logit 2 at every position
    loss, stats = token_mean_nll(logits, input_ids, target_mask)
    expected = (math.log(2) + 3 * math.log(1 + math.exp(-2))) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats == {"nll": pytest.approx(expected, rel=1e-6), "tokens": 4.0, "sequences": 2.0}


def test_token_mean_nll_ignores_prompt_and_padding() -> None:
    """Changing logits that predict prompt or padding positions leaves the loss unchanged."""
    input_ids = torch.tensor([[3, 1, 2, 0]])
    target_mask = torch.tensor([[0, 0, 1, 0]])  # only token 2 at position 2 is scored (from logits[:, 1])
    logits = torch.randn(1, 4, 5)
    base, _ = token_mean_nll(logits, input_ids, target_mask)
    changed = logits.clone()
    changed[0, 0] += 10.0  # predicts position 1 (prompt)
    changed[0, 2:] -= 7.0  # predict position 3 (padding) and beyond
    again, _ = token_mean_nll(changed, input_ids, target_mask)
    assert again.item() == pytest.approx(base.item(), rel=1e-6)
    assert base.item() == pytest.approx(-torch.log_softmax(logits[0, 1], -1)[2].item(), rel=1e-6)


@pytest.mark.parametrize("rewards,G,expected", [
    ([0, 0, 0, 0], 2, [True, True]),  # nothing solved
    ([0, 1, 1, 1], 2, [False, False]),  # one correct rollout is enough to count as solved
    ([0, 0, 1, 0], 2, [True, False]),
    ([float("nan"), 0, 1, 1], 2, [True, False]),  # an unscorable rollout counts as wrong
    ([0.4, 0.2, 0.6, 0.0], 2, [True, False]),  # threshold 0.5
])
def test_unsolved_groups(rewards: list[float], G: int, expected: list[bool]) -> None:
    assert unsolved_groups(torch.tensor(rewards), G).tolist() == expected


def test_group_advantages_by_hand() -> None:
    """Group (1, 0, 0, 0): mean 1/4 -> (3/4, -1/4, -1/4, -1/4); sample std sqrt(1/4) = 0.5 scales by 2.
    All-equal group (0, 0, 0, 0): all advantages 0, the GRPO blind spot ExPO fills."""
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert group_advantages(r, 4, scale=False).tolist() == [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]
    scaled = group_advantages(r, 4, scale=True)
    assert scaled[:4].tolist() == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    assert scaled[4:].abs().sum().item() == 0.0


def test_combine() -> None:
    grpo, nll = torch.tensor(0.5), torch.tensor(2.0)
    total, stats = combine(grpo, nll, 0.25)
    assert total.item() == 1.0
    assert stats == {"grpo_loss": 0.5, "expo_term": 0.5, "total_loss": 1.0}
    assert combine(grpo, None, 0.25)[0].item() == 0.5  # no explanation in the batch
    assert combine(grpo, nll, 0.0)[0].item() == 0.5  # plain GRPO
