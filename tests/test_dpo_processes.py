"""ExP-DPO with two processes on this CPU (torchrun, gloo): each samples its share of the questions,
and both build the same pairs.

tests/ddp_dpo_worker.py runs the processes and records, per process, the rows its sampler and its
explanation regenerator were given and the pairs it built; the same worker run alone is the reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expo.io import read_json
from trainkit import make_folders, run_torchrun

ROWS = 5  # odd: the processes' shares differ in size (3 and 2)
ROUNDS = 2  # round 0 samples solutions; round 1 regenerates explanations too


def _recorded(dump: Path, kind: str, rank: int) -> list:
    files = sorted(dump.glob(f"{kind}-rank{rank}-call*.json"), key=lambda p: int(p.stem.rsplit("call", 1)[1]))
    return [read_json(f) for f in files]


def _pair_view(pairs: list[dict]) -> list[tuple[str, str, str]]:
    """What a process's pairs must agree on with a one-process run: question, prompt, chosen side.
    (The rejected side is sampled text: seeded per generate call, so it depends on how rows are
    batched; the processes must agree on it with each other, not with a lone process.)"""
    return [(p["id"], p["prompt"], p["chosen"]) for p in pairs]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_sample_disjoint_shares_and_build_the_same_pairs(tmp_path: Path) -> None:
    from ddp_dpo_worker import run

    make_folders(tmp_path, n=ROWS)
    ids = [f"q{i}" for i in range(ROWS)]
    run_torchrun("ddp_dpo_worker.py", tmp_path, tmp_path / "two", tmp_path / "dump2", ROUNDS, timeout=800)

    dump = tmp_path / "dump2"
    solutions = {rank: _recorded(dump, "solutions", rank) for rank in (0, 1)}
    explanations = {rank: _recorded(dump, "explanations", rank) for rank in (0, 1)}
    for rank in (0, 1):
        # every round samples solutions of this process's share only; explanations from round 1 on
        assert solutions[rank] == [ids[rank::2]] * ROUNDS, rank
        assert explanations[rank] == [ids[rank::2]] * (ROUNDS - 1), rank
    pairs = {rank: _recorded(dump, "pairs", rank) for rank in (0, 1)}
    assert len(pairs[0]) == ROUNDS and pairs[0] == pairs[1]  # the same pairs, rejected text included
    for got in pairs[0]:
        assert [p["id"] for p in got] == ids  # every question: the random policy never boxes the answer
    assert all(p["chosen"].startswith("so \\boxed{") for p in pairs[0][1])  # round 1: everyone's regenerated
    two = read_json(tmp_path / "two" / "summary.json")
    assert two["steps"] == ROUNDS and [e["pairs"] for e in two["round_log"]] == [ROWS] * ROUNDS

    alone = run(tmp_path, tmp_path / "one", tmp_path / "dump1", ROUNDS)  # the same run in one process
    assert _recorded(tmp_path / "dump1", "solutions", 0) == [ids] * ROUNDS
    assert [_pair_view(got) for got in _recorded(tmp_path / "dump1", "pairs", 0)] == \
        [_pair_view(got) for got in pairs[0]]
    assert alone["round_log"] == two["round_log"]
