"""Write a recipe run's figures to a JSON file, from what the run itself recorded (nothing typed by hand).

    /usr/bin/time -v -o /tmp/r/ladder.time .venv/bin/expo run --config configs/smollm2-135m-ladder.yaml \
        --output /tmp/r/ladder
    .venv/bin/python bench/recipe_numbers.py /tmp/r/ladder --time-log /tmp/r/ladder.time \
        --out docs/results/smollm2-135m-ladder.json

Read from the run folder: pass@1 / pass@k by level of every model (summary.json), the explain stage's
acceptance, coverage and unconditioned solve rate by level (its MLflow run in the folder's tracking
store, expo-run.json), the stage times (summary.json); from the `/usr/bin/time -v` log, wall time and
the largest process. The commit is the one checked out when the run started (git, by the run's start
time); the machine is this one (run the script where the run ran). docs/smollm2-recipes.md renders
the file (bench/results_pages.py). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """This machine in words: cores, memory, CPU model, GPU or none."""
    import os
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({cpu}), {round(mem / 2**20)} GiB, no GPU"


def commit_at(started: str) -> str:
    """The commit HEAD pointed to when the run started."""
    out = subprocess.run(["git", "rev-list", "-1", f"--before={started}", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    return out[:7]


def time_log(path: Path) -> dict[str, float]:
    """Wall seconds and largest resident set (GB) from a `/usr/bin/time -v` log."""
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not wall or not rss:
        raise SystemExit(f"{path}: not a `/usr/bin/time -v` log (no wall time or maximum resident set)")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return {"wall_s": round(seconds, 1), "peak_rss_gb": round(int(rss.group(1)) / 2**20, 1)}


def explain_metrics(tracking_uri: str) -> dict[str, float]:
    """The generate_explanations run's final metrics in the run's tracking store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.mlflow.runName = 'generate_explanations'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"{tracking_uri}: no generate_explanations run")
    return runs[0].data.metrics


def measure(run_dir: Path, time_file: Path | None) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    record = json.loads((run_dir / "expo-run.json").read_text())
    metrics = explain_metrics(record["tracking_uri"])
    levels = sorted(next(iter(summary["models"].values()))["levels"], key=int)
    pct = lambda x: round(100 * x, 1)  # noqa: E731
    explain = {lv: {"acceptance": pct(metrics[f"by_level/{lv}/acceptance_rate"]),
                    "coverage": pct(metrics[f"by_level/{lv}/coverage"]),
                    "solve_rate": pct(metrics[f"by_level/{lv}/solve_rate"])} for lv in levels}
    explain["all"] = {"acceptance": pct(metrics["acceptance_rate"]), "coverage": pct(metrics["coverage"]),
                      "solve_rate": pct(metrics["solve_rate"])}
    models = {name: {"k": m["k"], "levels": {lv: pct(m["levels"][lv]["pass@1"]) for lv in levels},
                     "overall": [pct(m["overall"]["pass@1"]), pct(m["overall"]["pass@k"])]}
              for name, m in summary["models"].items()}
    stages: dict[str, float] = {}
    for stage in summary["stages"]:
        name = stage["label"]
        stages[name] = round(stages.get(name, 0.0) + float(stage.get("seconds") or 0.0), 1)
    out = {"run": summary.get("registered_model_uri") or "", "started": record["started"],
           "commit": commit_at(record["started"]), "machine": machine(),
           "wall_s": summary["wall_s"], "peak_rss_gb": None, "models": models, "explanations": explain,
           "stage_s": stages}
    if time_file is not None:
        out.update(time_log(time_file))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run folder (expo run --output DIR)")
    parser.add_argument("--time-log", help="the run's `/usr/bin/time -v` output (wall time, largest process)")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--command", default="", help="the command that made the run (stored as given)")
    parser.add_argument("--note", default="", help="conditions of the run a reader should know (stored as given)")
    args = parser.parse_args()
    numbers = measure(Path(args.run_dir), Path(args.time_log) if args.time_log else None)
    numbers["command"] = args.command
    numbers["note"] = args.note
    Path(args.out).write_text(json.dumps(numbers, indent=1) + "\n")
    for key, value in numbers.items():
        print(f"{key:<14} {value}")
    print(json.dumps(numbers))


if __name__ == "__main__":
    main()
