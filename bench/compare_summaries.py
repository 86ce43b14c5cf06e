"""Are two `expo run` results the same? Compare their summary.json files, leaving out what varies
between runs of the same config and seed: paths, wall times, kfp.local's task order and tokens/s.

Why: a refactor that must not change behaviour is checked by running the same config before
and after it, each from its own clone, and comparing the two summaries.

    git clone -q . /tmp/before && (cd /tmp/before && git checkout -q REV)
    (cd /tmp/before && PYTHONPATH=$PWD ../main/.venv/bin/python -m expo run --output /tmp/run-before)
    ... the same from a clone of HEAD into /tmp/run-after, then:
    .venv/bin/python bench/compare_summaries.py /tmp/run-before/summary.json /tmp/run-after/summary.json

Prints one row per compared key (same or differs), then one JSON line {"identical": bool, "differ": [...]}.
Exit code 1 when they differ.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

VOLATILE = {"stages", "run_folder", "log_file", "wall_s"}  # paths, seconds, execution order


def stage_headlines(summary: dict[str, Any]) -> dict[str, str]:
    """Each stage's headline by label, its generation speed left out (it varies with the machine's load)."""
    return {s["label"]: re.sub(r"[\d.]+ tok/s", "N tok/s", s.get("headline") or "")
            for s in summary.get("stages") or []}


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, bool]]:
    keys = sorted((set(before) | set(after)) - VOLATILE)
    rows = [(k, before.get(k) == after.get(k)) for k in keys]
    return rows + [("stages (headlines by label)", stage_headlines(before) == stage_headlines(after))]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit("usage: compare_summaries.py BEFORE/summary.json AFTER/summary.json")
    before, after = (json.loads(Path(p).read_text()) for p in argv)
    rows = compare(before, after)
    width = max(len(k) for k, _ in rows)
    for key, same in rows:
        print(f"{key:<{width}}  {'same' if same else 'DIFFERS'}")
    differ = [k for k, same in rows if not same]
    print(json.dumps({"identical": not differ, "differ": differ}))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
