"""Run one benchmark script and keep its JSON line, with the command, commit, machine and load beside it.

    .venv/bin/python bench/record.py bench-verify -- .venv/bin/python bench/verify.py --items 1500

Every script under bench/ prints a table, then one JSON line last; this writes that line's figures to
docs/results/NAME.json as {"command", "commit", "machine", "load", "date", "result"}, and
docs/benchmarks.md shows them (bench/results_pages.py renders the block). The load average is the
1-minute one before and after the run: on a shared machine it says how far to trust a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from recipe_numbers import machine  # noqa: E402  (the same words for the machine everywhere)


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "expo", "bench"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    return f"{head} (with uncommitted changes)" if dirty else head


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="docs/results/NAME.json (bench-<script> by convention)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the benchmark command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the benchmark command after --")
    before = os.getloadavg()[0]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    after = os.getloadavg()[0]
    sys.stdout.write(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"{shlex.join(command)}: exit {proc.returncode}, no JSON line: {proc.stderr.strip()[-400:]}",
              file=sys.stderr)
        return 1
    record = {"command": shlex.join(command), "commit": commit(), "machine": machine(),
              "load": f"{before:.1f} -> {after:.1f}", "date": dt.date.today().isoformat(),
              "result": json.loads(lines[-1])}
    (ROOT / "docs" / "results" / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
