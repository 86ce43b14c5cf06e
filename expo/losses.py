"""ExPO's loss pieces: the self-explanation NLL term, its weight schedule, and which groups get it.

ExP-GRPO minimises `L = L_GRPO + expo_beta(step) * NLL(c~, a* | q)` (arXiv 2507.02834): the GRPO loss
comes from TRL unchanged; this module adds the second term. The explanation `c~` is scored under the
plain solve prompt `q` (the hint that produced it is not in the conditioning), with a token-mean over
the explanation's tokens across the whole batch, and it carries no advantage.

Everything here is a pure function of tensors or numbers, so it is tested by hand-computed values:

    beta = expo_beta_at(step=5, total=10, beta=0.04, schedule="linear")   # 0.02
    loss, stats = explanation_nll(logits, input_ids, target_mask)          # stats: detached floats
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
    """The ExPO weight at optimizer step `step` (0-based) of `total`; decaying schedules reach 0 at `total`.

    >>> expo_beta_at(0, 10, 0.04, "linear"), expo_beta_at(5, 10, 0.04, "linear")
    (0.04, 0.02)
    >>> round(expo_beta_at(5, 10, 0.04, "cosine"), 6)
    0.02
    """
    if schedule not in _SCHEDULES:
        raise ConfigError(f"config key 'train.expo_beta_schedule': unknown schedule {schedule!r} "
                          f"(known: {', '.join(SCHEDULES)})")
    if beta < 0:
        raise ConfigError(f"config key 'train.expo_beta': must be >= 0, got {beta}")
    if total <= 0:
        raise ConfigError(f"config key 'train.steps': must be positive, got {total}")
    progress = min(max(step / total, 0.0), 1.0)
    return beta * _SCHEDULES[schedule](progress)


# ---------------------------------------------------------------------------------------------
# The NLL term.


def token_mean_nll(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean negative log-likelihood of the tokens where `target_mask` is 1, over the whole batch.

    `logits[:, t]` predicts `input_ids[:, t + 1]`, so the target of position t+1 is read from
    logits at t. Aggregation is "token-mean" over every target token of the batch (a long explanation
    weighs more than a short one, as in SFT), not a mean of per-sequence means.

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


def explanation_nll(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    target_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Run `model` on [solve prompt; explanation] rows and return the token-mean NLL of the explanation.

    Args: input_ids, attention_mask, target_mask all (E, T), right-padded. Only the logits are used
    (the model computes no loss of its own), so any causal LM (plain, PEFT-wrapped) works.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (E, T, V)
    return token_mean_nll(logits, input_ids, target_mask)


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


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: bool = True) -> torch.Tensor:
    """GRPO's group-relative advantages `A_i = r_i - mean(r)` (divided by std + 1e-4 when `scale`).

    The reference for what TRL computes with `scale_rewards="group"`; used by tests and by the
    benchmark's sanity check. Args: rewards (B * G,). Returns (B * G,).

    >>> group_advantages(torch.tensor([1., 0., 0., 0.]), 2, scale=False).tolist()
    [0.5, -0.5, 0.0, 0.0]
    """
    grouped = rewards.view(-1, num_generations)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return centred.reshape(-1)  # (B * G,)


def combine(grpo_loss: torch.Tensor, nll: torch.Tensor | None, beta: float
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """`L_GRPO + beta * NLL`; with no explanation in the batch (nll None) or beta 0, the GRPO loss alone."""
    term = beta * nll if (nll is not None and beta > 0.0) else torch.zeros((), device=grpo_loss.device)
    total = grpo_loss + term
    return total, {"grpo_loss": grpo_loss.item(), "expo_term": float(term.item()), "total_loss": total.item()}


__all__ = ["SCHEDULES", "expo_beta_at", "token_mean_nll", "explanation_nll", "unsolved_groups",
           "group_advantages", "combine"]
