"""The data stage: sources -> normalised rows -> filter, dedupe, cap -> train/eval split -> files.

    result = prepare_data(DataConfig(source="builtin:math-sample", levels=[4, 5]), "out/data")
    result.train, result.eval, result.skipped   # sizes and {reason: count}

With `data.sources` (a difficulty ladder: SingleOp, AddSub, MultiArith, GSM8K as levels 1-4) each entry
is read, normalised, given its level, level-filtered, deduped (also against the rows kept from earlier
entries) and capped by its own seeded `max_rows`, in order; the concatenation is then capped by
`data.max_rows` and split, stratified by level. `data.source` is the one-entry case.

With `data.test_source` the test set (MATH-500, GSM8K test) is read with the same schema, columns and
levels, deduped and optionally capped (`data.test_max_rows`), written as `test.jsonl`, and its questions
are removed from the training data (`in_test_set`); the held-out fraction stays the validation split.

Writes `train.jsonl`, `eval.jsonl`, `test.jsonl` (with a test set) and `stats.json`
(docs/architecture.md). Everything is read and checked before the first byte is written, each file is
replaced atomically and `stats.json` goes last, so a failed run leaves what was there before untouched.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expo.artifacts import hash_file
from expo.config import DataConfig
from expo.data import split as splitting
from expo.data.normalize import (FILTER_REASONS, SKIP_REASONS, Schema, Skip, normalise_row, question_key,
                                 resolve_schema)
from expo.data.sources import Entry, Table, load_tables, source_entries, source_path
from expo.errors import DataError
from expo.io import write_json, write_jsonl

OUTPUT_FILES = ("train.jsonl", "eval.jsonl", "test.jsonl", "stats.json")
TEST_KEY = "data.test_source"


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
    # one per configured source: {"key", "source", "level", "rows_in", "rows_out", "skipped"}
    sources: list[dict[str, Any]] = field(default_factory=list)
    # the test set (data.test_source): {"source", "rows_in", "rows", "levels": {level: n}, "skipped"}
    test: dict[str, Any] | None = None

    def empty_validation(self, eval_fraction: float) -> str | None:
        """Why the validation split (eval.jsonl) is empty, or None when it holds rows."""
        if self.eval:
            return None
        if eval_fraction == 0:
            return "data.eval_fraction is 0: nothing is held out"
        return (f"{self.rows_out} row{'s' if self.rows_out != 1 else ''} kept, and a level needs at least 2 to "
                f"hold one out (data.eval_fraction {eval_fraction})")

    def stats(self) -> dict[str, Any]:
        out = {"rows_in": self.rows_in, "rows_out": self.rows_out, "train": self.train, "eval": self.eval,
               "skipped": dict(self.skipped), "digest": dict(self.digest), "schemas": dict(self.schemas),
               "levels": {k: dict(v) for k, v in self.levels.items()},
               "sources": [{**s, "skipped": dict(s["skipped"])} for s in self.sources]}
        if self.test is not None:
            out["test"] = {**self.test, "skipped": dict(self.test["skipped"])}
        return out


@dataclass
class _Loaded:
    """An entry read and its schemas resolved: every file is checked before any row is normalised."""

    entry: Entry
    tables: list[Table]
    schemas: dict[str, Schema]  # table label -> schema (the level column dropped if the entry gives one)


@contextmanager
def _naming(entry: Entry, many: bool) -> Iterator[None]:
    """With several entries, a DataError says which one it is about (the file alone may be ambiguous)."""
    try:
        yield
    except DataError as exc:
        if not many:
            raise
        raise DataError(f"{entry.key}: {exc}") from None


def _load(entry: Entry, many: bool) -> _Loaded:
    with _naming(entry, many):
        tables = load_tables(entry.cfg)
        schemas = {t.label: resolve_schema(entry.cfg, t.columns, t.label) for t in tables}
    if entry.level is not None:
        schemas = {label: s.without("level") for label, s in schemas.items()}
    return _Loaded(entry, tables, schemas)


def _normalise_entry(item: _Loaded, counts: Counter[str], bar: Any) -> tuple[list[dict[str, Any]], int]:
    """Every raw row of one entry -> our rows (with the entry's level) or a counted skip reason."""
    rows: list[dict[str, Any]] = []
    rows_in = 0
    for table in item.tables:
        schema = item.schemas[table.label]
        for raw in table.rows:
            rows_in += 1
            bar.update()
            try:
                row = normalise_row(raw, schema, table.label)
            except Skip as skip:
                counts[skip.reason] += 1
                continue
            if item.entry.level is not None:
                row["level"] = item.entry.level
            rows.append(row)
    return rows, rows_in


def _gather(loaded: list[_Loaded], cfg: DataConfig, skipped: Counter[str],
            progress: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each entry in order: normalise, level, filter, dedupe against what is kept, cap. Returns the kept
    rows and one summary per entry; `skipped` gets every entry's counts."""
    from tqdm import tqdm

    kept: list[dict[str, Any]] = []
    kept_keys: set[str] = set()
    summaries = []
    total = sum(len(t.rows) for item in loaded for t in item.tables)
    # disable=None turns the bar off when stderr is not a terminal (logs, pipelines, tests).
    with tqdm(total=total, desc="rows", unit="row", file=sys.stderr, disable=None if progress else True,
              mininterval=0.5) as bar:
        for item in loaded:
            entry, counts = item.entry, Counter[str]()
            rows, rows_in = _normalise_entry(item, counts, bar)
            if not rows and len(loaded) > 1:  # a wrong schema or column for one entry, not a level filter
                raise DataError(f"no usable rows in {entry.key} ({entry.cfg.source}): {_describe(counts)}")
            rows = splitting.filter_levels(rows, cfg.levels, counts)
            # Dedupe before the cap, so an entry's max_rows counts distinct questions new to the data set.
            rows = splitting.dedupe(rows, counts, kept_keys)
            rows = splitting.cap(rows, entry.cfg.max_rows, cfg.seed, counts)
            kept.extend(rows)
            kept_keys.update(question_key(r["question"]) for r in rows)
            skipped.update(counts)
            summaries.append({"key": entry.key, "source": entry.cfg.source, "level": entry.level,
                              "rows_in": rows_in, "rows_out": len(rows),
                              "skipped": {r: n for r, n in counts.items() if n}})
    return kept, summaries


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def _load_test(cfg: DataConfig) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """The test set's rows (normalised, level-filtered, deduped, capped) and its summary; None without
    one. Read before anything is written, like the training sources."""
    if not cfg.test_source.strip():
        return None
    test_cfg = dataclasses.replace(cfg, source=cfg.test_source, hub_split=cfg.test_hub_split, sources=[],
                                   max_rows=None)
    item = _load(Entry(test_cfg, None, TEST_KEY), many=True)  # many: errors name data.test_source
    counts: Counter[str] = Counter()
    rows, rows_in = _normalise_entry(item, counts, _NoBar())
    rows = splitting.filter_levels(rows, cfg.levels, counts)
    rows = splitting.dedupe(rows, counts)
    rows = splitting.cap(rows, cfg.test_max_rows, cfg.seed, counts)
    if not rows:
        raise DataError(f"no usable rows in {TEST_KEY} ({cfg.test_source}): {_describe(counts)}")
    levels = Counter("none" if r["level"] is None else str(r["level"]) for r in rows)
    return rows, {"source": cfg.test_source, "rows_in": rows_in, "rows": len(rows),
                  "levels": dict(sorted(levels.items())), "skipped": {r: n for r, n in counts.items() if n}}


def _without_test(rows: list[dict[str, Any]], test_rows: list[dict[str, Any]],
                  skipped: Counter[str]) -> list[dict[str, Any]]:
    """Training rows whose question is not in the test set (a test question seen in training would
    make the test number a memory test)."""
    keys = {question_key(r["question"]) for r in test_rows}
    kept = [r for r in rows if question_key(r["question"]) not in keys]
    skipped["in_test_set"] += len(rows) - len(kept)
    return kept


def _describe(skipped: Counter[str], top: int = 3) -> str:
    labels = {**SKIP_REASONS, **FILTER_REASONS}
    return ", ".join(f"{n} {labels[r]}" for r, n in skipped.most_common(top) if n) or "no rows at all"


def check_output_dir(cfg: DataConfig, output_dir: Path) -> None:
    """Refuse to write where the outputs could replace or be mixed with a source's own files."""
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"output {str(output_dir)!r} exists and is not a folder")
    for entry in source_entries(cfg):
        with _naming(entry, many=bool(cfg.sources)):
            _check_against(entry.cfg, output_dir)
    if cfg.test_source.strip():
        with _naming(Entry(dataclasses.replace(cfg, source=cfg.test_source), None, TEST_KEY), many=True):
            _check_against(dataclasses.replace(cfg, source=cfg.test_source), output_dir)


def _check_against(cfg: DataConfig, output_dir: Path) -> None:
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
    return hash_file(path).hexdigest()


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
    if len(result.sources) > 1:  # which entry lost what: one line each
        for s in result.sources:
            level = "-" if s["level"] is None else s["level"]
            why = ", ".join(f"{n} {labels[r]}" for r, n in s["skipped"].items())
            lines.append(f"  {s['key']:<16} level {level}  in {s['rows_in']:>6}  kept {s['rows_out']:>6}  "
                         f"{s['source']}{f' ({why})' if why else ''}")
    return "\n".join(lines)


def prepare_data(cfg: DataConfig, output_dir: str | Path, progress: bool = False) -> DataResult:
    """Load `cfg.source` (or each of `cfg.sources`), normalise, filter, dedupe, cap and split; write the
    data artifact."""
    cfg.validate("data")  # callers may build a DataConfig by hand; bad values fail before any work
    output_dir = Path(output_dir)
    check_output_dir(cfg, output_dir)
    entries = source_entries(cfg)
    loaded = [_load(entry, many=bool(cfg.sources)) for entry in entries]
    skipped: Counter[str] = Counter()
    test = _load_test(cfg)
    rows, summaries = _gather(loaded, cfg, skipped, progress)
    rows_in = sum(s["rows_in"] for s in summaries)
    schemas = {label: s.name for item in loaded for label, s in item.schemas.items()}
    if test is not None:
        rows = _without_test(rows, test[0], skipped)
    rows = splitting.cap(rows, cfg.max_rows, cfg.seed, skipped)
    if not rows:
        where = "data.sources" if cfg.sources else cfg.source
        raise DataError(f"no usable rows in {where}: {_describe(skipped)}")
    train, held = splitting.split(rows, cfg.eval_fraction, cfg.seed)

    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(output_dir / "train.jsonl", train)
    write_jsonl(output_dir / "eval.jsonl", held)
    parts = ("train", "eval")
    if test is not None:
        write_jsonl(output_dir / "test.jsonl", test[0])
        parts += ("test",)
    elif (output_dir / "test.jsonl").is_file():
        (output_dir / "test.jsonl").unlink()  # a test set from an earlier config would be taken for ours
    result = DataResult(
        output_dir=output_dir, rows_in=rows_in, rows_out=len(rows), train=len(train), eval=len(held),
        skipped={r: n for r, n in skipped.items() if n},
        digest={name: _file_digest(output_dir / f"{name}.jsonl") for name in parts},
        schemas=schemas, levels=_level_counts(train, held), sources=summaries,
        test=test[1] if test is not None else None)
    write_json(output_dir / "stats.json", result.stats())  # last: its presence means the rest is whole
    print(format_summary(result), file=sys.stderr)
    return result
