"""Dynamic sampling fitted to ExPO: which rollout groups of a step are trained on, and when to refill.

DAPO's dynamic sampling (verl `filter_groups`, OpenRLHF `dynamic_filtering`) drops every group whose
rollouts all got the same reward, since its GRPO advantage is zero, and refills the batch from further
prompts. Under ExPO an all-wrong group is exactly where the explanation term works, so the kinds are
treated apart:

- correct (every rollout right): dropped, no signal for either term;
- wrong (every rollout wrong): kept when the arm has an NLL term (its question's explanation is
  scored); its zero-advantage rollouts are trained on as usual, or, with `skip_wrong_rollouts`, kept
  out of the GRPO loss (an untrained slot, below). An arm without an NLL term (plain GRPO) drops
  them, as DAPO does;
- mixed: kept and trained as usual.

A step has `capacity` group slots (its prompts on this process). Kept groups fill them in generation
order; a group kept beyond the last slot is surplus (generated, not used). After a round, open slots
are refilled by generating that many further prompts, up to `max_rounds` rounds in all (the step's
own batch is round 1). Slots still open after the last round take dropped groups as fillers: their
rollouts get no loss and their question no NLL term, so the tensors keep the step's shape.

An untrained slot (a filler, or a skipped all-wrong group) has loss mask 0: no policy, KL or entropy
gradient, and it is not counted in any loss type's average. The token-normalised types (dapo, bnpo,
cispo, vespo) divide by masked tokens and leave it out by themselves; the ones that divide by rollouts
(grpo, sapo, luspo: a mean over rollouts; dr_grpo: rollouts x max_completion_length) would count its
G rows, so the trainer multiplies their loss by `rollout_loss_scale` (the step's rollouts / its
trained rollouts, over every process): the step's loss is then the same average over the trained
rollouts alone.

    kinds = group_kinds([1, 1, 0, 1, 0, 0], 2)                 # ["correct", "mixed", "wrong"]
    sel = select_groups([kinds], capacity=3, keep_wrong=True)  # 1 slot open: refill 1 prompt
    sel.missing                                                # 1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

GROUP_KINDS = ("correct", "wrong", "mixed")


@dataclass(frozen=True)
class GroupFilter:
    """The arm's dynamic-sampling settings (train.filter_groups and its keys)."""

    keep_wrong: bool  # the arm has an NLL term: all-wrong groups are kept for it
    skip_wrong_rollouts: bool = False  # kept all-wrong groups: rollouts out of the GRPO loss
    max_rounds: int = 3  # generation rounds per step, the first included


@dataclass(frozen=True)
class Slot:
    """One group slot of the step: which generated group fills it and how it is used."""

    round: int  # 0-based generation round
    index: int  # the group's index within its round
    kind: str  # correct | wrong | mixed
    trained: bool  # its rollouts are in the GRPO loss
    explained: bool  # its question may get the NLL term (expo_on still applies)


@dataclass
class Selection:
    slots: list[Slot]  # at most capacity; exactly capacity once final
    missing: int  # slots still open (the next round's prompt count)
    counts: dict[str, int] = field(default_factory=dict)  # generated groups by kind, every round
    dropped: int = 0  # generated groups not kept (correct; wrong without an NLL term)
    surplus: int = 0  # kept groups beyond the last slot
    fillers: int = 0  # slots filled with dropped groups after the last round


def group_kinds(rewards: Sequence[float], num_generations: int, threshold: float = 0.5) -> list[str]:
    """correct / wrong / mixed for each group of `num_generations` consecutive rewards (the order TRL
    generates them in). A reward counts as right at >= threshold; NaN (unscorable) counts as wrong.

    >>> group_kinds([1.0, 1.0, 0.0, 1.0, 0.0, float("nan")], 2)
    ['correct', 'mixed', 'wrong']
    """
    values = [float(r) for r in rewards]
    if len(values) % num_generations:
        raise ValueError(f"{len(values)} rewards are not whole groups of {num_generations}")
    kinds = []
    for start in range(0, len(values), num_generations):
        right = sum(1 for r in values[start: start + num_generations] if r >= threshold)  # NaN >= t is False
        kinds.append("correct" if right == num_generations else "wrong" if right == 0 else "mixed")
    return kinds


def select_groups(rounds: Sequence[Sequence[str]], capacity: int, keep_wrong: bool,
                  skip_wrong_rollouts: bool = False, final: bool = False) -> Selection:
    """The step's slots from the group kinds of each generation round so far (see the module doc).

    `final`: no further round comes, so open slots take dropped groups (in generation order) as
    fillers. Pure: the same kinds give the same selection on every process and in every test.
    """
    slots: list[Slot] = []
    dropped: list[tuple[int, int, str]] = []
    counts = dict.fromkeys(GROUP_KINDS, 0)
    surplus = 0
    for r, kinds in enumerate(rounds):
        for i, kind in enumerate(kinds):
            if kind not in counts:
                raise ValueError(f"unknown group kind {kind!r} (known: {', '.join(GROUP_KINDS)})")
            counts[kind] += 1
            keep = kind == "mixed" or (kind == "wrong" and keep_wrong)
            if not keep:
                dropped.append((r, i, kind))
            elif len(slots) < capacity:
                trained = not (kind == "wrong" and skip_wrong_rollouts)
                slots.append(Slot(r, i, kind, trained=trained, explained=True))
            else:
                surplus += 1
    fillers = 0
    if final:
        for r, i, kind in dropped[: capacity - len(slots)]:
            slots.append(Slot(r, i, kind, trained=False, explained=False))
            fillers += 1
    return Selection(slots=slots, missing=capacity - len(slots), counts=counts, dropped=len(dropped),
                     surplus=surplus, fillers=fillers)


# TRL loss types whose policy loss divides by the number of rollouts rather than by masked tokens.
PER_ROLLOUT_LOSSES = ("grpo", "sapo", "luspo", "dr_grpo")


def rollout_loss_scale(loss_type: str, rollouts: int, trained: int) -> float:
    """The factor that makes a per-rollout loss average over the `trained` of the step's `rollouts`
    (both counted over every process); 1 for the token-normalised loss types, and when nothing trains.

    >>> rollout_loss_scale("grpo", 8, 4), rollout_loss_scale("dapo", 8, 4), rollout_loss_scale("dr_grpo", 8, 0)
    (2.0, 1.0, 1.0)
    """
    if loss_type not in PER_ROLLOUT_LOSSES or trained <= 0:
        return 1.0
    return rollouts / trained


__all__ = ["GROUP_KINDS", "PER_ROLLOUT_LOSSES", "GroupFilter", "Slot", "Selection", "group_kinds",
           "rollout_loss_scale", "select_groups"]
