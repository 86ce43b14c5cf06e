"""Regenerate the README's `make run` figures from a real run, so none of them is typed by hand.

    .venv/bin/python bench/readme_numbers.py          # `expo run` cold in a fresh folder, then cached
    .venv/bin/python bench/readme_numbers.py --render # only rewrite the README block from docs/make-run.json

The cold run is `make run`'s command (the embedded default, no arguments) in a fresh run folder; the
second run reuses the folder (every step but the exit handler from cache). Measured: wall time of
each, the largest resident set of any process of the cold run (getrusage(RUSAGE_CHILDREN), as
`/usr/bin/time -v` reports it), the lines the cold run printed, level-5 pass@1 / pass@k of every model
(summary.json) and the base model's explanation acceptance by level (the explain step's stats.json).
They are written to docs/make-run.json, and the README block between the two `make-run` markers is
rendered from that file (tests/test_docs_commands.py checks that the block is what `render` gives).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NUMBERS = ROOT / "docs" / "make-run.json"
BEGIN = "<!-- make-run:begin (bench/readme_numbers.py writes this block from docs/make-run.json) -->"
END = "<!-- make-run:end -->"
ARMS = {"base": "base", "grpo": "GRPO", "exp-grpo": "ExP-GRPO"}


def expo_run(run_dir: Path) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_"))}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "expo", "run", "--output", str(run_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"expo run failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return seconds, proc.stdout


def measure(run_dir: Path) -> dict[str, Any]:
    cold_s, printed = expo_run(run_dir)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    cached_s, _ = expo_run(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    samples = int(_config(run_dir).get("evaluate", {}).get("samples", 0))
    hardest = max((lv for m in summary["models"].values() for lv in m["levels"]), key=int)
    models = summary["models"]
    level = {name: [round(100 * models[name]["levels"][hardest][key], 1) for key in ("pass@1", "pass@k")]
             for name in ARMS if name in models}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"cold_s": round(cold_s, 1), "cached_s": round(cached_s, 1),
            "peak_rss_gb": round(peak_mb / 1024, 2), "lines_printed": len(printed.splitlines()),
            "level": int(hardest), "k": samples,
            "pass_at_1_k_percent": level, "acceptance_by_level_percent": _acceptance(summary),
            "cores": os.cpu_count(), "commit": commit, "date": dt.date.today().isoformat()}


def _config(run_dir: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}


def _acceptance(summary: dict[str, Any]) -> list[float]:
    """The explain step's acceptance by level, from its output folder (recorded in summary.json)."""
    step = next(s for s in summary["stages"] if s["task"] == "generate-explanations")
    stats = json.loads((Path(step["outputs"]["explanations"]) / "stats.json").read_text())
    return [round(100 * stats["by_level"][lv]["acceptance_rate"], 1)
            for lv in sorted(stats["by_level"], key=int)]


def _minutes(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def render(n: dict[str, Any]) -> str:
    """The README block for the measured figures `n` (docs/make-run.json): one table and its provenance."""
    names = list(n["pass_at_1_k_percent"])
    cells = " | ".join(f"{p1} / {pk}" for p1, pk in n["pass_at_1_k_percent"].values())
    acceptance = ", ".join(f"{a:.1f}" for a in n["acceptance_by_level_percent"])
    text = (
        f"The base model's explanation acceptance by level: {acceptance} %. `make run` took "
        f"{_minutes(n['cold_s'])} (largest process {n['peak_rss_gb']:.2f} GB resident) and printed "
        f"{n['lines_printed']} lines; run again, every step but the exit handler came from cache in "
        f"{_minutes(n['cached_s'])}. Measured by `bench/readme_numbers.py` (docs/make-run.json) at commit "
        f"{n['commit']} on a {n['cores']}-core CPU machine, {n['date']}.")
    return "\n".join([
        BEGIN,
        f"| level {n['level']}, pass@1 / pass@{n['k']} in % | " + " | ".join(ARMS[a] for a in names) + " |",
        "|---|" + "---|" * len(names),
        f"| `make run` | {cells} |",
        "",
        textwrap.fill(text, 100, break_on_hyphens=False, break_long_words=False),
        END])


def rewrite_readme(block: str, readme: Path = README) -> None:
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"{readme}: no block between {BEGIN!r} and {END!r}")
    readme.write_text(pattern.sub(lambda _: block, text), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", action="store_true",
                        help="no run: rewrite the README from docs/make-run.json")
    parser.add_argument("--output", metavar="DIR",
                        help="run folder for the cold run (default: a fresh temp folder)")
    args = parser.parse_args()
    if args.render:
        numbers = json.loads(NUMBERS.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="expo-readme-") as tmp:
            numbers = measure(Path(args.output) if args.output else Path(tmp) / "run")
        NUMBERS.write_text(json.dumps(numbers, indent=1) + "\n")
    rewrite_readme(render(numbers))
    for key, value in numbers.items():
        print(f"{key:<28} {value}")
    print(json.dumps(numbers))


if __name__ == "__main__":
    main()
