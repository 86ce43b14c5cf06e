"""The data stage: source -> normalised rows -> filter, dedupe, cap -> train/eval split -> files.

    result = prepare_data(DataConfig(source="builtin:math-sample", levels=[4, 5]), "out/data")
    result.train, result.eval, result.skipped   # sizes and {reason: count}

Writes `train.jsonl`, `eval.jsonl` and `stats.json` (docs/architecture.md). Everything is read and
checked before the first byte is written, each file is replaced atomically and `stats.json` goes last,
so a failed run leaves what was there before untouched.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expo.config import DataConfig
from expo.data import split as splitting
from expo.data.normalize import FILTER_REASONS, SKIP_REASONS, Skip, normalise_row, resolve_schema
from expo.data.sources import Table, load_tables, source_path
from expo.errors import DataError
from expo.io import write_json, write_jsonl

OUTPUT_FILES = ("train.jsonl", "eval.jsonl", "stats.json")


@dataclass
class DataResult:
    """What `prepare_data` wrote, and why the rows it did not keep were dropped."""

    output_dir: Path
    rows_in: int
    rows_out: int
    train: int
    eval: int
    skipped: dict[str, int]  # reason (SKIP_REASONS or FILTER_REASONS key) -> rows; zero counts left out
    digest: dict[str, str]  # sha256 of train.jsonl and eval.jsonl
    schemas: dict[str, str] = field(default_factory=dict)  # table label -> schema used
    levels: dict[str, dict[str, int]] = field(default_factory=dict)  # level -> {"train": n, "eval": n}

    def stats(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "train": self.train, "eval": self.eval,
                "skipped": dict(self.skipped), "digest": dict(self.digest), "schemas": dict(self.schemas),
                "levels": {k: dict(v) for k, v in self.levels.items()}}


def _normalise_tables(tables: list[Table], cfg: DataConfig, skipped: Counter[str],
                      progress: bool) -> tuple[list[dict[str, Any]], int, dict[str, str]]:
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    rows_in = 0
    schemas = {t.label: resolve_schema(cfg, t.columns, t.label) for t in tables}
    total = sum(len(t.rows) for t in tables)
    # disable=None turns the bar off when stderr is not a terminal (logs, pipelines, tests).
    with tqdm(total=total, desc="rows", unit="row", file=sys.stderr, disable=None if progress else True,
              mininterval=0.5) as bar:
        for table in tables:
            schema = schemas[table.label]
            for raw in table.rows:
                rows_in += 1
                bar.update()
                try:
                    rows.append(normalise_row(raw, schema, table.label))
                except Skip as skip:
                    skipped[skip.reason] += 1
    return rows, rows_in, {label: s.name for label, s in schemas.items()}


def _describe(skipped: Counter[str], top: int = 3) -> str:
    labels = {**SKIP_REASONS, **FILTER_REASONS}
    return ", ".join(f"{n} {labels[r]}" for r, n in skipped.most_common(top) if n) or "no rows at all"


def check_output_dir(cfg: DataConfig, output_dir: Path) -> None:
    """Refuse to write where the outputs could replace or be mixed with the source's own files."""
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"output {str(output_dir)!r} exists and is not a folder")
    src = source_path(cfg.source)
    if src is None:
        return
    src, out = src.resolve(), output_dir.resolve()
    if src.is_dir() and (out == src or src in out.parents):
        raise DataError(f"output folder {str(output_dir)!r} is inside the source folder {cfg.source!r}; "
                        "choose another output folder")
    if src.is_file() and src in {out / name for name in OUTPUT_FILES}:
        raise DataError(f"output folder {str(output_dir)!r} would overwrite the source file {cfg.source!r}")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _level_counts(train: list[dict[str, Any]], held: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for part, rows in (("train", train), ("eval", held)):
        for row in rows:
            key = "none" if row["level"] is None else str(row["level"])
            counts.setdefault(key, {"train": 0, "eval": 0})[part] += 1
    return dict(sorted(counts.items()))


def format_summary(result: DataResult) -> str:
    """The compact table printed to stderr: sizes, then one line per reason."""
    labels = {**SKIP_REASONS, **FILTER_REASONS}
    lines = [f"rows in {result.rows_in}  kept {result.rows_out}  train {result.train}  eval {result.eval}"]
    for reason, n in sorted(result.skipped.items(), key=lambda kv: -kv[1]):
        kind = "filter" if reason in FILTER_REASONS else "skip"
        lines.append(f"  {kind:<6} {labels[reason]:<24} {n:>7}")
    return "\n".join(lines)


def prepare_data(cfg: DataConfig, output_dir: str | Path, progress: bool = False) -> DataResult:
    """Load `cfg.source`, normalise, filter, dedupe, cap and split it; write the data artifact."""
    cfg.validate("data")  # callers may build a DataConfig by hand; bad values fail before any work
    output_dir = Path(output_dir)
    check_output_dir(cfg, output_dir)
    skipped: Counter[str] = Counter()
    rows, rows_in, schemas = _normalise_tables(load_tables(cfg), cfg, skipped, progress)
    rows = splitting.filter_levels(rows, cfg.levels, skipped)
    rows = splitting.dedupe(rows, skipped)
    rows = splitting.cap(rows, cfg.max_rows, cfg.seed, skipped)
    if not rows:
        raise DataError(f"no usable rows in {cfg.source}: {_describe(skipped)}")
    train, held = splitting.split(rows, cfg.eval_fraction, cfg.seed)

    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(output_dir / "train.jsonl", train)
    write_jsonl(output_dir / "eval.jsonl", held)
    result = DataResult(
        output_dir=output_dir, rows_in=rows_in, rows_out=len(rows), train=len(train), eval=len(held),
        skipped={r: n for r, n in skipped.items() if n},
        digest={name: _file_digest(output_dir / f"{name}.jsonl") for name in ("train", "eval")},
        schemas=schemas, levels=_level_counts(train, held))
    write_json(output_dir / "stats.json", result.stats())  # last: its presence means the rest is whole
    print(format_summary(result), file=sys.stderr)
    return result
