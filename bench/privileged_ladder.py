"""The privileged-information arms on the SmolLM2 ladder recipe (a real chat model on real word problems):
base, GRPO, ExP-GRPO, SDFT and ExP-GRPO + hints, level by level, with what each arm cost.

What: two `expo run`s of configs/smollm2-135m-ladder.yaml in one run folder, each timed by
`/usr/bin/time -v`. Run `arms` trains grpo, exp-grpo and sdft; run `hints` trains exp-grpo again with
train.hints on, and takes data, model, base evaluation and explanations from the first run's cache (so
both runs train from the same explanations and are scored against the same base evaluation). kfp.local
trains two arms at a time, each on half the cores; the hints run's one arm is pinned to half the cores
too (taskset), so every arm's seconds are on the same share of the machine. A run whose summary is
already saved in OUT (`<run>.summary.json`) is not run again.

Read from the runs' own files: every evaluation's per-question tallies (pass@1 and pass@k by level with
95 % intervals, the paired change against the base and against GRPO, the questions the base never
solved that an arm solved), each arm's metrics.jsonl (the steps' seconds, rollout tokens, the hints'
counts) and the stage times of summary.json. Prints a table, then one JSON line; `--write FILE` stores
the JSON (docs/results/privileged-ladder.json, rendered into docs/smollm2-recipes.md by
bench/results_pages.py).

Why: which member of the privileged-information family to run, asked of a real model rather than the
embedded task. Measure it alone on the machine: the seconds are part of the answer.

    .venv/bin/python bench/privileged_ladder.py --out /tmp/recipes/privileged-ladder \
        --write docs/results/privileged-ladder.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.recipe_numbers import commit_at, machine, time_log  # noqa: E402
from expo.arm_report import hint_totals  # noqa: E402
from expo.metrics import QuestionResult, aggregate, compare, level_key  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/smollm2-135m-ladder.yaml"
RUNS = {  # run -> `expo run` overrides
    "arms": ["--set", "train.arms=[grpo,exp-grpo,sdft]"],
    "hints": ["--set", "train.arms=[exp-grpo]", "--set", "train.hints=true"],
}
MODELS = (("base", "arms", "base"), ("grpo", "arms", "grpo"), ("exp-grpo", "arms", "exp-grpo"),
          ("sdft", "arms", "sdft"), ("exp-grpo + hints", "hints", "exp-grpo"))  # (shown, run, model in it)


def half_the_cores() -> list[str]:
    """`taskset` pinning a command to half of this process's cores: one arm's share in the arms run."""
    cores = sorted(os.sched_getaffinity(0))
    return ["taskset", "-c", ",".join(map(str, cores[:max(1, len(cores) // 2)]))]


def run_missing(out: Path) -> None:
    expo = Path(sys.executable).parent / "expo"
    for name, overrides in RUNS.items():
        if (out / f"{name}.summary.json").is_file():
            continue
        pin = half_the_cores() if name == "hints" else []
        cmd = ["/usr/bin/time", "-v", "-o", str(out / f"{name}.time"), *pin, str(expo), "run", "--config", CONFIG,
               *overrides, "--output", str(out / "run")]
        (out / f"{name}.start").write_text(datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") + "\n")
        with open(out / f"{name}.log", "w") as log:
            if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"privileged_ladder: run {name} failed; its output: {out / f'{name}.log'}")
        shutil.copy(out / "run" / "summary.json", out / f"{name}.summary.json")


def _stage(summary: dict[str, Any], label: str) -> dict[str, Any]:
    for stage in summary["stages"]:
        if stage["label"] == label:
            return stage
    raise SystemExit(f"privileged_ladder: no stage {label!r} in the run's summary")


def _per_question(summary: dict[str, Any], model: str) -> list[QuestionResult]:
    stage = _stage(summary, f"evaluate {model}")
    metrics = json.loads((Path(stage["outputs"]["results"]) / "metrics.json").read_text())
    return [QuestionResult.from_dict(d) for d in metrics["per_question"]]


def _steps(summary: dict[str, Any], arm: str) -> list[dict[str, Any]]:
    folder = Path(_stage(summary, f"train {arm}")["outputs"]["trained"])
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _interval(s: dict[str, Any], key: str = "1") -> list[float]:
    cell = s["pass@k"][key]
    return [round(100 * cell["mean"], 1), round(100 * cell["lo"], 1), round(100 * cell["hi"], 1)]


def _delta(d: dict[str, Any]) -> list[float]:
    cell = d["pass@1"]["delta"]
    return [round(100 * cell["mean"], 1), round(100 * cell["lo"], 1), round(100 * cell["hi"], 1)]


def measure(out: Path) -> dict[str, Any]:
    summaries = {name: json.loads((out / f"{name}.summary.json").read_text()) for name in RUNS}
    results = {shown: _per_question(summaries[run], model) for shown, run, model in MODELS}
    hints_base = _per_question(summaries["hints"], "base")
    if [r.to_dict() for r in hints_base] != [r.to_dict() for r in results["base"]]:
        raise SystemExit("privileged_ladder: the hints run evaluated a different base; both runs must share "
                         "one run folder (--out) so the second takes the first's stages from cache")
    k = min(r.n for r in results["base"])
    tables = {shown: aggregate(rs) for shown, rs in results.items()}
    levels = list(tables["base"]["by_level"])
    never = {r.id for r in results["base"] if r.c == 0}
    models: dict[str, Any] = {}
    for shown, run, model in MODELS:
        t = tables[shown]
        row: dict[str, Any] = {
            "pass@1": {lv: _interval(t["by_level"][lv]) for lv in levels},
            "overall": {"pass@1": _interval(t["overall"]), f"pass@{k}": _interval(t["overall"], str(k))},
        }
        if shown != "base":
            vs_base, vs_grpo = compare(results["base"], results[shown]), compare(results["grpo"], results[shown])
            row["vs_base"] = {"overall": _delta(vs_base["overall"]),
                              **{lv: _delta(vs_base["by_level"][lv]) for lv in levels}}
            if shown != "grpo":
                row["vs_grpo"] = {"overall": _delta(vs_grpo["overall"]),
                                  **{lv: _delta(vs_grpo["by_level"][lv]) for lv in levels}}
            solved = [r for r in results[shown] if r.id in never and r.c > 0]
            row["newly_solved"] = {lv: sum(level_key(r.level) == lv for r in solved) for lv in levels}
            steps = _steps(summaries[run], model)
            row["cost"] = {
                "train_stage_s": round(_stage(summaries[run], f"train {model}")["seconds"], 1),
                "steps_s": round(sum(s.get("time/step", 0.0) for s in steps), 1),
                "eval_stage_s": round(_stage(summaries[run], f"evaluate {model}")["seconds"], 1),
                "rollout_tokens": next((int(s["num_tokens"]) for s in reversed(steps) if "num_tokens" in s), None),
            }
            hints = hint_totals(steps)
            if hints is not None:
                row["hints"] = hints
        models[shown] = row
    commits = {name: commit_at((out / f"{name}.start").read_text().strip()) for name in RUNS}
    never_by_level = {lv: sum(level_key(r.level) == lv for r in results["base"] if r.id in never) for lv in levels}
    return {
        "command": ".venv/bin/python bench/privileged_ladder.py --out /tmp/recipes/privileged-ladder "
                   "--write docs/results/privileged-ladder.json",
        "runs": {name: f".venv/bin/expo run --config {CONFIG} " + " ".join(
            f"'{o}'" if "[" in o else o for o in overrides) for name, overrides in RUNS.items()},
        "commit": commits["arms"], "run_commits": commits,
        "machine": machine(), "k": k, "levels": levels,
        "questions_per_level": {lv: t["questions"] for lv, t in tables["base"]["by_level"].items()},
        "never_solved_by_base": never_by_level,
        "wall": {name: time_log(out / f"{name}.time") for name in RUNS},
        "models": models,
    }


def print_table(n: dict[str, Any]) -> None:
    levels, k = n["levels"], n["k"]
    print(f"pass@1 (%) by level, overall pass@1 / pass@{k}; change in pass@1 points against base and GRPO")
    print(f"{'model':<18}" + "".join(f"{'L' + lv:>8}" for lv in levels) + f"{'all':>14}{'vs base':>9}{'vs GRPO':>9}"
          f"{'train s':>9}{'tokens':>9}")
    for shown, m in n["models"].items():
        cells = "".join(f"{m['pass@1'][lv][0]:8.1f}" for lv in levels)
        overall = f"{m['overall']['pass@1'][0]:.1f} / {m['overall'][f'pass@{k}'][0]:.1f}"
        vs_base = f"{m['vs_base']['overall'][0]:+.1f}" if "vs_base" in m else ""
        vs_grpo = f"{m['vs_grpo']['overall'][0]:+.1f}" if "vs_grpo" in m else ""
        cost = m.get("cost", {})
        print(f"{shown:<18}{cells}{overall:>14}{vs_base:>9}{vs_grpo:>9}{cost.get('train_stage_s', ''):>9}"
              f"{cost.get('rollout_tokens') or '':>9}")
    print("wall per run: " + ", ".join(f"{name} {w['wall_s']} s" for name, w in n["wall"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="work folder (saved runs found there are reused)")
    parser.add_argument("--write", type=Path, help="also store the JSON in this file")
    parser.add_argument("--table-only", action="store_true", help="read the saved runs; run nothing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_missing(args.out)
    numbers = measure(args.out)
    print_table(numbers)
    if args.write:
        args.write.write_text(json.dumps(numbers, indent=1) + "\n")
    print(json.dumps(numbers))


if __name__ == "__main__":
    main()
