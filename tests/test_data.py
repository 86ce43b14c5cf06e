"""Tests for expo.data: every source format, schemas, skip reasons, dedupe, the seeded split, the
output checks, and property tests that hostile input is either kept or counted, never a crash."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expo.config import DataConfig, load_config
from expo.data import SKIP_REASONS, parse_level, prepare_data, question_key, row_id
from expo.data.split import eval_count, split
from expo.errors import ConfigError, DataError
from expo.io import read_json, read_jsonl


def math_row(q: str, answer: str = "7", level: object = "Level 3", subject: str = "Algebra") -> dict:
    return {"problem": q, "solution": f"work \\boxed{{{answer}}}", "level": level, "type": subject}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prepare(tmp_path: Path, source: object, **cfg) -> tuple:
    """Run the stage into tmp_path/out; return (result, train rows, eval rows, stats)."""
    out = tmp_path / "out"
    result = prepare_data(DataConfig(source=str(source), **cfg), out)
    train, held = read_jsonl(out / "train.jsonl"), read_jsonl(out / "eval.jsonl")
    return result, train, held, read_json(out / "stats.json")


def accounted(result) -> bool:
    return result.rows_out + sum(result.skipped.values()) == result.rows_in


ROWS = [math_row(f"What is {i} + {i}?", str(2 * i), f"Level {i % 5 + 1}") for i in range(20)]


# ---------------------------------------------------------------------------------------------
# Formats


def test_jsonl_rows_are_normalised(tmp_path):
    rows = [{"problem": "  Find $x$.  ", "solution": "so \\boxed{\\frac{1}{2}}", "level": "Level 2",
             "type": "Algebra"}]
    result, train, held, stats = prepare(tmp_path, write_jsonl(tmp_path / "a.jsonl", rows), eval_fraction=0.0)
    assert train == [{"id": row_id("Find $x$."), "question": "Find $x$.", "answer": "\\frac{1}{2}",
                      "level": 2,
                      "subject": "Algebra", "solution": "so \\boxed{\\frac{1}{2}}", "source": "a.jsonl"}]
    assert held == [] and result.schemas == {"a.jsonl": "math"}
    assert stats["rows_in"] == 1 and stats["rows_out"] == 1 and stats["skipped"] == {}
    assert stats["digest"]["train"] == hashlib.sha256((tmp_path / "out/train.jsonl").read_bytes()).hexdigest()


@pytest.mark.parametrize("shape", ["array", "object", "lines"])
def test_json_file_shapes(tmp_path, shape):
    path = tmp_path / "a.json"
    if shape == "array":
        path.write_text(json.dumps(ROWS))
    elif shape == "object":  # {"data": [...]}: one list of rows inside an object
        path.write_text(json.dumps({"version": 1, "data": ROWS}))
    else:  # JSON Lines saved under .json, as datasets.to_json does
        write_jsonl(path, ROWS)
    result, *_ = prepare(tmp_path, path)
    assert result.rows_out == 20


def test_parquet_and_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    with open(tmp_path / "b.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerow({"question": "Tom has 1,000 apples and buys 234. How many?",
                         "answer": "1000 + 234 = 1234\n#### 1,234"})
    result, train, *_ = prepare(tmp_path, tmp_path / "a.parquet")
    assert result.rows_out == 20
    result, train, *_ = prepare(tmp_path, tmp_path / "b.csv", eval_fraction=0.0)
    assert train[0]["answer"] == "1234" and train[0]["level"] is None and result.schemas == {"b.csv": "gsm8k"}


def test_csv_cell_over_the_default_field_limit_is_kept(tmp_path):
    solution = "x" * 300_000 + " \\boxed{3}"  # csv's default cap is 128 KiB a cell
    with open(tmp_path / "big.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["problem", "solution"], ["Long one?", solution]])
    _, train, *_ = prepare(tmp_path, tmp_path / "big.csv", eval_fraction=0.0)
    assert train[0]["answer"] == "3" and len(train[0]["solution"]) == len(solution)


def test_folder_reads_every_data_file_and_detects_schema_per_file(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_jsonl(src / "math.jsonl", ROWS[:10])
    write_jsonl(src / "sub" / "gsm.json", [{"question": "Legs of 3 cats?", "answer": "#### 12"}])
    (src / "README.md").write_text("not data")
    (src / ".hidden.jsonl").write_text("not json")  # hidden files are skipped
    result, train, held, _ = prepare(tmp_path, src)
    assert result.rows_in == 11 and result.schemas == {"math.jsonl": "math", "sub/gsm.json": "gsm8k"}
    assert {r["source"] for r in train + held} == {"math.jsonl", "sub/gsm.json"}


def test_save_to_disk_folder_dataset_and_dataset_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    result, *_ = prepare(tmp_path, tmp_path / "ds")
    assert result.rows_out == 20
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:5]),
                          "test": datasets.Dataset.from_list(ROWS[5:8])}).save_to_disk(str(tmp_path / "dd"))
    result, *_ = prepare(tmp_path, tmp_path / "dd", hub_split="test")
    assert result.rows_in == 3
    with pytest.raises(DataError, match="no split 'validation'"):
        prepare(tmp_path, tmp_path / "dd", hub_split="validation")


def test_hub_id_calls_load_dataset_with_config_and_split(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result, train, held, _ = prepare(tmp_path, "someone/math", hub_config="algebra", hub_split="test")
    assert calls == [("someone/math", "algebra", "test")]
    assert result.rows_out == 20 and train[0]["source"] == "someone/math/algebra:test"
    prepare(tmp_path, "hf:someone/math")  # the explicit prefix, for ids that look like local names
    assert calls[-1] == ("someone/math", None, "train")


def test_hub_failure_is_one_clear_line(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/math' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"cannot load 'someone/math'.*Couldn't reach") as info:
        prepare(tmp_path, "someone/math")
    assert "\n" not in str(info.value)


def test_builtin_samples_are_fully_usable(tmp_path):
    # The shipped samples were written with answers checked by computation: every row must be kept.
    result, train, held, _ = prepare(tmp_path, "builtin:math-sample")
    assert result.skipped == {} and result.rows_out >= 40
    assert {r["level"] for r in held} == {1, 2, 3, 4, 5}  # stratified: every level in eval
    assert len({r["subject"] for r in train + held}) == 7
    result, train, held, _ = prepare(tmp_path, "builtin:gsm8k-sample")
    assert result.skipped == {} and result.rows_out >= 30
    assert all("," not in r["answer"] and r["answer"].lstrip("-").isdigit() for r in train + held)


def test_builtin_registry_needle_and_unknown(tmp_path, monkeypatch):
    fake = types.ModuleType("expo.toy.task")
    fake.generate_rows = lambda seed, n_per_level: [
        math_row(f"needle {seed} {lv} {i}", str(i), f"Level {lv}")
        for lv in range(1, 6) for i in range(n_per_level)]
    monkeypatch.setitem(sys.modules, "expo.toy.task", fake)  # independent of the real toy task
    result, *_ = prepare(tmp_path, "builtin:needle", builtin_per_level=4, seed=3)
    assert result.rows_in == 20 and result.levels["5"] == {"train": 3, "eval": 1}
    with pytest.raises(DataError, match="unknown built-in data source 'builtin:nope'.*builtin:math-sample"):
        prepare(tmp_path, "builtin:nope")


def test_missing_path_and_unsupported_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path, tmp_path / "nothere.jsonl")
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        prepare(tmp_path, tmp_path / "a.txt")


# ---------------------------------------------------------------------------------------------
# Schemas and answers


def test_custom_schema_with_direct_answer_column(tmp_path):
    rows = [{"prompt": "Six times seven?", "final": 42, "diff": 2},
            {"prompt": "Half of one?", "final": "1/2", "diff": "Level 1"}]
    result, train, *_ = prepare(tmp_path, write_jsonl(tmp_path / "c.jsonl", rows), schema="custom",
                                columns={"question": "prompt", "answer": "final", "level": "diff"},
                                eval_fraction=0.0)
    assert [(r["answer"], r["level"], r["solution"]) for r in train] == [("42", 2, ""), ("1/2", 1, "")]


def test_custom_schema_extracts_from_solution(tmp_path):
    rows = [{"q": "A?", "sol": "x \\fbox{5}"}, {"q": "B?", "sol": "y\n#### 2,000"}]
    _, train, *_ = prepare(tmp_path, write_jsonl(tmp_path / "c.jsonl", rows), schema="custom",
                           columns={"question": "q", "solution": "sol"}, eval_fraction=0.0)
    assert [r["answer"] for r in train] == ["5", "2000"]


def test_our_own_output_reads_back_unchanged(tmp_path):
    _, train, *_ = prepare(tmp_path, "builtin:math-sample")
    again = tmp_path / "again"
    result = prepare_data(DataConfig(source=str(tmp_path / "out" / "train.jsonl"), eval_fraction=0.0), again)
    assert result.schemas == {"train.jsonl": "expo"}
    assert [(r["id"], r["answer"], r["level"]) for r in read_jsonl(again / "train.jsonl")] == \
        [(r["id"], r["answer"], r["level"]) for r in train]


def test_schema_errors_name_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "target": "b"}])
    with pytest.raises(DataError, match=r"cannot tell the schema from columns \['prompt', 'target'\]"):
        prepare(tmp_path, path)
    with pytest.raises(DataError, match="no column 'problem' for schema 'math'"):
        prepare(tmp_path, path, schema="math")


def test_custom_columns_are_checked_by_the_config():
    with pytest.raises(ConfigError, match="data.columns.*unknown field 'prompt'"):
        load_config(None, ["data.schema=custom", "data.columns={prompt: q}"])
    with pytest.raises(ConfigError, match="data.columns.*needs 'question'"):
        load_config(None, ["data.schema=custom", "data.columns={question: q}"])


@pytest.mark.parametrize("value, level", [
    ("Level 5", 5), ("level 3", 3), ("Level5", 5), (5, 5), ("5", 5), (" 2 ", 2), (4.0, 4),
    (None, None), ("", None),  # no level: kept, level null
])
def test_parse_level(value, level):
    assert parse_level(value) == level


@pytest.mark.parametrize("value", ["Level ?", "five", "Level -1", 0, -2, True, 2.5, [5], "Level 5a"])
def test_parse_level_rejects(value):
    from expo.data.normalize import Skip

    with pytest.raises(Skip, match="bad_level"):
        parse_level(value)


# ---------------------------------------------------------------------------------------------
# Skips, filters, dedupe


def test_every_skip_reason_is_counted(tmp_path):
    good = math_row("Keep me", "1")
    lines = [json.dumps(r) for r in [
        good,
        [1, 2],                                                          # not_a_mapping
        {"solution": "\\boxed{1}", "level": "Level 1", "type": "A"},     # missing_field: no problem
        {"problem": None, "solution": "\\boxed{1}"},                     # missing_field: null problem
        {"problem": 12, "solution": "\\boxed{1}"},                       # non_text: a number
        {"problem": ["a"], "solution": "\\boxed{1}"},                    # non_text: a list
        {"problem": "Q\ud800", "solution": "\\boxed{1}"},               # non_text: lone surrogate
        {"problem": "   ", "solution": "\\boxed{1}"},                    # empty_question
        {"problem": "Q1", "solution": "no box here"},                    # no_answer
        {"problem": "Q2", "solution": "\\boxed{ }"},                     # no_answer: empty box
        {"problem": "Q3", "solution": "\\boxed{\\frac{1}{2}"},           # unbalanced_braces
        {"problem": "Q4", "solution": "\\boxed{1}", "level": "Level ?"},  # bad_level
        {"problem": "  KEEP   me ", "solution": "\\boxed{2}"},            # duplicate (normalised)
    ]]
    # undecodable bytes inside a JSON string: non_text, not a broken file
    raw = "\n".join(lines).encode() + b'\n{"problem": "Q\xff\xfe", "solution": "\\\\boxed{1}"}\n'
    (tmp_path / "s.jsonl").write_bytes(raw)
    result, train, held, stats = prepare(tmp_path, tmp_path / "s.jsonl")
    assert result.skipped == {"not_a_mapping": 1, "missing_field": 2, "non_text": 4, "empty_question": 1,
                              "no_answer": 2, "unbalanced_braces": 1, "bad_level": 1, "duplicate": 1}
    assert set(result.skipped) <= set(SKIP_REASONS)
    assert result.rows_in == 14 and result.rows_out == 1 and accounted(result)
    assert train[0]["answer"] == "1" and stats["skipped"] == result.skipped  # the first duplicate wins


def test_skip_table_goes_to_stderr(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", ROWS + [{"problem": "x", "solution": "none"}])
    prepare(tmp_path, tmp_path / "a.jsonl", levels=[1, 2])
    err = capsys.readouterr().err
    assert "rows in 21  kept 8  train" in err
    assert "filter filtered by level" in err and "skip   no extractable answer" in err


def test_level_filter_counts_as_filter_and_drops_unlevelled(tmp_path):
    rows = ROWS + [{"problem": "no level", "solution": "\\boxed{1}"}]
    result, train, held, _ = prepare(tmp_path, write_jsonl(tmp_path / "a.jsonl", rows), levels=[4, 5])
    assert {r["level"] for r in train + held} == {4, 5}
    assert result.skipped == {"filtered_level": 13} and result.rows_out == 8


def test_question_key_and_id_ignore_case_and_whitespace():
    assert question_key("  What IS\t2+2? \n") == "what is 2+2?"
    assert row_id("What is 2+2?") == row_id("what  is 2+2?")
    assert row_id("What is 2+2?") == hashlib.sha256(b"what is 2+2?").hexdigest()[:16]
    assert row_id("What is 2+3?") != row_id("What is 2+2?")


def test_max_rows_is_a_seeded_sample_in_source_order(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    result, train, held, _ = prepare(tmp_path, path, max_rows=6, seed=1)
    assert result.rows_out == 6 and result.skipped == {"over_max_rows": 14}
    positions = [[r["problem"] for r in ROWS].index(r["question"]) for r in train + held]
    assert sorted(positions) != list(range(6))  # a seeded sample, not simply the first six
    assert sorted(positions[:result.train]) == positions[:result.train]  # kept in source order
    again, *_ = prepare(tmp_path, path, max_rows=6, seed=1)
    assert again.digest == result.digest


# ---------------------------------------------------------------------------------------------
# Split


@pytest.mark.parametrize("n, fraction, expected", [
    (1, 0.2, 0),    # a lone row trains
    (2, 0.2, 1),    # round(0.4) = 0, but every level with 2+ rows shows in eval
    (10, 0.2, 2),   # 10 * 0.2 = 2
    (5, 0.5, 3),    # 2.5 rounds half up to 3
    (4, 0.9, 3),    # round(3.6) = 4 would leave nothing to train on
    (10, 0.0, 0),   # no eval asked for
])
def test_eval_count(n, fraction, expected):
    assert eval_count(n, fraction) == expected


def _rows(n_per_level: int) -> list[dict]:
    return [{"id": row_id(f"q{lv}-{i}"), "question": f"q{lv}-{i}", "level": lv}
            for lv in (1, 2, 3) for i in range(n_per_level)]


def test_split_is_deterministic_seeded_and_stratified():
    rows = _rows(30)
    train_a, eval_a = split(rows, 0.2, seed=0)
    train_b, eval_b = split(list(reversed(rows)), 0.2, seed=0)
    assert {r["id"] for r in eval_a} == {r["id"] for r in eval_b}  # same seed, same split, any order
    _, eval_c = split(rows, 0.2, seed=1)
    assert {r["id"] for r in eval_c} != {r["id"] for r in eval_a}
    assert Counter(r["level"] for r in eval_a) == {1: 6, 2: 6, 3: 6}  # 30 * 0.2 per level
    assert len(train_a) == 72 and not {r["id"] for r in train_a} & {r["id"] for r in eval_a}


def test_reruns_write_identical_files(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    first = prepare_data(DataConfig(source=str(path), seed=5), tmp_path / "one")
    second = prepare_data(DataConfig(source=str(path), seed=5), tmp_path / "two")
    assert first.digest == second.digest
    assert (tmp_path / "one/stats.json").read_text() == (tmp_path / "two/stats.json").read_text()


# ---------------------------------------------------------------------------------------------
# Broken input and output safety


@pytest.mark.parametrize("name, content, match", [
    ("a.jsonl", b'{"problem": "a", "solution": "\\\\boxed{1}"}\n\n{"problem": oops}\n',
     r"a\.jsonl line 3: not valid JSON"),  # blank lines still count
    ("a.json", b'[{"problem": "a"},', r"a\.json line 1: not valid JSON"),
    ("a.json", b'"just a string"', "expected a JSON array of rows"),
    ("a.csv", b'question,answer\n"unclosed,#### 1\n', r"a\.csv line \d+: broken CSV"),
    ("a.csv", b'question,answer\nq,#### 1,extra\n', r"a\.csv line 2: more cells than the header"),
    ("a.parquet", b"PAR1 this is not parquet", r"a\.parquet: not a readable Parquet file"),
    ("a.jsonl", b"", r"a\.jsonl is empty"),
    ("a.jsonl", b"\n  \n", r"a\.jsonl has no rows"),
    ("a.csv", b"question,answer\n", r"a\.csv has no rows"),
])
def test_malformed_and_empty_files(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=match):
        prepare(tmp_path, tmp_path / name)


def test_folder_without_data_files(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no .jsonl"):
        prepare(tmp_path, tmp_path / "src")


def test_only_bad_rows_says_why_and_keeps_old_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("precious\n")
    rows = [{"problem": f"q{i}", "solution": "no box"} for i in range(12)]
    rows += [{"problem": "", "solution": "x"}] * 3
    with pytest.raises(DataError) as info:
        prepare(tmp_path, write_jsonl(tmp_path / "bad.jsonl", rows))
    assert str(info.value) == \
        f"no usable rows in {tmp_path / 'bad.jsonl'}: 12 no extractable answer, 3 empty question"
    assert (out / "train.jsonl").read_text() == "precious\n" and not (out / "stats.json").exists()


def test_output_must_not_be_or_overwrite_the_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "train.jsonl", ROWS)
    for out in (src, src / "prepared"):
        with pytest.raises(DataError, match="inside the source folder"):
            prepare_data(DataConfig(source=str(src)), out)
    with pytest.raises(DataError, match="would overwrite the source file"):
        prepare_data(DataConfig(source=str(src / "train.jsonl")), src)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        prepare_data(DataConfig(source=str(src)), tmp_path / "file")
    assert read_jsonl(src / "train.jsonl") == ROWS


# ---------------------------------------------------------------------------------------------
# Property tests: hostile rows and bytes are kept or counted, never a crash, in bounded time.

_LATEX = st.lists(st.sampled_from(["\\boxed{", "\\fbox{", "}", "{", "\\{", "\\}", "\\frac{1}{2}", "$", "\\",
                                   "####", " ", "\n", "1,234", "x^2", "\\boxed 5", "Level", "é"]),
                 max_size=12)
_TEXT = st.one_of(st.text(max_size=40), _LATEX.map("".join),
                  # huge fields: 200k characters before the LaTeX
                  st.builds(lambda n, tail: "x" * n + tail, st.sampled_from([0, 10_000, 200_000]),
                            _LATEX.map("".join)))
_VALUE = st.one_of(_TEXT, st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(),
                   st.lists(st.integers(), max_size=2))
_BOXED = st.builds(lambda pre, ans: f"{pre} \\boxed{{{ans}}}", _TEXT, st.text(min_size=1, max_size=6))
_LEVEL_VALUE = st.one_of(st.sampled_from(["Level 1", "Level 5", "Level ?", "3", ""]), st.integers(-1, 7))
_ROW = st.one_of(
    # plausible rows (often kept) and hostile ones (always counted), mixed in one file
    st.fixed_dictionaries({"problem": _TEXT.map("Q {}".format), "solution": _BOXED},
                          optional={"level": _LEVEL_VALUE}),
    st.fixed_dictionaries({"problem": _VALUE, "solution": st.one_of(_BOXED, _VALUE)},
                          optional={"level": st.one_of(_LEVEL_VALUE, _VALUE), "type": _VALUE,
                                    "extra": _VALUE}),
    st.fixed_dictionaries({"question": _VALUE, "answer": _VALUE}),
    st.integers(), st.lists(st.text(max_size=3), max_size=2))
_FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_accounted(path: Path, schema: str, rows_expected: int | None) -> None:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        try:
            result = prepare_data(DataConfig(source=str(path), schema=schema), Path(out) / "d")
        except DataError as exc:  # a clear refusal is fine; any other exception fails the test
            assert str(exc) and "\n" not in str(exc)
            return
        finally:
            assert time.perf_counter() - start < 20
        assert accounted(result)
        assert result.train + result.eval == result.rows_out
        if rows_expected is not None:
            assert result.rows_in == rows_expected
        assert len(read_jsonl(Path(out) / "d" / "train.jsonl")) == result.train


@_FUZZ
@given(rows=st.lists(_ROW, min_size=1, max_size=15), schema=st.sampled_from(["auto", "math"]))
def test_fuzz_rows_are_kept_or_counted(rows, schema):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        _check_accounted(path, schema, len(rows))


@_FUZZ
@given(cells=st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=10))
def test_fuzz_csv_cells(cells):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        with open(path, "w", newline="", encoding="utf-8", errors="surrogatepass") as fh:
            writer = csv.writer(fh)
            writer.writerow(["problem", "solution"])
            writer.writerows(cells)
        _check_accounted(path, "math", None)


@_FUZZ
@given(lines=st.lists(st.one_of(
    st.binary(max_size=30),
    st.builds(lambda junk: b'{"problem": "q' + junk + b'", "solution": "\\\\boxed{1}"}',
              st.binary(max_size=8).filter(lambda b: b'"' not in b and b"\\" not in b and b"\n" not in b))),
    min_size=1, max_size=8))
def test_fuzz_bytes_in_jsonl(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        _check_accounted(path, "math", None)
