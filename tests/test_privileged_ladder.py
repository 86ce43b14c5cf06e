"""bench/privileged_ladder.py reads two saved `expo run`s (arms, hints) from one work folder: each figure it
reports is checked here against numbers worked out by hand from a tiny synthetic folder (2 levels x 2
questions, 4 samples each), and the results page renders what it measures."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from benchkit import load_bench

ladder = load_bench("privileged_ladder")
pages = load_bench("results_pages")

QUESTIONS = (("q1a", 1), ("q1b", 1), ("q2a", 2), ("q2b", 2))  # (id, level)
# Correct samples of 4 per question, in QUESTIONS' order. Every overall sum is even, so no figure falls on
# a rounding tie. The arms run's exp-grpo differs from the hints run's, which the ladder must report.
BASE = (3, 0, 1, 0)  # q1b and q2b: never solved by the base
ARMS = {"grpo": (4, 0, 2, 0), "exp-grpo": (4, 2, 2, 0), "sdft": (2, 0, 1, 1)}
HINTED = (4, 1, 3, 2)


def _evaluation(folder: Path, correct: tuple[int, ...]) -> dict[str, Any]:
    folder.mkdir(parents=True)
    per_question = [{"id": qid, "level": level, "n": 4, "c": c, "greedy": c > 2, "tokens": [10, 12, 14, 16],
                     "truncated": 0} for (qid, level), c in zip(QUESTIONS, correct)]
    (folder / "metrics.json").write_text(json.dumps({"per_question": per_question}))
    return {"results": str(folder)}


def _training(folder: Path, steps: list[dict[str, Any]]) -> dict[str, Any]:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps) + "\n")
    return {"trained": str(folder)}


def _summary(run: Path, evaluations: dict[str, tuple[int, ...]],
             trainings: dict[str, tuple[float, list[dict[str, Any]]]],
             eval_seconds: dict[str, float]) -> dict[str, Any]:
    stages = [{"label": f"train {arm}", "seconds": seconds, "outputs": _training(run / "train" / arm, steps)}
              for arm, (seconds, steps) in trainings.items()]
    stages += [{"label": f"evaluate {model}", "seconds": eval_seconds[model],
                "outputs": _evaluation(run / "evaluate" / model, correct)}
               for model, correct in evaluations.items()]
    return {"stages": stages}


def _time_log(wall: str, rss_kb: int) -> str:
    return ("\tCommand being timed: \"expo run\"\n"
            f"\tElapsed (wall clock) time (h:mm:ss or m:ss): {wall}\n"
            f"\tMaximum resident set size (kbytes): {rss_kb}\n\tExit status: 0\n")


def _work_folder(out: Path, hints_base: tuple[int, ...] = BASE) -> Path:
    arms_steps = {
        # the last line is the trainer's closing summary: no tokens, no step time
        "grpo": (120.34, [{"time/step": 1.2, "num_tokens": 100}, {"time/step": 2.5, "num_tokens": 250},
                          {"time/step": 3.1, "num_tokens": 400}, {"train_runtime": 7.0}]),
        "exp-grpo": (150.06, [{"time/step": 4.0, "num_tokens": 300}, {"time/step": 4.5, "num_tokens": 640}]),
        "sdft": (90.0, [{"time/step": 2.0}, {"time/step": 2.25}]),  # no rollout tokens logged
    }
    arms = _summary(out / "arms-run", {"base": BASE, **ARMS}, arms_steps,
                    {"base": 10.0, "grpo": 11.11, "exp-grpo": 12.0, "sdft": 13.0})
    hint_steps = [
        {"time/step": 5.0, "num_tokens": 500},  # a step before any group collapsed: no hints keys
        {"time/step": 6.0, "num_tokens": 1100, "hints/groups": 2, "hints/solved_groups": 1,
         "hints/no_hint": 0, "hints/questions": 2, "hints/rescued": 0},
        {"time/step": 7.0, "num_tokens": 1800, "hints/groups": 3, "hints/solved_groups": 2,
         "hints/no_hint": 1, "hints/questions": 4, "hints/rescued": 1},
    ]
    # the hints run's base comes from the arms run's cache: the same tallies in its own summary
    hints = _summary(out / "hints-run", {"base": hints_base, "exp-grpo": HINTED},
                     {"exp-grpo": (200.0, hint_steps)}, {"base": 10.0, "exp-grpo": 14.0})
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, summary, wall, rss in (("arms", arms, "1:02:03.5", 2097152),
                                     ("hints", hints, "12:30.4", 1572864)):
        (out / f"{name}.summary.json").write_text(json.dumps(summary))
        (out / f"{name}.start").write_text(now + "\n")
        (out / f"{name}.time").write_text(_time_log(wall, rss))
    return out


def test_measure_reports_the_hand_computed_ladder(tmp_path):
    n = ladder.measure(_work_folder(tmp_path))
    assert n["k"] == 4 and n["levels"] == ["1", "2"]
    assert n["questions_per_level"] == {"1": 2, "2": 2}
    assert n["never_solved_by_base"] == {"1": 1, "2": 1}
    models = n["models"]
    assert list(models) == ["base", "grpo", "exp-grpo", "sdft", "exp-grpo + hints"]

    # pass@1 in % by level and overall: sum of c / (4 samples x questions)
    pass1 = {shown: ([m["pass@1"][lv][0] for lv in ("1", "2")], m["overall"]["pass@1"][0])
             for shown, m in models.items()}
    assert pass1 == {"base": ([37.5, 12.5], 25.0), "grpo": ([50.0, 25.0], 37.5),
                     "exp-grpo": ([75.0, 25.0], 50.0), "sdft": ([25.0, 25.0], 25.0),
                     "exp-grpo + hints": ([62.5, 62.5], 62.5)}
    # base level 1: per-question 0.75 and 0, sd 0.53, half width 1.96 * 0.375 clipped to [0, 1]
    assert models["base"]["pass@1"]["1"] == [37.5, 0.0, 100.0]
    for m in models.values():
        for lo_mean_hi in [*m["pass@1"].values(), m["overall"]["pass@1"]]:
            assert lo_mean_hi[1] <= lo_mean_hi[0] <= lo_mean_hi[2]
    # pass@4: the share of questions with any correct sample
    assert models["base"]["overall"]["pass@4"][0] == 50.0
    assert models["exp-grpo + hints"]["overall"]["pass@4"][0] == 100.0

    # paired change of pass@1 in points: sum of per-question changes in c / 16
    assert "vs_base" not in models["base"] and "vs_grpo" not in models["grpo"]
    assert {s: m["vs_base"]["overall"][0] for s, m in models.items() if s != "base"} == {
        "grpo": 12.5, "exp-grpo": 25.0, "sdft": 0.0, "exp-grpo + hints": 37.5}
    assert {s: m["vs_grpo"]["overall"][0] for s, m in models.items() if "vs_grpo" in m} == {
        "exp-grpo": 12.5, "sdft": -12.5, "exp-grpo + hints": 25.0}
    assert [models["exp-grpo"]["vs_base"][lv][0] for lv in ("1", "2")] == [37.5, 12.5]
    assert [models["sdft"]["vs_grpo"][lv][0] for lv in ("1", "2")] == [-25.0, 0.0]

    # q1b and q2b: c == 0 for the base, c > 0 after training
    assert {s: m["newly_solved"] for s, m in models.items() if s != "base"} == {
        "grpo": {"1": 0, "2": 0}, "exp-grpo": {"1": 1, "2": 0}, "sdft": {"1": 0, "2": 1},
        "exp-grpo + hints": {"1": 1, "2": 1}}

    assert "cost" not in models["base"]
    assert models["grpo"]["cost"] == {"train_stage_s": 120.3, "steps_s": 6.8, "eval_stage_s": 11.1,
                                      "rollout_tokens": 400}
    assert models["exp-grpo"]["cost"] == {"train_stage_s": 150.1, "steps_s": 8.5, "eval_stage_s": 12.0,
                                          "rollout_tokens": 640}
    assert models["sdft"]["cost"]["rollout_tokens"] is None
    # the hinted arm: the hints run's exp-grpo, not the arms run's
    hinted = models["exp-grpo + hints"]
    assert hinted["cost"] == {"train_stage_s": 200.0, "steps_s": 18.0, "eval_stage_s": 14.0,
                              "rollout_tokens": 1800}
    assert hinted["hints"] == {"groups": 5, "solved_groups": 3, "no_hint": 1, "questions": 4, "rescued": 1}
    assert all("hints" not in m for s, m in models.items() if s != "exp-grpo + hints")

    # 1:02:03.5 -> 3723.5 s, 2097152 kB -> 2.0 GiB; 12:30.4 -> 750.4 s, 1572864 kB -> 1.5 GiB
    assert n["wall"] == {"arms": {"wall_s": 3723.5, "peak_rss_gb": 2.0},
                         "hints": {"wall_s": 750.4, "peak_rss_gb": 1.5}}
    assert re.fullmatch(r"[0-9a-f]{7}", n["commit"]) and n["run_commits"] == {"arms": n["commit"],
                                                                              "hints": n["commit"]}
    assert set(n["runs"]) == {"arms", "hints"} and "train.hints=true" in n["runs"]["hints"]
    json.dumps(n)  # --write stores it as JSON

    lines = pages.privileged_ladder(n)
    rows = [line for line in lines if line.startswith("| ExP-GRPO + hints |")]
    assert len(rows) == 2, rows  # the pass@1 table and the cost table
    assert "62.5 [" in rows[0] and "+37.5 [" in rows[0] and "+25.0 [" in rows[0]
    assert rows[1].startswith("| ExP-GRPO + hints | 1 | 1 | 200.0 | 18.0 | 14.0 | 1,800 |")
    assert any(line.startswith("| SDFT |") and line.endswith("| n/a |") for line in lines)
    assert ("Hints (ExP-GRPO + hints): 5 collapsed groups rolled out again with a hint, 3 of them with a "
            "right rollout; 1 more found no usable hint; 4 questions hinted, 1 rescued") in "\n".join(lines)
    assert "62 min 4 s wall" in "\n".join(lines)


def test_measure_refuses_a_hints_run_scored_against_another_base(tmp_path):
    out = _work_folder(tmp_path, hints_base=(3, 0, 2, 0))
    with pytest.raises(SystemExit, match="share one run folder"):
        ladder.measure(out)
