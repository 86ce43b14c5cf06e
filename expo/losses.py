"""ExPO's loss pieces: the self-explanation NLL term, its weight schedule, and which groups get it.

ExP-GRPO minimises `L = L_GRPO + expo_beta(step) * NLL(c~, a* | q)` (arXiv 2507.02834): the GRPO loss
comes from TRL unchanged; this module adds the second term. The explanation `c~` is scored under the
plain solve prompt `q` (the hint that produced it is not in the conditioning), with a token-mean over
the explanation's tokens across the whole batch, and it carries no advantage.

Everything here is a pure function of tensors or numbers, so it is tested by hand-computed values:

    beta = expo_beta_at(step=2, total=5, beta=0.04, schedule="linear")    # 0.02 (1, .75, .5, .25, 0 x beta)
    loss, stats = token_mean_nll(logits, input_ids, target_mask)           # the reference form, full logits
    batch = pack_scored_rows([(prompt_ids, text_ids), ...], pad_id)        # prompts left-, texts right-padded
    nll_sum, n_tokens = scored_nll_sum(model, batch)                       # logits at the text positions only

Training uses the last two: a step's explanations are split over micro-batches, and each adds
`beta * nll_sum / n_tokens_of_the_step` (see expo.train.grpo), so the step's total is the token-mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from expo.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# expo_beta schedules: a pure function of the step, so a resumed run needs no schedule state.

_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}
SCHEDULES = tuple(_SCHEDULES)


def expo_beta_at(step: int, total: int, beta: float, schedule: str) -> float:
    """The ExPO weight at optimizer step `step` (0-based) of `total` trained steps.

    Decaying schedules run from `beta` at step 0 to exactly 0 at the last trained step (`total - 1`):
    progress is `step / (total - 1)`, so no trained step is wasted on a weight that never arrives
    (with `step / total` the last step would still carry beta / total). A single-step run has nothing
    to decay over and keeps the full weight.

    >>> [expo_beta_at(s, 5, 1.0, "linear") for s in range(5)]
    [1.0, 0.75, 0.5, 0.25, 0.0]
    >>> [round(expo_beta_at(s, 5, 1.0, "cosine"), 6) for s in range(5)]
    [1.0, 0.853553, 0.5, 0.146447, 0.0]
    """
    if schedule not in _SCHEDULES:
        raise ConfigError(f"config key 'train.expo_beta_schedule': unknown schedule {schedule!r} "
                          f"(known: {', '.join(SCHEDULES)})")
    if beta < 0:
        raise ConfigError(f"config key 'train.expo_beta': must be >= 0, got {beta}")
    if total <= 0:
        raise ConfigError(f"config key 'train.steps': must be positive, got {total}")
    progress = min(max(step / (total - 1), 0.0), 1.0) if total > 1 else 0.0
    return beta * _SCHEDULES[schedule](progress)


# ---------------------------------------------------------------------------------------------
# The NLL term.


def token_mean_nll(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean negative log-likelihood of the tokens where `target_mask` is 1, over the whole batch.

    The reference form (full logits, every position); training uses `scored_nll_sum`, which computes
    the same value from the scored positions only. `logits[:, t]` predicts `input_ids[:, t + 1]`, so
    the target of position t+1 is read from logits at t. Aggregation is "token-mean" over every target
    token of the batch (a long explanation weighs more than a short one, as in SFT), not a mean of
    per-sequence means.

    Args: logits (E, T, V), input_ids (E, T), target_mask (E, T) with 1 on explanation tokens only
    (prompt and padding are 0). Returns (loss, stats) with loss a 0-dim tensor that carries gradient.
    """
    shift_logits = logits[:, :-1, :]  # (E, T-1, V)
    if shift_logits.dtype in (torch.float16, torch.bfloat16):
        shift_logits = shift_logits.float()  # log-softmax in half precision loses the small log-probs
    shift_targets = input_ids[:, 1:]  # (E, T-1)
    shift_mask = target_mask[:, 1:].to(shift_logits.dtype)  # (E, T-1)
    logps = torch.log_softmax(shift_logits, dim=-1)  # (E, T-1, V)
    token_logps = logps.gather(-1, shift_targets.unsqueeze(-1)).squeeze(-1)  # (E, T-1)
    n_tokens = shift_mask.sum()  # ()
    loss = -(token_logps * shift_mask).sum() / n_tokens.clamp(min=1.0)  # ()
    stats = {"nll": loss.item(), "tokens": float(n_tokens.item()), "sequences": float(input_ids.shape[0])}
    return loss, stats


def pack_scored_rows(rows: list[tuple[list[int], list[int]]], pad_id: int,
                     device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """[prompt; text] rows laid out as TRL lays out prompt and completion: prompts left-padded to one
    width P, texts right-padded to one width L, so every text starts at column P and its logits are
    the last L + 1 positions (one call with `logits_to_keep`, no prompt position through the lm_head).

    Position ids count real tokens only (a left-padded prompt sees the positions it has unpadded, as
    in generation). Returns input_ids, attention_mask, position_ids (E, P + L) and text_mask (E, L).

    >>> b = pack_scored_rows([([5, 6], [7]), ([5], [8, 9])], pad_id=0)
    >>> b["input_ids"].tolist(), b["text_mask"].tolist(), b["position_ids"].tolist()
    ([[5, 6, 7, 0], [0, 5, 8, 9]], [[1, 0], [1, 1]], [[0, 1, 2, 2], [0, 0, 1, 2]])
    """
    P = max(len(p) for p, _ in rows)
    L = max(len(t) for _, t in rows)
    input_ids = torch.full((len(rows), P + L), pad_id, dtype=torch.long)  # (E, P+L)
    attention_mask = torch.zeros((len(rows), P + L), dtype=torch.long)  # (E, P+L)
    text_mask = torch.zeros((len(rows), L), dtype=torch.long)  # (E, L): 1 on scored text tokens
    for i, (prompt, text) in enumerate(rows):
        input_ids[i, P - len(prompt): P] = torch.tensor(prompt, dtype=torch.long)
        input_ids[i, P: P + len(text)] = torch.tensor(text, dtype=torch.long)
        attention_mask[i, P - len(prompt): P + len(text)] = 1
        text_mask[i, : len(text)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (E, P+L)
    return {k: v.to(device) for k, v in (("input_ids", input_ids), ("attention_mask", attention_mask),
                                         ("position_ids", position_ids), ("text_mask", text_mask))}


def scored_nll_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of the text tokens' NLL, number of text tokens) for a `pack_scored_rows` batch.

    The lm_head and the log-softmax see only the text positions: the model is asked for the last
    L + 1 positions' logits (`logits_to_keep`, as TRL does for rollouts), the last one is dropped, and
    the log-prob of each target is taken in fp32 without a full log-softmax tensor
    (`trl.trainer.utils.selective_log_softmax`). Any causal LM with `logits_to_keep` works (plain,
    PEFT-wrapped, DDP-wrapped). Dividing the sum by the token count gives `token_mean_nll`'s value.
    """
    from trl.trainer.utils import selective_log_softmax

    text_mask = batch["text_mask"]  # (E, L)
    L = text_mask.shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=L + 1).logits  # (E, L+1, V)
    logits = logits[:, :-1, :]  # (E, L, V): column j predicts text token j
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # log-softmax in half precision loses the small log-probs
    targets = batch["input_ids"][:, -L:]  # (E, L)
    token_logps = selective_log_softmax(logits, targets)  # (E, L)
    mask = text_mask.to(token_logps.dtype)  # (E, L)
    return -(token_logps * mask).sum(), int(text_mask.sum().item())


def micro_batch_share(nll_sum: torch.Tensor, weight: float, world: int, step_tokens: int) -> torch.Tensor:
    """One micro-batch's part of `weight * token-mean NLL` over a step of `world` processes.

    `nll_sum` is this micro-batch's summed NLL, `step_tokens` the text tokens of the whole step on every
    process. DDP averages the processes' gradients (a factor 1 / world) and accumulation adds the
    micro-batches, so `weight * nll_sum * world / step_tokens` per micro-batch makes the step's total
    `weight * (sum of every NLL) / step_tokens`: the token-mean, however the rows were split.

    >>> # two processes; 6 tokens in all; micro-batch sums 3.0 (process 0) and 1.5 + 1.5 (process 1)
    >>> parts = [micro_batch_share(torch.tensor(x), 0.5, 2, 6) for x in (3.0, 1.5, 1.5)]
    >>> (parts[0] + (parts[1] + parts[2])) / 2  # DDP's mean of the processes' sums
    tensor(0.5000)
    """
    return weight * nll_sum * (world / step_tokens)


def explanation_nll(model: torch.nn.Module, rows: list[tuple[list[int], list[int]]], pad_id: int
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """The token-mean NLL of each row's text after its prompt, in one call (no micro-batching).

    Args: rows of (prompt token ids, text token ids). Returns (loss, stats) like `token_mean_nll`.
    """
    device = next(model.parameters()).device
    total, n_tokens = scored_nll_sum(model, pack_scored_rows(rows, pad_id, device))
    loss = total / max(n_tokens, 1)
    return loss, {"nll": loss.item(), "tokens": float(n_tokens), "sequences": float(len(rows))}


# ---------------------------------------------------------------------------------------------
# Which groups receive the term.


def unsolved_groups(rewards: torch.Tensor, num_generations: int, threshold: float = 0.5) -> torch.Tensor:
    """True for each prompt whose G rollouts are all wrong (reward < threshold; NaN counts as wrong).

    Args: rewards (B * G,) laid out group by group, as TRL orders rollouts. Returns (B,) bool.

    >>> unsolved_groups(torch.tensor([0., 0., 1., 0.]), 2).tolist()
    [True, False]
    """
    grouped = torch.nan_to_num(rewards, nan=0.0).view(-1, num_generations)  # (B, G)
    return ~(grouped >= threshold).any(dim=1)  # (B,)


__all__ = ["SCHEDULES", "expo_beta_at", "token_mean_nll", "pack_scored_rows", "scored_nll_sum",
           "micro_batch_share", "explanation_nll", "unsolved_groups"]
