"""Dynamic sampling's selection (expo.train.group_filter), by hand on fixed batches."""

from __future__ import annotations

import pytest

from expo.train.group_filter import Slot, group_kinds, rollout_loss_scale, select_groups

NAN = float("nan")


@pytest.mark.parametrize("rewards,G,want", [
    ([1, 1, 1, 1], 4, ["correct"]),
    ([0, 0, 0, 0], 4, ["wrong"]),
    ([0, 1, 0, 0], 4, ["mixed"]),
    ([1, 1, 0, 0, 0, 1], 2, ["correct", "wrong", "mixed"]),
    ([1, NAN, NAN, NAN], 2, ["mixed", "wrong"]),  # unscorable counts as wrong
    ([0.49, 0.5], 2, ["mixed"]),  # right at >= 0.5
])
def test_group_kinds(rewards: list[float], G: int, want: list[str]) -> None:
    assert group_kinds(rewards, G) == want


def test_group_kinds_refuses_partial_groups() -> None:
    with pytest.raises(ValueError, match="whole groups of 4"):
        group_kinds([1, 0, 0], 4)


# One step of 4 slots. Round 1 (the step's own prompts): correct, wrong, mixed, correct. Round 2 (the
# refill of what round 1 left open): mixed, wrong, correct.
ROUND1 = ["correct", "wrong", "mixed", "correct"]
ROUND2 = ["mixed", "wrong", "correct"]


@pytest.mark.parametrize("rounds,keep_wrong,skip,final,slots,missing,dropped,surplus,fillers", [
    # ExP-GRPO after round 1: wrong and mixed kept (slots 0, 1), the two correct groups dropped: 2 open.
    ([ROUND1], True, False, False,
     [Slot(0, 1, "wrong", True, True), Slot(0, 2, "mixed", True, True)], 2, 2, 0, 0),
    # ... after round 2: its mixed and wrong groups fill the two open slots; its correct group dropped.
    ([ROUND1, ROUND2], True, False, False,
     [Slot(0, 1, "wrong", True, True), Slot(0, 2, "mixed", True, True),
      Slot(1, 0, "mixed", True, True), Slot(1, 1, "wrong", True, True)], 0, 3, 0, 0),
    # skip_wrong_rollouts: the wrong groups keep their slot and their NLL term, not their rollouts' loss.
    ([ROUND1, ROUND2], True, True, False,
     [Slot(0, 1, "wrong", False, True), Slot(0, 2, "mixed", True, True),
      Slot(1, 0, "mixed", True, True), Slot(1, 1, "wrong", False, True)], 0, 3, 0, 0),
    # Plain GRPO (no NLL term) drops wrong groups too, as DAPO does: round 1 keeps only its mixed group.
    ([ROUND1], False, False, False, [Slot(0, 2, "mixed", True, True)], 3, 3, 0, 0),
    # ... round 2 adds one mixed group; the last round: the 2 open slots take the first dropped groups
    # (round 1's correct group 0 and wrong group 1) as fillers, with no loss and no NLL term.
    ([ROUND1, ROUND2], False, False, True,
     [Slot(0, 2, "mixed", True, True), Slot(1, 0, "mixed", True, True),
      Slot(0, 0, "correct", False, False), Slot(0, 1, "wrong", False, False)], 0, 5, 0, 2),
    # More kept groups than slots: the late ones are surplus.
    ([["mixed", "mixed"], ["wrong", "mixed"]], True, False, True,
     [Slot(0, 0, "mixed", True, True), Slot(0, 1, "mixed", True, True)], 0, 0, 2, 0),
])
def test_select_groups_by_hand(rounds: list[list[str]], keep_wrong: bool, skip: bool, final: bool,
                               slots: list[Slot], missing: int, dropped: int, surplus: int,
                               fillers: int) -> None:
    capacity = len(rounds[0])
    sel = select_groups(rounds, capacity, keep_wrong, skip, final)
    assert sel.slots == slots
    assert (sel.missing, sel.dropped, sel.surplus, sel.fillers) == (missing, dropped, surplus, fillers)
    assert sum(sel.counts.values()) == sum(len(r) for r in rounds)


def test_counts_by_kind_over_rounds() -> None:
    sel = select_groups([ROUND1, ROUND2], 4, keep_wrong=True)
    assert sel.counts == {"correct": 3, "wrong": 2, "mixed": 2}


def test_final_selection_always_fills_every_slot() -> None:
    """Round 1 has `capacity` groups, so the dropped ones always suffice as fillers."""
    for kinds in (["correct"] * 4, ["wrong"] * 4, ["mixed", "correct", "correct", "wrong"]):
        for keep_wrong in (True, False):
            sel = select_groups([kinds], 4, keep_wrong, final=True)
            assert len(sel.slots) == 4 and sel.missing == 0


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown group kind 'half'"):
        select_groups([["half"]], 1, keep_wrong=True)


@pytest.mark.parametrize("loss_type,rollouts,trained,want", [
    ("grpo", 8, 4, 2.0),  # a mean over rollouts: over the 4 trained, not the 8 rows
    ("dr_grpo", 16, 12, 16 / 12),  # rollouts x max_completion_length: the trained rollouts'
    ("sapo", 8, 8, 1.0),  # every slot trained
    ("luspo", 8, 2, 4.0),
    ("dapo", 8, 4, 1.0),  # token-normalised: masked tokens never counted
    ("bnpo", 8, 4, 1.0),
    ("grpo", 8, 0, 1.0),  # nothing trains: the loss is 0 whatever the factor
])
def test_rollout_loss_scale(loss_type: str, rollouts: int, trained: int, want: float) -> None:
    assert rollout_loss_scale(loss_type, rollouts, trained) == pytest.approx(want)
