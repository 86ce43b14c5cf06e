"""The privileged-information family on the embedded task, several seeds: base, GRPO, ExP-GRPO, SDFT and
ExP-GRPO + hints, level by level, through the real stages (bench/toy_sweep.py).

What: for each seed, two toy_sweep runs on one warm model (data, warm-up, base evaluation and
explanations are shared): tag `arms` trains grpo, exp-grpo and sdft; tag `hints` trains exp-grpo again
with train.hints on. Each run's output goes to OUT/s<seed>-<tag>.log (its last line is toy_sweep's JSON);
a run whose log already ends in that JSON is not run again. Prints the table of pass@1 by level (mean
and range over the seeds), the hardest level's pass@1 per seed, and each arm's training and evaluation
seconds, then one JSON line.

Why: the question a user asks first, which member of the family to run, answered on one task with one
verifier and one budget (docs/concepts.md shows the result).

    nice .venv/bin/python bench/privileged_sweep.py --seeds 0 1 2 --out /tmp/privsweep \
        --write docs/results/privileged-embedded.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

RUNS = {  # tag -> toy_sweep overrides
    "arms": ["--set", "train.arms=[grpo,exp-grpo,sdft]"],
    # The embedded task's solutions open with the answer ("179:yes \\boxed{179}"): no prefix of one is a
    # hint, so there the policy writes the hints.
    "hints": ["--set", "train.arms=[exp-grpo]", "--set", "train.hints=true", "--set", "train.hint_source=model"],
}
ROWS = (("base", "arms", "base"), ("grpo", "arms", "grpo"), ("exp-grpo", "arms", "exp-grpo"),
        ("sdft", "arms", "sdft"), ("exp-grpo + hints", "hints", "exp-grpo"))  # (shown, tag, model)


def last_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def run_missing(seeds: list[int], out: Path, threads: int) -> None:
    here = Path(__file__).resolve().parent
    for seed in seeds:
        for tag, overrides in RUNS.items():
            log = out / f"s{seed}-{tag}.log"
            if last_json(log) is not None:
                continue
            cmd = [sys.executable, str(here / "toy_sweep.py"), "--seed", str(seed), "--out", str(out / f"s{seed}"),
                   "--tag", tag, "--threads", str(threads), *overrides]
            with open(log, "w") as fh:
                subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True, cwd=here.parent)


def table(seeds: list[int], out: Path) -> dict[str, Any]:
    reports = {(s, tag): last_json(out / f"s{s}-{tag}.log") for s in seeds for tag in RUNS}
    missing = [f"s{s}-{tag}" for (s, tag), r in reports.items() if r is None]
    if missing:
        raise SystemExit(f"privileged_sweep: no result yet for {', '.join(missing)} under {out}")
    levels = sorted(reports[(seeds[0], "arms")]["results"]["base"], key=int)
    pass1: dict[str, dict[str, list[float]]] = {}
    for shown, tag, model in ROWS:
        pass1[shown] = {lv: [reports[(s, tag)]["results"][model][lv][0] for s in seeds] for lv in levels}
    seconds: dict[str, dict[str, list[float]]] = {}
    for shown, tag, model in ROWS[1:]:
        seconds[shown] = {kind: [reports[(s, tag)]["timings_s"][f"{kind}_{model}"] for s in seeds]
                          for kind in ("train", "eval")}
    return {"seeds": seeds, "levels": levels, "pass@1": pass1, "seconds": seconds,
            "hints": {str(s): hint_counts(out / f"s{s}" / "hints" / "exp-grpo" / "metrics.jsonl") for s in seeds},
            "k": reports[(seeds[0], "arms")]["k"],
            "questions_per_level": reports[(seeds[0], "arms")]["questions_per_level"]}


def hint_counts(steps_file: Path) -> dict[str, int]:
    """The hints run's counts over its steps (the hints/* keys of the arm's metrics.jsonl)."""
    from expo.arm_report import hint_totals

    steps = [json.loads(line) for line in steps_file.read_text().splitlines() if line.strip()]
    totals = hint_totals(steps) or dict.fromkeys(("groups", "solved_groups", "no_hint", "questions", "rescued"), 0)
    return {"hinted_groups": totals["groups"], "hinted_groups_with_a_right_rollout": totals["solved_groups"],
            "no_usable_hint": totals["no_hint"], "questions_hinted": totals["questions"],
            "questions_rescued": totals["rescued"]}


def print_table(result: dict[str, Any]) -> None:
    levels, hardest = result["levels"], result["levels"][-1]
    print(f"pass@1 (%) by level, mean [min-max] over seeds {result['seeds']} "
          f"({result['questions_per_level']} questions per level, {result['k']} samples each)")
    print(f"{'model':<18}" + "".join(f"{'L' + lv:>20}" for lv in levels))
    for shown, by_level in result["pass@1"].items():
        cells = [f"{statistics.mean(v):5.1f} [{min(v):4.1f}-{max(v):4.1f}]" for v in by_level.values()]
        print(f"{shown:<18}" + "".join(f"{c:>20}" for c in cells))
    print(f"level {hardest} pass@1 per seed:")
    for shown, by_level in result["pass@1"].items():
        print(f"  {shown:<18} " + " ".join(f"{v:5.1f}" for v in by_level[hardest]))
    print("seconds per seed (train / evaluate):")
    for shown, kinds in result["seconds"].items():
        print(f"  {shown:<18} " + " ".join(f"{t:6.0f}/{e:4.0f}" for t, e in zip(kinds["train"], kinds["eval"])))


if __name__ == "__main__":  # toy_sweep's verifier pool needs the guard in its own process; this one too
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", required=True, type=Path, help="work folder (runs found there are reused)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--table-only", action="store_true", help="print what the logs hold; run nothing")
    parser.add_argument("--write", type=Path, help="also store the JSON, with command, commit and machine "
                                                   "(docs/results/privileged-embedded.json)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_missing(args.seeds, args.out, args.threads)
    result = table(args.seeds, args.out)
    print_table(result)
    if args.write:
        from recipe_numbers import machine

        commit = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        seeds = " ".join(map(str, args.seeds))
        result = {"command": f"nice .venv/bin/python bench/privileged_sweep.py --seeds {seeds} --out {args.out}",
                  "commit": commit, "machine": f"{machine()}; torch threads {args.threads}",
                  "source": "bench/privileged_sweep.py (bench/toy_sweep.py per seed and tag)", **result}
        args.write.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
