"""Tests for `data.sources` (several sources concatenated, each with its own schema, level and seeded
cap: the difficulty ladder), numeric gold answers from float cells, joined question columns, and the
level-stratified split, on hand-made rows and on the real files in ../shared/data."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from expo.config import DataConfig, DataSourceConfig, load_config
from expo.data import prepare_data
from expo.data.normalize import integral_text, number_text, question_key
from expo.errors import ConfigError, DataError
from expo.io import read_json, read_jsonl

from tests.realmodel import SHARED_DATA, need_shared_data

needs_shared_data = pytest.mark.usefixtures("shared_data")  # skip, or fail under EXPO_REQUIRE_REAL
MAWPS = {"question": "input", "answer": "target"}


@pytest.fixture
def shared_data() -> Path:
    return need_shared_data()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(tmp_path: Path, cfg: DataConfig, out: str = "out") -> tuple:
    """Run the stage; return (result, train rows, eval rows, stats)."""
    result = prepare_data(cfg, tmp_path / out)
    d = tmp_path / out
    return result, read_jsonl(d / "train.jsonl"), read_jsonl(d / "eval.jsonl"), read_json(d / "stats.json")


def sources(*entries: dict, **top) -> DataConfig:
    return DataConfig(sources=[DataSourceConfig(**e) for e in entries], **top)


def mawps(tmp_path: Path, name: str, n: int, start: int = 0) -> str:
    rows = [{"input": f"{name}: Tom has {i} apples and gets 2 more. How many?", "target": float(i + 2)}
            for i in range(start, start + n)]
    return str(write_jsonl(tmp_path / f"{name}.jsonl", rows))


# ---------------------------------------------------------------------------------------------
# The ladder on the real files


def _source_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (SHARED_DATA / name).read_text(encoding="utf-8").splitlines()
            if line.strip()]


LADDER = [("mawps_singleop.jsonl", "custom", 1), ("mawps_addsub.jsonl", "custom", 2),
          ("mawps_multiarith.jsonl", "custom", 3), ("gsm8k_train.jsonl", "gsm8k", 4)]


def _ladder(max_rows: int, **top) -> DataConfig:
    return sources(*[{"source": str(SHARED_DATA / name), "level": level, "max_rows": max_rows,
                      **({"columns": MAWPS} if schema == "custom" else {"schema": schema})}
                     for name, schema, level in LADDER], **top)


@needs_shared_data
def test_real_ladder_levels_answers_sources_and_stratified_split(tmp_path):
    result, train, held, stats = run(tmp_path, _ladder(20, eval_fraction=0.2))
    rows = train + held
    # No question is shared between the four files (checked), so dedupe takes nothing across entries.
    assert Counter(r["level"] for r in rows) == {1: 20, 2: 20, 3: 20, 4: 20}
    assert {r["level"]: r["source"] for r in rows} == {
        1: "mawps_singleop.jsonl", 2: "mawps_addsub.jsonl", 3: "mawps_multiarith.jsonl",
        4: "gsm8k_train.jsonl"}
    # stratified: round(20 * 0.2) = 4 of each level held out
    assert Counter(r["level"] for r in held) == {1: 4, 2: 4, 3: 4, 4: 4}
    assert stats["levels"] == {str(lv): {"train": 16, "eval": 4} for lv in (1, 2, 3, 4)}
    # gold answers: the float target written as a number, never "14.0"
    gold = {question_key(r["input"]): r["target"]
            for name, *_ in LADDER[:3] for r in _source_rows(name)}
    for row in rows:
        assert not row["answer"].endswith(".0")
        if row["level"] < 4:
            target = gold[question_key(row["question"])]
            assert float(row["answer"]) == target
            if float(target).is_integer():
                assert row["answer"] == str(int(target))
        else:
            assert row["answer"].isdigit()  # GSM8K train answers are whole numbers
    # per entry: everything read is kept or counted; SingleOp and MultiArith repeat some questions
    sizes = {name: len(_source_rows(name)) for name, *_ in LADDER}
    assert [(s["key"], s["level"], s["rows_in"], s["rows_out"]) for s in stats["sources"]] == [
        (f"data.sources[{i}]", level, sizes[name], 20) for i, (name, _, level) in enumerate(LADDER)]
    for s in stats["sources"]:
        assert s["rows_out"] + sum(s["skipped"].values()) == s["rows_in"]
    assert stats["sources"][0]["skipped"]["duplicate"] > 0
    assert "duplicate" not in stats["sources"][3]["skipped"]
    assert result.rows_in == sum(sizes.values()) and result.rows_out == 80
    assert result.skipped == dict(sum((Counter(s["skipped"]) for s in stats["sources"]), Counter()))


@needs_shared_data
def test_real_ladder_cap_is_a_seeded_sample_of_the_whole_file(tmp_path):
    gsm8k = _source_rows("gsm8k_train.jsonl")
    position = {question_key(r["question"]): i for i, r in enumerate(gsm8k)}
    cfg = sources({"source": str(SHARED_DATA / "gsm8k_train.jsonl"), "schema": "gsm8k", "level": 4,
                   "max_rows": 60}, eval_fraction=0.0)
    _, train, _, _ = run(tmp_path, cfg)
    picked = [position[question_key(r["question"])] for r in train]
    assert len(picked) == 60 and picked == sorted(picked)  # kept in file order
    assert max(picked) > len(gsm8k) // 2 and min(picked) < len(gsm8k) // 2  # not the file's first rows
    _, again, _, _ = run(tmp_path, cfg, "again")
    assert again == train  # same seed, same sample
    _, other, _, _ = run(tmp_path, DataConfig(**{**cfg.__dict__, "seed": 1}), "other")
    assert {r["id"] for r in other} != {r["id"] for r in train}


@needs_shared_data
def test_real_math500_answers_agree_with_the_boxed_solution_and_subject_is_read(tmp_path):
    cfg = DataConfig(source=str(SHARED_DATA / "math500_dev.jsonl"), schema="math", eval_fraction=0.2)
    result, train, held, stats = run(tmp_path, cfg)
    given = {question_key(r["problem"]): r for r in _source_rows("math500_dev.jsonl")}
    assert result.skipped == {} and result.rows_out == len(given)
    for row in train + held:
        source = given[question_key(row["question"])]
        assert row["answer"] == source["answer"]  # the schema's boxed answer is the file's answer column
        assert row["level"] == source["level"] and row["subject"] == source["subject"]
    assert {r["level"] for r in held} == {1, 2, 3, 4, 5}


@needs_shared_data
def test_real_svamp_joins_body_and_question(tmp_path):
    cfg = sources({"source": str(SHARED_DATA / "svamp.jsonl"),
                   "columns": {"question": ["Body", "Question"], "answer": "Answer"}, "max_rows": 10})
    _, train, held, _ = run(tmp_path, cfg)
    given = {question_key(f"{r['Body'].strip()} {r['Question'].strip()}"): r
             for r in _source_rows("svamp.jsonl")}
    for row in train + held:
        source = given[question_key(row["question"])]
        assert row["question"] == f"{source['Body'].strip()} {source['Question'].strip()}"
        assert row["answer"] == number_text(source["Answer"]) and row["level"] is None


# ---------------------------------------------------------------------------------------------
# Entries: levels, caps, dedupe, inheritance


def test_entries_are_concatenated_with_their_levels_and_caps(tmp_path):
    one = mawps(tmp_path, "one", 10)
    math_rows = [{"problem": f"Solve {i}.", "solution": f"\\boxed{{{i}}}", "level": "Level ?"}
                 for i in range(6)]
    two = str(write_jsonl(tmp_path / "two.jsonl", math_rows))
    cfg = sources({"source": one, "columns": MAWPS, "level": 1, "max_rows": 4},
                  {"source": two, "level": 5}, eval_fraction=0.0)
    result, train, _, stats = run(tmp_path, cfg)
    # entry level overrides the row's level column: "Level ?" would be bad_level, but it is not read
    assert Counter(r["level"] for r in train) == {1: 4, 5: 6}
    assert [r["source"] for r in train] == ["one.jsonl"] * 4 + ["two.jsonl"] * 6  # entries in order
    assert result.schemas == {"one.jsonl": "custom", "two.jsonl": "math"}
    assert stats["sources"] == [
        {"key": "data.sources[0]", "source": one, "level": 1, "rows_in": 10, "rows_out": 4,
         "skipped": {"over_max_rows": 6}},
        {"key": "data.sources[1]", "source": two, "level": 5, "rows_in": 6, "rows_out": 6, "skipped": {}}]
    assert result.skipped == {"over_max_rows": 6}


def test_dedupe_across_entries_before_each_cap(tmp_path):
    a = mawps(tmp_path, "a", 3)
    b_rows = read_jsonl(Path(a))[:2] + [{"input": f"b {i}?", "target": i} for i in range(3)]
    b = str(write_jsonl(tmp_path / "b.jsonl", b_rows))
    cfg = sources({"source": a, "columns": MAWPS, "level": 1}, {"source": b, "columns": MAWPS, "level": 2,
                                                                "max_rows": 3}, eval_fraction=0.0)
    result, train, _, stats = run(tmp_path, cfg)
    # b's first two rows are a's questions: counted as duplicates of b, then b's cap still finds 3 rows
    assert Counter(r["level"] for r in train) == {1: 3, 2: 3}
    assert stats["sources"][1]["skipped"] == {"duplicate": 2} and result.skipped == {"duplicate": 2}


def test_top_level_max_rows_and_levels_apply_to_the_whole(tmp_path):
    a, b = mawps(tmp_path, "a", 10), mawps(tmp_path, "b", 10)
    cfg = sources({"source": a, "columns": MAWPS, "level": 1}, {"source": b, "columns": MAWPS, "level": 2},
                  max_rows=12, eval_fraction=0.0)
    result, *_ = run(tmp_path, cfg)
    assert result.rows_out == 12 and result.skipped == {"over_max_rows": 8}
    # an entry wholly filtered out by data.levels is not an error
    result, train, *_ = run(tmp_path, DataConfig(**{**cfg.__dict__, "max_rows": None, "levels": [2]}), "lv")
    assert {r["level"] for r in train} == {2} and result.skipped == {"filtered_level": 10}


def test_entries_inherit_schema_columns_and_hub_keys(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"prompt": f"{name} {i}?", "final": i} for i in range(3)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = sources({"source": "someone/a"}, {"source": "someone/b", "hub_split": "test", "hub_config": "x"},
                  schema="custom", columns={"question": "prompt", "answer": "final"}, hub_split="dev",
                  eval_fraction=0.0)
    result, train, *_ = run(tmp_path, cfg)
    assert calls == [("someone/a", None, "dev"), ("someone/b", "x", "test")]
    assert result.schemas == {"someone/a:dev": "custom", "someone/b/x:test": "custom"}
    assert len(train) == 6 and {r["level"] for r in train} == {None}


@pytest.mark.parametrize("entry, top, schema", [
    ({}, {}, "auto"),
    ({}, {"schema": "math"}, "math"),
    ({"columns": {"question": "q", "answer": "a"}}, {"schema": "math"}, "custom"),  # columns: custom
    ({"schema": "gsm8k"}, {"schema": "math"}, "gsm8k"),
])
def test_entry_schema_resolution(entry, top, schema):
    data = DataConfig(**top)
    assert DataSourceConfig(source="x.jsonl", **entry).resolve(data).schema == schema


def test_single_source_stats_have_one_entry(tmp_path):
    path = mawps(tmp_path, "m", 5)
    _, _, _, stats = run(tmp_path, DataConfig(source=path, columns=MAWPS, schema="custom", max_rows=4))
    assert stats["sources"] == [{"key": "data.source", "source": path, "level": None, "rows_in": 5,
                                 "rows_out": 5, "skipped": {}}]  # data.max_rows caps the whole, after
    assert stats["rows_out"] == 4 and stats["skipped"] == {"over_max_rows": 1}


# ---------------------------------------------------------------------------------------------
# Errors name the key


@pytest.mark.parametrize("override, message", [
    ("data.sources=[{source: a}, {source: b}, {source: c, level: 7}]",
     "config key 'data.sources[2].level': levels are 1..5"),
    ("data.sources=[{source: a}, {source: b}, {source: c, level: two}]",
     "config key 'data.sources[2].level': expected an integer, got 'two'"),
    ("data.sources=[{source: a}, {source: b, lvl: 1}]", "unknown config key 'data.sources[1].lvl'"),
    ("data.sources=[{source: a, max_rows: 0}]", "config key 'data.sources[0].max_rows': must be positive"),
    ("data.sources=[{level: 1}]", "config key 'data.sources[0].source': is required"),
    ("data.sources=[{source: a, schema: custom}]", "config key 'data.sources[0].columns': schema 'custom'"),
    ("data.sources=[{source: a, schema: csv}]", "config key 'data.sources[0].schema': 'csv' is not one of"),
    ("data.sources=[{source: a, columns: {question: q}}]",
     "config key 'data.sources[0].columns': needs 'question' and one of"),
    ("data.sources=[{source: a, columns: {question: q, answer: [x, y]}}]",
     "config key 'data.sources[0].columns.answer': only question, solution, subject may join"),
    ("data.columns={question: [], answer: a}", "config key 'data.columns.question': needs at least one"),
    ("data.sources={source: a}", "config key 'data.sources': expected a list"),
])
def test_bad_entries_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_source_and_sources_together_name_both_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"'data\.sources'.*'data\.source'"):
        load_config(None, ["data.source=x.jsonl", "data.sources=[{source: a.jsonl}]"])
    with pytest.raises(ConfigError, match=r"'data\.sources'.*'data\.source'"):
        prepare_data(sources({"source": "a.jsonl"}, source="b.jsonl"), tmp_path / "out")


def test_entry_read_errors_name_the_entry(tmp_path):
    a = mawps(tmp_path, "a", 3)
    with pytest.raises(DataError, match=r"^data\.sources\[1\]: data source '.*nothere\.jsonl' does not"):
        prepare_data(sources({"source": a, "columns": MAWPS}, {"source": str(tmp_path / "nothere.jsonl")}),
                     tmp_path / "out")
    with pytest.raises(DataError, match=r"^data\.sources\[1\]: a\.jsonl: cannot tell the schema"):
        prepare_data(sources({"source": a, "columns": MAWPS}, {"source": a}), tmp_path / "out")
    bad = str(write_jsonl(tmp_path / "bad.jsonl", [{"input": "q?", "target": None}]))
    with pytest.raises(DataError, match=r"^no usable rows in data\.sources\[1\] \(.*bad\.jsonl\): 1 missing"):
        prepare_data(sources({"source": a, "columns": MAWPS}, {"source": bad, "columns": MAWPS}),
                     tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_is_checked_against_every_entry(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    a = mawps(folder, "a", 3)
    cfg = sources({"source": mawps(tmp_path, "b", 3), "columns": MAWPS},
                  {"source": str(folder), "columns": MAWPS})
    with pytest.raises(DataError, match="inside the source folder"):
        prepare_data(cfg, folder / "out")
    assert Path(a).exists()


# ---------------------------------------------------------------------------------------------
# Numeric answers, joined columns


@pytest.mark.parametrize("value, text", [
    (14.0, "14"), (2.5, "2.5"), (-3.0, "-3"), (0.0, "0"), (-0.0, "0"), (3.33333, "3.33333"),
    (1e-05, "0.00001"),  # str() would say 1e-05
    (1e16, "10000000000000000"), (7, "7"), (-12, "-12"),
])
def test_number_text(value, text):
    assert number_text(value) == text


@pytest.mark.parametrize("answer, text", [
    ("14.0", "14"), ("-3.00", "-3"), ("+5.0", "5"), ("2.5", "2.5"), ("2.50", "2.50"), ("1/2", "1/2"),
    ("14", "14"), (".0", ".0"), ("1.0.0", "1.0.0"),
])
def test_integral_text(answer, text):
    assert integral_text(answer) == text


def test_float_answers_in_every_format_become_integers(tmp_path):
    rows = [("a", 14.0), ("b", 2.5), ("c", 1e-05), ("d", float("nan")), ("e", "14.0"), ("f", -7.0)]
    src = write_jsonl(tmp_path / "f.jsonl", [{"input": f"{q}?", "target": t} for q, t in rows])
    cfg = DataConfig(source=str(src), schema="custom", columns=MAWPS, eval_fraction=0.0)
    result, train, *_ = run(tmp_path, cfg)
    assert [r["answer"] for r in train] == ["14", "2.5", "0.00001", "14", "-7"]
    assert result.skipped == {"non_text": 1}  # NaN is no answer
    # a CSV cell is text "14.0"; a GSM8K answer may end "#### 14.0"
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["input", "target"], ["How many?", "14.0"], ["How much?", "2.50"]])
    _, train, *_ = run(tmp_path, DataConfig(source=str(tmp_path / "c.csv"), schema="custom", columns=MAWPS,
                                            eval_fraction=0.0), "csv")
    assert [r["answer"] for r in train] == ["14", "2.50"]
    gsm = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "2 * 7 = 14\n#### 14.00"}])
    _, train, *_ = run(tmp_path, DataConfig(source=str(gsm), eval_fraction=0.0), "gsm")
    assert train[0]["answer"] == "14"


def test_parquet_float_and_decimal_columns(tmp_path):
    from decimal import Decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"input": ["A?", "B?"], "target": [14.0, 2.5],
                      "exact": pa.array([Decimal("14.00"), Decimal("2.50")], pa.decimal128(5, 2))})
    pq.write_table(table, tmp_path / "p.parquet")
    for column, expected in (("target", ["14", "2.5"]), ("exact", ["14", "2.5"])):
        _, train, *_ = run(tmp_path, DataConfig(source=str(tmp_path / "p.parquet"), schema="custom",
                                                columns={"question": "input", "answer": column},
                                                eval_fraction=0.0), column)
        assert [r["answer"] for r in train] == expected


def test_boxed_answers_are_kept_as_written(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", [{"problem": "Round 2.96 to the nearest tenth.",
                                               "solution": "\\boxed{3.0}"}])
    _, train, *_ = run(tmp_path, DataConfig(source=str(src), eval_fraction=0.0))
    assert train[0]["answer"] == "3.0"  # the asked-for form, not a float cell


def test_joined_question_columns(tmp_path):
    rows = [{"Body": "Tom has 3 apples. He buys 4 more ", "Question": " How many now?", "Answer": 7.0},
            {"Body": "Sue has 5 pens.", "Question": None, "Answer": 5.0},   # missing part: missing_field
            {"Body": "Ann has 2 cats.", "Question": 3, "Answer": 2.0},      # non-text part
            {"Body": "", "Question": "Just this?", "Answer": 1.0}]          # empty part: dropped
    src = write_jsonl(tmp_path / "s.jsonl", rows)
    cfg = sources({"source": str(src), "columns": {"question": ["Body", "Question"], "answer": "Answer"}},
                  eval_fraction=0.0)
    result, train, *_ = run(tmp_path, cfg)
    assert [(r["question"], r["answer"]) for r in train] == [
        ("Tom has 3 apples. He buys 4 more How many now?", "7"), ("Just this?", "1")]
    assert result.skipped == {"missing_field": 1, "non_text": 1}
    no_question = write_jsonl(tmp_path / "t.jsonl", [{"Body": "x", "Answer": 1}])
    with pytest.raises(DataError, match="no column 'Question' for schema 'custom'"):
        prepare_data(DataConfig(source=str(no_question), schema="custom",
                                columns={"question": ["Body", "Question"], "answer": "Answer"}),
                     tmp_path / "o2")


@pytest.mark.parametrize("columns, subject", [
    (["problem", "solution", "type"], "T"), (["problem", "solution", "subject"], "S"),
    (["problem", "solution", "type", "subject"], "T"), (["problem", "solution"], ""),
])
def test_math_subject_from_type_or_subject(tmp_path, columns, subject):
    values = {"problem": "P?", "solution": "\\boxed{1}", "type": "T", "subject": "S"}
    src = write_jsonl(tmp_path / "m.jsonl", [{c: values[c] for c in columns}])
    for schema in ("auto", "math"):
        _, train, *_ = run(tmp_path, DataConfig(source=str(src), schema=schema, eval_fraction=0.0), schema)
        assert train[0]["subject"] == subject


# ---------------------------------------------------------------------------------------------
# The split keeps every level


def test_split_keeps_every_level_of_a_small_ladder(tmp_path):
    # levels of 2, 3, 5 and 40 rows: round(n * 0.1) would hold out 0, 0, 1, 4; every level still shows
    entries = [{"source": mawps(tmp_path, f"l{lv}", n, 100 * lv), "columns": MAWPS, "level": lv}
               for lv, n in ((1, 2), (2, 3), (3, 5), (4, 40))]
    _, train, held, stats = run(tmp_path, sources(*entries, eval_fraction=0.1))
    assert Counter(r["level"] for r in held) == {1: 1, 2: 1, 3: 1, 4: 4}
    assert Counter(r["level"] for r in train) == {1: 1, 2: 2, 3: 4, 4: 36}
    assert stats["levels"]["1"] == {"train": 1, "eval": 1}
