"""The report's arm comparisons (expo.arm_report, expo.report): changes against GRPO, the questions the
base model never solved, cost per arm and hints, on hand-made evaluations and metrics lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expo.arm_report import cost_section, hints_section, newly_solved_section
from expo.report import Table, delta_section, write_report


def evaluation(tallies: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """A metrics.json with per-question tallies {id: (level, correct of 4)}; the means are not read here."""
    per_question = [{"id": qid, "level": level, "n": 4, "c": c} for qid, (level, c) in tallies.items()]
    return {"samples": 4, "per_question": per_question,
            "overall": {"questions": len(tallies)}, "by_level": {}}


EVALS = {
    "base": evaluation({"a": (1, 4), "b": (5, 0), "c": (5, 0), "d": (4, 0)}),
    "grpo": evaluation({"a": (1, 4), "b": (5, 0), "c": (5, 0), "d": (4, 1)}),
    "sdft": evaluation({"a": (1, 3), "b": (5, 2), "c": (5, 0), "d": (4, 0)}),
}


def table(blocks: list[Any]) -> Table:
    return next(value for kind, value in blocks if kind == "table")


def test_questions_the_base_never_solved_by_arm_and_level() -> None:
    rows = table(newly_solved_section(EVALS)).rows
    assert ["grpo", "all", "1 of 3", "d"] in rows and ["grpo", "5", "0 of 2", ""] in rows
    assert ["sdft", "all", "1 of 3", "b"] in rows and ["sdft", "5", "1 of 2", "b"] in rows
    assert ["sdft", "4", "0 of 1", ""] in rows
    assert newly_solved_section({"sdft": EVALS["sdft"]}) == []  # no base model: nothing to compare


def test_every_arm_against_grpo_leaves_the_base_out() -> None:
    """sdft - grpo, paired by question: pass@1 (3/4 - 1) on a, (2/4 - 0) on b, 0 on c, (0 - 1/4) on d."""
    rows = table(delta_section(EVALS, against="grpo")).rows
    assert [r[0] for r in rows].count("base") == 0 and rows[0][:3] == ["sdft", "all", "4"]
    assert rows[0][3].startswith("+0.0 pts")  # (-0.25 + 0.5 + 0 - 0.25) / 4
    assert ["sdft", "5", "2", "+25.0 pts [-24.0, +74.0]"] == rows[-1][:4]  # (0.5 + 0) / 2 on level 5
    assert delta_section({"base": EVALS["base"], "grpo": EVALS["grpo"]}, against="grpo") == []


def test_cost_and_hints_per_arm() -> None:
    training = {
        "grpo": [{"step": 1, "time/step": 2.0, "num_tokens": 100.0, "hints/groups": 2.0, "hints/solved_groups": 1.0,
                  "hints/no_hint": 0.0, "hints/questions": 2.0, "hints/rescued": 0.0},
                 {"step": 2, "time/step": 3.5, "num_tokens": 250.0, "hints/groups": 1.0, "hints/solved_groups": 0.0,
                  "hints/no_hint": 1.0, "hints/questions": 3.0, "hints/rescued": 1.0}],
        "exp-dpo": [{"step": 1, "loss": 0.5, "time/step": 1.25}],
        "other": [{"step": 1, "loss": 0.5}],  # neither time nor tokens: left out
    }
    assert table(cost_section(training)).rows == [["grpo", "2", "5.5", "250"], ["exp-dpo", "1", "1.2", "n/a"]]
    assert table(hints_section(training)).rows == [["grpo", "3", "1", "1", "3", "1"]]
    assert hints_section({"exp-dpo": training["exp-dpo"]}) == []


def test_the_report_holds_the_comparisons(tmp_path: Path) -> None:
    training = {"sdft": [{"step": 1, "time/step": 1.0, "num_tokens": 10.0, "loss": 0.1}]}
    write_report(tmp_path, None, training=training)
    text = (tmp_path / "report.md").read_text()
    assert "## Cost per arm" in text and "Questions base never solved" not in text
