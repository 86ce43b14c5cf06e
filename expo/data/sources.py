"""Reading raw rows from wherever the problems live: a Hugging Face hub id, a local folder, a file, or
a built-in sample shipped with the package.

Every reader returns `Table`s: raw rows (usually dicts) plus the columns seen and a short, machine-
independent label that becomes each row's `source` (a file name, never an absolute path, so outputs do
not depend on where the data sits). Rows are not judged here; that is `normalize`'s job. What is judged
here is the *file*: a bad JSON line, a broken CSV or Parquet file and an empty file are `DataError`s
that name the file and line, because a half-read file would silently change the data set.

A source that is not an existing path and has no data-file suffix is a hub id (`owner/name`, or
`hf:owner/name` to say so explicitly).

Undecodable bytes do not fail the file: text is decoded with `surrogateescape`, so the broken bytes
survive as lone surrogates and the row that holds them is later counted as non-text.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from expo.config import DataConfig
from expo.errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
BUILTIN_PREFIX = "builtin:"


@dataclass
class Table:
    """Raw rows from one file, hub split or built-in sample."""

    label: str  # becomes each row's `source`; no absolute paths
    rows: Sequence[Any]  # a list, or a `datasets.Dataset` (iterated lazily)
    columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.columns:
            self.columns = _columns_of(self.rows)


def _columns_of(rows: Iterable[Any], look_at: int = 1000) -> list[str]:
    """The union of keys of the first `look_at` mapping rows, in first-seen order."""
    seen: dict[str, None] = {}
    for i, row in enumerate(rows):
        if i >= look_at:
            break
        if isinstance(row, dict):
            seen.update(dict.fromkeys(str(k) for k in row))
    return list(seen)


# ---------------------------------------------------------------------------------------------
# Files, by suffix.


def _read_jsonl(path: Path) -> list[Any]:
    rows = []
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise _json_error(path, lineno, exc) from None
    return rows


def _json_error(path: Path, lineno: int, exc: json.JSONDecodeError) -> DataError:
    return DataError(f"{path} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})")


def _read_json(path: Path) -> list[Any]:
    """A JSON array of rows, an object holding exactly one array, or JSON Lines named .json."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several JSON values: JSON Lines saved as .json (as `datasets` does)
            return _read_jsonl(path)
        raise _json_error(path, exc.lineno, exc) from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:  # {"version": 1, "data": [...]}
            return lists[0]
        if not lists:  # one row: JSON Lines with a single line
            return [data]
    raise DataError(f"{path}: expected a JSON array of rows (or JSON Lines), got a {type(data).__name__}")


def _read_csv(path: Path) -> list[Any]:
    # The default cap (128 KiB a cell) would call a long worked solution a broken file.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
    rows = []
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, strict=True)
        try:
            for row in reader:
                if None in row:  # more cells than header names: the row is shifted, not just short
                    raise DataError(f"{path} line {reader.line_num}: more cells than the header has columns")
                rows.append(row)
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}: broken CSV ({exc})") from None
    return rows


def _read_parquet(path: Path) -> list[Any]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError) for broken files
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None


READERS: dict[str, Callable[[Path], list[Any]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def read_file(path: Path, label: str) -> Table:
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty")
        rows = READERS[path.suffix.lower()](path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or _first_line(exc)})") from None
    if not rows:
        raise DataError(f"{path} has no rows")
    return Table(label, rows)


# ---------------------------------------------------------------------------------------------
# Folders, `datasets.save_to_disk` folders and the hub.


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())


def read_folder(folder: Path, cfg: DataConfig) -> list[Table]:
    if _is_saved_dataset(folder):
        return [_read_saved_dataset(folder, cfg)]
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in FILE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"{folder} holds no {'/'.join(FILE_SUFFIXES)} file and is not a saved data set")
    return [read_file(p, p.relative_to(folder).as_posix()) for p in files]


def _read_saved_dataset(folder: Path, cfg: DataConfig) -> Table:
    import datasets

    try:
        data = datasets.load_from_disk(str(folder))
    except Exception as exc:
        raise DataError(f"{folder}: cannot load the saved data set ({_first_line(exc)})") from None
    if isinstance(data, datasets.DatasetDict):
        if cfg.hub_split not in data:
            raise DataError(f"{folder}: no split {cfg.hub_split!r} (splits: {', '.join(data)}); "
                            f"set data.hub_split")
        data = data[cfg.hub_split]
    if len(data) == 0:
        raise DataError(f"{folder}: the saved data set has no rows")
    return Table(f"{folder.name}:{cfg.hub_split}", data, list(data.column_names))


def read_hub(cfg: DataConfig) -> Table:
    """`datasets.load_dataset(name, hub_config, split=hub_split)`; any failure becomes one clear line."""
    import datasets

    name = cfg.source.removeprefix("hf:")
    try:
        data = datasets.load_dataset(name, cfg.hub_config, split=cfg.hub_split)
    except Exception as exc:  # network, missing repo, missing config: many exception types, one message
        local = "" if cfg.source.startswith("hf:") else ", and no local path of that name exists"
        raise DataError(f"cannot load {name!r} (config {cfg.hub_config!r}, split {cfg.hub_split!r}) "
                        f"from the Hugging Face hub{local}: {_first_line(exc)}") from None
    if len(data) == 0:
        raise DataError(f"hub data set {name!r} split {cfg.hub_split!r} has no rows")
    config = f"/{cfg.hub_config}" if cfg.hub_config else ""
    return Table(f"{name}{config}:{cfg.hub_split}", data, list(data.column_names))


# ---------------------------------------------------------------------------------------------
# Built-in sources: a registry, name -> loader.


def _packaged_sample(name: str, file_name: str) -> Callable[[DataConfig], list[Table]]:
    """A sample shipped in expo/samples/ (written for this project, or a subset of a public set)."""
    def load(cfg: DataConfig) -> list[Table]:
        text = resources.files("expo").joinpath("samples", file_name).read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [Table(BUILTIN_PREFIX + name, rows)]
    return load


def _needle(cfg: DataConfig) -> list[Table]:
    # Imported here: the toy task is another module's job, and only this source needs it.
    from expo.toy.task import generate_rows

    return [Table("builtin:needle", generate_rows(seed=cfg.seed, n_per_level=cfg.builtin_per_level))]


# Seeded subsets of public sets, as the SmolLM2 recipes draw them (expo/samples/README.md: origin,
# licence, and the script that writes them from the full files).
REAL_SUBSETS = ("mawps-singleop-20", "mawps-addsub-20", "mawps-multiarith-20", "gsm8k-train-20", "math500-dev-64")

BUILTINS: dict[str, Callable[[DataConfig], list[Table]]] = {
    "math-sample": _packaged_sample("math-sample", "math_sample.jsonl"),
    "gsm8k-sample": _packaged_sample("gsm8k-sample", "gsm8k_sample.jsonl"),
    "needle": _needle,
    **{name: _packaged_sample(name, f"{name}.jsonl") for name in REAL_SUBSETS},
}


def source_path(source: str) -> Path | None:
    """The local path a source names, or None for built-in and hub sources."""
    if source.startswith(BUILTIN_PREFIX) or source.startswith("hf:"):
        return None
    path = Path(source).expanduser()
    if path.exists():
        return path
    if path.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~")) or "\\" in source:
        raise DataError(f"data source {source!r} does not exist")
    return None  # an `owner/name` hub id


@dataclass
class Entry:
    """One configured source: a one-source data section, the level it gives every row, its config key."""

    cfg: DataConfig  # source, schema, columns, hub keys and max_rows of this entry alone
    level: int | None  # None: rows keep their own level column
    key: str  # "data.sources[2]" (named in errors and stats), or "data.source"


def source_entries(cfg: DataConfig) -> list[Entry]:
    """`data.sources` resolved against the data section, or `data.source` as the one entry (whose cap is
    data.max_rows, applied to the whole by the caller, as before `sources` existed)."""
    if not cfg.sources:
        return [Entry(dataclasses.replace(cfg, max_rows=None), None, "data.source")]
    return [Entry(e.resolve(cfg), e.level, f"data.sources[{i}]") for i, e in enumerate(cfg.sources)]


def load_tables(cfg: DataConfig) -> list[Table]:
    """Every table the configured source holds (DataError if it cannot be read)."""
    if cfg.source.startswith(BUILTIN_PREFIX):
        name = cfg.source.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTINS:
            raise DataError(f"unknown built-in data source {cfg.source!r} "
                            f"(known: {', '.join(BUILTIN_PREFIX + n for n in BUILTINS)})")
        return BUILTINS[name](cfg)
    path = source_path(cfg.source)
    if path is None:
        return [read_hub(cfg)]
    if path.is_dir():
        return read_folder(path, cfg)
    if path.suffix.lower() not in READERS:
        raise DataError(f"data source {str(path)!r}: unsupported file type (use {', '.join(FILE_SUFFIXES)})")
    return [read_file(path, path.name)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
