"""The explain and evaluate stages in two processes (torchrun, gloo) against one: each process
samples its share of the questions (tests/ddp_generation_worker.py counts them), the main process
writes the stage's files, and the greedy results are those of a one-process run.

Sampled evaluation answers (temperature > 0) depend on which process drew them, so those are
compared by shape; the explanations (greedy here) and the greedy answers must match exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expo.io import read_json, read_jsonl, write_jsonl
from trainkit import make_folders, rows, run_torchrun

QUESTIONS = 5  # odd: the processes' shares differ in size (3 and 2)


def _run(root: Path, processes: int) -> Path:
    out = root / f"processes-{processes}"
    run_torchrun("ddp_generation_worker.py", root, out, processes=processes, timeout=500)
    return out


def _greedy(samples: list[dict]) -> list[tuple[str, str]]:
    return [(s["id"], s["text"]) for s in samples if s["kind"] == "greedy"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_explain_and_evaluate_split_over_two_processes_as_one(tmp_path: Path) -> None:
    make_folders(tmp_path, n=QUESTIONS)
    write_jsonl(tmp_path / "data" / "eval.jsonl", rows(QUESTIONS))
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)

    # every generate call sampled a share: 3 and 2 of the 5 questions (explain, then evaluate's
    # sampled and greedy calls), against all 5 in one process
    assert read_json(one / "sampled-rank0.json") == [QUESTIONS] * 3
    assert read_json(two / "sampled-rank0.json") == [3] * 3 and read_json(two / "sampled-rank1.json") == [2] * 3

    explained = {n: read_jsonl(out / "explanations" / "explanations.jsonl") for n, out in ((1, one), (2, two))}
    assert [r["id"] for r in explained[2]] == [f"q{i}" for i in range(QUESTIONS)]
    assert explained[2] == explained[1]
    stats = {n: read_json(out / "explanations" / "stats.json") for n, out in ((1, one), (2, two))}
    for key in ("questions", "samples", "kept", "passed", "reject_reasons", "acceptance_rate", "by_level"):
        assert stats[2][key] == stats[1][key], key
    assert (two / "explanations" / "in_distribution.json").is_file()

    samples = {n: read_jsonl(out / "evaluation" / "samples.jsonl") for n, out in ((1, one), (2, two))}
    assert len(samples[2]) == len(samples[1]) == QUESTIONS * 3  # 2 sampled + 1 greedy per question
    assert _greedy(samples[2]) == _greedy(samples[1])
    metrics = {n: read_json(out / "evaluation" / "metrics.json") for n, out in ((1, one), (2, two))}
    assert metrics[2]["questions"] == QUESTIONS
    assert [q["greedy"] for q in metrics[2]["per_question"]] == [q["greedy"] for q in metrics[1]["per_question"]]
    cache = (two / "explanations" / "cache" / "explanations-cache.jsonl").read_text().splitlines()
    assert len(cache) == QUESTIONS  # one entry per question: the main process alone appends
