"""Writes the real-data subsets the SmolLM2 recipes use (`builtin:` sources), from the full public files.

The recipes draw a seeded sample from each public set (MAWPS SingleOp / AddSub / MultiArith and GSM8K
train for the ladder, MATH-500's dev half for the MATH recipe). This script runs the data stage's own
selection (normalise, dedupe, seeded `max_rows` cap) on the full files and keeps exactly the raw rows it
chose, in file order, so `builtin:<name>` gives the recipes the same questions without the full files.
Provenance and licences: expo/samples/README.md. Run from the repository root, with the full files in
FOLDER (their layout: ../shared/data/README.md):

    .venv/bin/python expo/samples/make_real_subsets.py FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from expo.config import DataConfig, DataSourceConfig
from expo.data.prepare import prepare_data
from expo.data.normalize import row_id

HERE = Path(__file__).resolve().parent
# name -> (file, question column, schema or column mapping, max_rows): the recipes' selections
SUBSETS = {
    "mawps-singleop-20": ("mawps_singleop.jsonl", "input", {"columns": {"question": "input", "answer": "target"}}, 20),
    "mawps-addsub-20": ("mawps_addsub.jsonl", "input", {"columns": {"question": "input", "answer": "target"}}, 20),
    "mawps-multiarith-20": ("mawps_multiarith.jsonl", "input",
                         {"columns": {"question": "input", "answer": "target"}}, 20),
    "gsm8k-train-20": ("gsm8k_train.jsonl", "question", {"schema": "gsm8k"}, 20),
    "math500-dev-64": ("math500_dev.jsonl", "problem", {"schema": "math"}, 64),
}


def chosen_ids(folder: Path, file: str, mapping: dict, max_rows: int, out: Path) -> set[str]:
    """The ids the data stage keeps from `file` with this mapping and cap (seed 0, nothing held out)."""
    entry = DataSourceConfig(source=str(folder / file), max_rows=max_rows, **mapping)
    prepare_data(DataConfig(sources=[entry], eval_fraction=0.0, seed=0), out)
    rows = [json.loads(line) for name in ("train.jsonl", "eval.jsonl") if (out / name).is_file()
            for line in (out / name).read_text(encoding="utf-8").splitlines()]
    return {r["id"] for r in rows}


def main(folder: Path) -> None:
    import tempfile

    for name, (file, question_column, mapping, max_rows) in SUBSETS.items():
        with tempfile.TemporaryDirectory() as tmp:
            ids = chosen_ids(folder, file, mapping, max_rows, Path(tmp) / "data")
        kept, seen = [], set()
        for line in (folder / file).read_text(encoding="utf-8").splitlines():
            raw = json.loads(line)
            rid = row_id(str(raw[question_column]))
            if rid in ids and rid not in seen:  # the first of duplicates, as the data stage keeps it
                kept.append(line)
                seen.add(rid)
        assert len(kept) == len(ids), (name, len(kept), len(ids))
        (HERE / f"{name}.jsonl").write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        print(f"{name}: {len(kept)} rows from {file}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
