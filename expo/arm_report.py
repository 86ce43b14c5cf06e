"""The report's sections that compare the arms with each other: which questions each arm solved that the
base model never did, what each arm cost, and what hints did (expo.report builds the page).

A user choosing among the privileged-information methods (ExP-GRPO, SDFT, hints, ...) asks which one
learns what the base model cannot, and at what price. The answers come from files every run already
writes: the per-question tallies of each evaluation (`per_question` of metrics.json) and each arm's
metrics.jsonl.

- Newly solved: a question no base sample solved and at least one of the arm's samples did, by level.
- Cost: the arm's training wall time (the sum of its steps' `time/step`: rollouts, scoring and updates;
  loading and saving the model are the stage's) and the tokens its rollouts processed (TRL's running
  `num_tokens`, prompt and completion tokens of every rollout, hinted ones included).
- Hints (train.hints): hinted groups, those with a right rollout, questions hinted, and questions
  rescued (hinted, and later solved by a rollout without a hint).
"""

from __future__ import annotations

from typing import Any

from expo.metrics import QuestionResult, level_key, sorted_levels
from expo.blocks import Block, Table

NEWLY_SOLVED_SOURCE = "Source: the per-question tallies (per_question) of each evaluate step's metrics.json."
COST_SOURCE = "Source: each arm's metrics.jsonl: the sum of time/step and the last num_tokens."
MAX_IDS = 8  # question ids listed per row; the count says how many there are


def _results(m: dict[str, Any]) -> dict[str, QuestionResult]:
    return {str(d["id"]): QuestionResult.from_dict(d) for d in m.get("per_question") or []}


def newly_solved_section(evaluations: dict[str, dict[str, Any]], base: str = "base") -> list[Block]:
    """Per arm and level: the questions no base sample solved and the arm did."""
    if base not in evaluations or not evaluations[base].get("per_question"):
        return []
    before = _results(evaluations[base])
    never = {qid for qid, r in before.items() if r.c == 0}
    rows = []
    for name, m in evaluations.items():
        if name == base or not m.get("per_question"):
            continue
        solved = {qid: r for qid, r in _results(m).items() if qid in never and r.c > 0}
        by_level: dict[str, list[str]] = {}
        for qid, r in solved.items():
            by_level.setdefault(level_key(r.level), []).append(qid)
        unsolved_by_level: dict[str, int] = {}
        for qid in never:
            key = level_key(before[qid].level)
            unsolved_by_level[key] = unsolved_by_level.get(key, 0) + 1
        for level in ["all", *sorted_levels(unsolved_by_level)]:
            ids = sorted(solved) if level == "all" else sorted(by_level.get(level, []))
            of = len(never) if level == "all" else unsolved_by_level[level]
            shown = ", ".join(ids[:MAX_IDS]) + (" ..." if len(ids) > MAX_IDS else "")
            rows.append([name, level, f"{len(ids)} of {of}", shown])
    if not rows:
        return []
    return [("h2", f"Questions {base} never solved"),
            ("p", f"Questions on which no sample of {base} was right, and how many of them each arm solved "
                  "at least once (first solved after training)."),
            ("p", NEWLY_SOLVED_SOURCE),
            ("table", Table("newly_solved", ["model", "level", f"solved of those {base} never solved",
                                             "questions"], rows))]


def cost_section(training: dict[str, list[dict[str, Any]]]) -> list[Block]:
    """Per arm that logged them: steps, training wall time and rollout tokens."""
    rows = []
    for arm, steps in training.items():
        if not steps:
            continue
        timed = [s["time/step"] for s in steps if isinstance(s.get("time/step"), (int, float))]
        tokens = next((s["num_tokens"] for s in reversed(steps) if isinstance(s.get("num_tokens"), (int, float))),
                      None)
        if not timed and tokens is None:
            continue  # an arm that logged neither: nothing to say
        seconds = sum(timed)
        rows.append([arm, str(len(steps)), f"{seconds:.1f}", "n/a" if tokens is None else f"{int(tokens):,}"])
    if not rows:
        return []
    return [("h2", "Cost per arm"),
            ("p", "Training wall time (the steps: rollouts, scoring, updates) and the prompt and completion "
                  "tokens of every rollout (n/a: an arm whose trainer does not count them)."),
            ("p", COST_SOURCE),
            ("table", Table("cost", ["arm", "steps", "train seconds", "rollout tokens"], rows))]


def hint_totals(steps: list[dict[str, Any]]) -> dict[str, int] | None:
    """An arm's hints over its steps (None when it ran without train.hints): groups hinted, of them with a
    right rollout (solved_groups), groups without a usable hint (no_hint), each summed; the running
    counts of questions hinted and rescued, as of the last step."""
    hinted = [s for s in steps if isinstance(s.get("hints/groups"), (int, float))]
    if not hinted:
        return None
    totals = {key: round(sum(s.get(f"hints/{key}", 0) for s in hinted)) for key in ("groups", "solved_groups",
                                                                                  "no_hint")}
    return {**totals, "questions": round(hinted[-1].get("hints/questions", 0)),
            "rescued": round(hinted[-1].get("hints/rescued", 0))}


def hints_section(training: dict[str, list[dict[str, Any]]]) -> list[Block]:
    """Per arm that ran with train.hints: hinted groups, solved hinted groups, questions hinted, rescued."""
    rows = []
    for arm, steps in training.items():
        totals = hint_totals(steps)
        if totals is not None:
            rows.append([arm, *(str(totals[key]) for key in ("groups", "solved_groups", "no_hint", "questions",
                                                            "rescued"))])
    if not rows:
        return []
    return [("h2", "Hints for collapsed groups"),
            ("p", "Groups whose rollouts were all wrong and whose question had no accepted explanation, rolled "
                  "out again with a hint (train.hints): how many, how many then had a right rollout, how many "
                  "found no usable hint, the questions hinted and those rescued (hinted, then solved by a "
                  "rollout without a hint)."),
            ("p", "Source: the hints/* keys of each arm's metrics.jsonl."),
            ("table", Table("hints", ["arm", "hinted groups", "with a right rollout", "no usable hint",
                                      "questions hinted", "questions rescued"], rows))]


def arm_blocks(evaluations: dict[str, dict[str, Any]], training: dict[str, list[dict[str, Any]]]) -> list[Block]:
    return newly_solved_section(evaluations) + cost_section(training) + hints_section(training)


__all__ = ["arm_blocks", "cost_section", "hint_totals", "hints_section", "newly_solved_section"]
