"""The embedded default's experiment through the real stages: does ExP-GRPO move the tiny model where GRPO cannot?

What: for one seed (data.seed = model.seed = train.seed = generation.seed = SEED) and the embedded
preset plus `--set` overrides, run the pipeline's own stage functions in this process:
prepare_data -> prepare_model (warm-up) -> evaluate_model (base) -> generate_explanations ->
train_arm (each of train.arms, TRL) -> evaluate_model (each arm). Prints a table (pass@1 / pass@k by
level for every model, explanation acceptance by level, seconds per stage), then one JSON line.

Why: the removed prototype `bench/toy_experiment.py` had its own GRPO loop; `expo run` uses `train_arm`, so
the embedded default's numbers must come from this path (docs/embedded-default.md).

Reuse: stages whose output already exists under `--out` are not run again (data, warm model, base
evaluation, explanations), so RL settings can be compared on one warm model with `--tag`: arms go to
`OUT/TAG/<arm>`. Changing data or model settings needs a fresh `--out`.

    nice .venv/bin/python bench/toy_sweep.py --seed 0 --out /tmp/sweep-s0 --tag base \
        --set train.expo_beta=1.0
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

SECTIONS_SEEDED = ("data.seed", "model.seed", "train.seed", "generation.seed")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="work folder (stages found there are reused)")
    parser.add_argument("--tag", default="run", help="subfolder for this run's arms")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, repeatable")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--json", metavar="FILE",
                        help="add this seed's figures to a results file (docs/results/embedded-default-seeds.json)")
    return parser.parse_args()


def level_table(metrics: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """{"1": (pass@1 %, pass@k %), ...} from an evaluate_model result."""
    from expo.evaluate import summarize_levels

    return {lv: (100 * v["pass@1"], 100 * v["pass@k"]) for lv, v in summarize_levels(metrics).items()}


def timed(timings: dict[str, float], name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    timings[name] = round(time.perf_counter() - started, 1)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from expo.artifacts import card_path, read_card
    from expo.config import load_pipeline_config
    from expo.data import prepare_data
    from expo.evaluate import evaluate_model
    from expo.explain import generate_explanations
    from expo.io import read_json
    from expo.modeling import prepare_model
    from expo.train import train_arm

    torch.set_num_threads(args.threads)
    overrides = [f"{key}={args.seed}" for key in SECTIONS_SEEDED] + args.overrides
    cfg = load_pipeline_config(None, overrides)
    out = Path(args.out)
    data, model, expl = out / "data", out / "model", out / "explanations"
    timings: dict[str, float] = {}
    if not (data / "train.jsonl").is_file():
        timed(timings, "data", prepare_data, cfg.data, data)
    if not card_path(model).is_file():
        timed(timings, "warmup", prepare_model, cfg.model, data, model, prompts=cfg.prompts)
    base_file = out / "eval-base" / "metrics.json"
    base = read_json(base_file) if base_file.is_file() else timed(
        timings, "eval_base", evaluate_model, str(model), data, cfg, out / "eval-base", "base")
    stats_file = expl / "stats.json"
    stats = read_json(stats_file) if stats_file.is_file() else timed(
        timings, "explain", generate_explanations, cfg, data, model, expl)
    results = {"base": level_table(base)}
    truncated = {"base": round(100 * base["overall"]["truncated_fraction"], 1)}
    rounds: dict[str, Any] = {}
    for arm in cfg.train.arms:
        arm_dir = out / args.tag / arm
        summary = timed(timings, f"train_{arm}", train_arm, arm, cfg, data, model, expl, arm_dir)
        metrics = timed(timings, f"eval_{arm}", evaluate_model, summary["model_dir"], data, cfg,
                        arm_dir / "eval", arm)
        results[arm] = level_table(metrics)
        truncated[arm] = round(100 * metrics["overall"]["truncated_fraction"], 1)
        rounds[arm] = [round(r["accepted"] / r["samples"], 2) if r["samples"] else None
                       for r in summary.get("explanation_rounds", [])]
    acceptance = {lv: round(100 * s["acceptance_rate"], 1) for lv, s in stats["by_level"].items()}
    warm = read_card(model).get("warmup", {})
    questions = min(s["questions"] for s in base["by_level"].values())
    return {"seed": args.seed, "tag": args.tag, "overrides": args.overrides, "results": results,
            "threads": args.threads, "k": cfg.evaluate.samples, "questions_per_level": questions,
            "acceptance": acceptance, "truncated_percent": truncated, "online_acceptance": rounds,
            "timings_s": timings,
            "warmup_final_loss": warm.get("final_loss"),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def print_table(report: dict[str, Any]) -> None:
    results = report["results"]
    levels = sorted(results["base"], key=int)
    print(f"seed {report['seed']} tag {report['tag']} overrides {' '.join(report['overrides']) or '-'}")
    print("model      " + " ".join(f"{'L' + lv + ' p@1/p@k':>15}" for lv in levels))
    for name, table in results.items():
        print(f"{name:<10} " + " ".join(f"{table[lv][0]:6.1f} /{table[lv][1]:6.1f} " for lv in levels))
    print("acceptance by level (%): " + " ".join(f"{lv}:{v}" for lv, v in report["acceptance"].items()))
    hardest = levels[-1]
    base = results["base"][hardest][0]
    for arm in results:
        if arm != "base":
            print(f"{arm}: hardest-level pass@1 {results[arm][hardest][0]:.1f} (base {base:.1f}, "
                  f"{results[arm][hardest][0] - base:+.1f})")
    print(f"timings (s): {report['timings_s']}  peak RSS {report['peak_rss_mb']} MB")


def add_to_results(path: Path, report: dict[str, Any]) -> None:
    """Merge this run into a results file (bench/results_pages.py renders it): the seed's models, its
    acceptance and truncation; the file's command, commit and machine say how to get the figures again."""
    import os
    import shlex
    import subprocess
    import sys

    from recipe_numbers import machine

    numbers = json.loads(path.read_text()) if path.is_file() else {"seeds": {}}
    hardest = max(report["results"]["base"], key=int)
    commit = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    numbers.update({"command": "nice .venv/bin/python " + shlex.join(["bench/toy_sweep.py", *sys.argv[1:]]),
                    "commit": commit, "machine": f"{machine()}; torch threads {report['threads']}",
                    "level": int(hardest), "k": report["k"], "questions_per_level": report["questions_per_level"],
                    "source": "bench/toy_sweep.py --json"})
    seed = numbers["seeds"].setdefault(str(report["seed"]), {"results": {}, "truncated_percent": {}})
    seed["results"].update({m: {lv: [round(x, 1) for x in v] for lv, v in t.items()}
                            for m, t in report["results"].items()})
    seed["truncated_percent"].update(report["truncated_percent"])
    seed["acceptance"] = report["acceptance"]
    path.write_text(json.dumps(numbers, indent=1) + "\n")
    print(f"added seed {report['seed']} to {os.path.relpath(path)}")


if __name__ == "__main__":  # expo.verify starts a forkserver pool: the entry must be guarded
    arguments = parse_args()
    report = run(arguments)
    print_table(report)
    if arguments.json:
        add_to_results(Path(arguments.json), report)
    print(json.dumps(report))
