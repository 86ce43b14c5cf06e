"""expo.losses: schedules, the token-mean NLL, group selection; every expectation worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from expo.errors import ConfigError
from expo.losses import expo_beta_at, pack_scored_rows, scored_nll_sum, token_mean_nll, unsolved_groups


@pytest.mark.parametrize("step,total,schedule,expected", [
    (0, 10, "constant", 0.04),
    (9, 10, "constant", 0.04),
    (0, 10, "linear", 0.04),
    (3, 7, "linear", 0.02),  # steps 0..6: step 3 is halfway, half the weight
    (9, 10, "linear", 0.0),  # the last trained step (9 of 0..9) has weight exactly 0
    (15, 10, "linear", 0.0),  # past the end stays at 0, never negative
    (0, 10, "cosine", 0.04),
    (3, 7, "cosine", 0.02),  # 0.04 * (1 + cos(pi/2)) / 2
    (9, 10, "cosine", 0.0),
    (2, 9, "cosine", 0.04 * (1 + math.cos(math.pi / 4)) / 2),  # progress 2/8: 0.0341421...
    (0, 1, "linear", 0.04),  # one step: nothing to decay over, full weight
])
def test_expo_beta_schedule(step: int, total: int, schedule: str, expected: float) -> None:
    assert expo_beta_at(step, total, 0.04, schedule) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("schedule,expected", [
    ("linear", [1.0, 0.75, 0.5, 0.25, 0.0]),  # 1 - s/4
    ("cosine", [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0]),  # (1 + cos(pi s/4)) / 2
    ("constant", [1.0] * 5),
])
def test_decaying_schedule_reaches_zero_on_the_last_trained_step(schedule: str,
                                                                  expected: list[float]) -> None:
    """steps=5 trains steps 0..4: the last one's weight is exactly 0 (it was beta/5 before the fix)."""
    b = 0.04
    got = [expo_beta_at(s, 5, b, schedule) for s in range(5)]
    assert got == pytest.approx([b * e for e in expected], abs=1e-15)
    if schedule != "constant":
        assert got[-1] == 0.0


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


class BigramLM(torch.nn.Module):
    """A hand-checkable causal LM: logits at t are a table row of input token t (vocabulary 3).

    It accepts what scored_nll_sum passes (attention_mask, position_ids, logits_to_keep) and records
    how many positions it was asked for, so the test can see that prompt positions are not computed."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)  # (V, V)
        self.kept: list[int] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0) -> object:
        logits = self.table[input_ids]  # (E, T, V)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
            self.kept.append(logits_to_keep)
        return type("Out", (), {"logits": logits})()


def test_scored_nll_equals_the_full_computation_by_hand() -> None:
    """Rows (prompt | text): ([1] | [2, 0]) and ([2, 1] | [0]). Table row a = logits after token a.
    Row 0 scores 2 after 1 and 0 after 2; row 1 scores 0 after 1. With table
    [[0,0,0],[0,0,ln 2],[ln 3,0,0]]: p(2|1) = 2/4, p(0|2) = 3/5, p(0|1) = 1/4.
    Token-mean NLL = (ln 2 + ln(5/3) + ln 4) / 3 = 0.86131..."""
    table = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2)], [math.log(3), 0.0, 0.0]])
    model = BigramLM(table)
    rows = [([1], [2, 0]), ([2, 1], [0])]
    batch = pack_scored_rows(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[0, 1, 2, 0], [2, 1, 0, 0]]  # prompts left-, texts right-padded
    assert batch["text_mask"].tolist() == [[1, 1], [1, 0]]
    total, n = scored_nll_sum(model, batch)
    expected = (math.log(2) + math.log(5 / 3) + math.log(4)) / 3
    assert n == 3 and (total / n).item() == pytest.approx(expected, rel=1e-6)
    assert model.kept == [3]  # the text width + 1, not the whole row
    # The naive computation (full logits of unpadded rows, every position) gives the same value.
    full = [torch.tensor([p + t]) for p, t in rows]
    masks = [torch.tensor([[0] * len(p) + [1] * len(t)]) for p, t in rows]
    naive_sum = sum(token_mean_nll(model(ids).logits, ids, mask)[0] * len(t)
                    for ids, mask, (_, t) in zip(full, masks, rows, strict=True))
    assert (naive_sum / 3).item() == pytest.approx(expected, rel=1e-6)


def test_scored_nll_matches_naive_on_a_tiny_transformer() -> None:
    """A tiny Qwen2 (attention, RoPE): left-padded prompts with position ids give the same NLL and the
    same gradient as each row run alone, unpadded, with full logits (float64; a scored prompt or pad
    token, or a pad the text attends to, would be off by far more than the tolerance)."""
    from expo.scratch_models import char_tokenizer, tiny_qwen2

    tok = char_tokenizer()
    torch.manual_seed(0)
    model = tiny_qwen2(tok, hidden=32, layers=2).double()
    rows = [(tok("7+7=")["input_ids"], tok("14 ok", add_special_tokens=False)["input_ids"]),
            (tok("12+1=")["input_ids"], tok("13", add_special_tokens=False)["input_ids"]),
            (tok("1=")["input_ids"], tok("the answer", add_special_tokens=False)["input_ids"])]
    total, n = scored_nll_sum(model, pack_scored_rows(rows, tok.pad_token_id))
    (total / n).backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    naive = torch.zeros((), dtype=torch.float64)
    for prompt, text in rows:
        ids = torch.tensor([prompt + text])
        mask = torch.tensor([[0] * len(prompt) + [1] * len(text)])
        naive = naive + token_mean_nll(model(input_ids=ids).logits, ids, mask)[0] * len(text)
    naive = naive / sum(len(t) for _, t in rows)
    naive.backward()
    assert n == sum(len(t) for _, t in rows)
    assert (total / n).item() == pytest.approx(naive.item(), rel=1e-9)
    for k, p in model.named_parameters():
        torch.testing.assert_close(got[k], p.grad, rtol=1e-6, atol=1e-9, msg=k)


@pytest.mark.parametrize("rewards,G,expected", [
    ([0, 0, 0, 0], 2, [True, True]),  # nothing solved
    ([0, 1, 1, 1], 2, [False, False]),  # one correct rollout is enough to count as solved
    ([0, 0, 1, 0], 2, [True, False]),
    ([float("nan"), 0, 1, 1], 2, [True, False]),  # an unscorable rollout counts as wrong
    ([0.4, 0.2, 0.6, 0.0], 2, [True, False]),  # threshold 0.5
])
def test_unsolved_groups(rewards: list[float], G: int, expected: list[bool]) -> None:
    assert unsolved_groups(torch.tensor(rewards), G).tolist() == expected
