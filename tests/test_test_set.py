"""data.test_source: a test set apart from the training data, read with the same schema, kept out of
training, evaluated by level for every model, and reported apart from the validation split (the
summary's `test` block, the report's own section)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expo.config import DataConfig, load_config
from expo.data import prepare_data
from expo.errors import DataError
from expo.io import read_json, read_jsonl


def math_row(q: str, answer: str, level: int) -> dict:
    return {"problem": q, "solution": f"so \\boxed{{{answer}}}", "level": f"Level {level}", "type": "Algebra"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TRAIN = [math_row(f"What is {i} + {i}?", str(2 * i), i % 3 + 1) for i in range(12)]
# Two new questions and one that is also a training question (whitespace and case aside).
TEST = [math_row("What is 100 + 1?", "101", 1), math_row("What is 7 * 7?", "49", 3),
        math_row("  what is 4 + 4? ", "8", 2)]


def test_test_set_is_written_and_kept_out_of_training(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    test = write_jsonl(tmp_path / "test.jsonl", TEST + [TEST[0]])  # a duplicate inside the test set
    out = tmp_path / "out"
    result = prepare_data(DataConfig(source=str(train), test_source=str(test), eval_fraction=0.25), out)
    test_rows = read_jsonl(out / "test.jsonl")
    assert [r["question"] for r in test_rows] == ["What is 100 + 1?", "What is 7 * 7?", "what is 4 + 4?"]
    assert [r["level"] for r in test_rows] == [1, 3, 2]
    kept = read_jsonl(out / "train.jsonl") + read_jsonl(out / "eval.jsonl")
    questions = {r["question"].lower() for r in kept}
    assert "what is 4 + 4?" not in questions and len(questions) == 11  # 12 minus the one in the test set
    stats = read_json(out / "stats.json")
    assert result.skipped["in_test_set"] == 1
    assert stats["test"] == {"source": str(test), "rows_in": 4, "rows": 3, "levels": {"1": 1, "2": 1, "3": 1},
                             "skipped": {"duplicate": 1}}
    assert set(stats["digest"]) == {"train", "eval", "test"}


def test_test_set_follows_level_filter_and_cap(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    test = write_jsonl(tmp_path / "t.jsonl", [math_row(f"Test {i}?", str(i), i % 3 + 1) for i in range(9)])
    out = tmp_path / "out"
    prepare_data(DataConfig(source=str(train), test_source=str(test), levels=[2, 3], test_max_rows=4), out)
    rows = read_jsonl(out / "test.jsonl")
    assert len(rows) == 4 and {r["level"] for r in rows} <= {2, 3}
    assert read_json(out / "stats.json")["test"]["skipped"] == {"filtered_level": 3, "over_max_rows": 2}


def test_without_test_source_nothing_changes(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "test.jsonl").write_text("{}\n")  # left by an earlier config: must not be taken for ours
    prepare_data(DataConfig(source=str(train)), out)
    assert not (out / "test.jsonl").exists()
    stats = read_json(out / "stats.json")
    assert "test" not in stats and set(stats["digest"]) == {"train", "eval"}


@pytest.mark.parametrize("rows, match", [
    ([{"problem": "x"}], "data.test_source"),  # no answer anywhere: nothing usable, named
    (None, "data.test_source"),  # the file does not exist
])
def test_bad_test_source_is_one_clear_error(tmp_path, rows, match):
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    test = tmp_path / "missing.jsonl" if rows is None else write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=match):
        prepare_data(DataConfig(source=str(train), test_source=str(test)), tmp_path / "out")
    assert not (tmp_path / "out" / "stats.json").exists()  # nothing written


def test_evaluation_covers_the_test_set_by_level(tmp_path, make_model_dir):
    """A tiny real model evaluated on validation and test: metrics.json keeps its validation numbers
    at the top and gains `test` (same shape, every test question); samples are kept apart."""
    from expo.evaluate import evaluate_model
    from expo.stages import build_summary

    data = tmp_path / "data"
    prepare_data(DataConfig(source=str(write_jsonl(tmp_path / "train.jsonl", TRAIN)),
                            test_source=str(write_jsonl(tmp_path / "test.jsonl", TEST)), eval_fraction=0.25),
                 data)
    cfg = load_config(None, ["evaluate.samples=2", "generation.max_new_tokens=4", "evaluate.greedy=false"])
    metrics = evaluate_model(str(make_model_dir(seed=3)), data, cfg, tmp_path / "eval", name="base")
    assert metrics["split"] == "validation" and metrics["questions"] == len(read_jsonl(data / "eval.jsonl"))
    test = metrics["test"]
    assert test["split"] == "test" and test["source"] == str(tmp_path / "test.jsonl")
    assert test["questions"] == 3 and set(test["by_level"]) == {"1", "2", "3"}
    assert len(read_jsonl(tmp_path / "eval" / "test_samples.jsonl")) == 3 * 2
    summary = build_summary({"base": metrics})
    assert set(summary["models"]["base"]["levels"]) == set(metrics["by_level"])  # validation, as before
    assert summary["test"]["source"] == str(tmp_path / "test.jsonl")
    assert set(summary["test"]["models"]["base"]["levels"]) == {"1", "2", "3"}
    assert summary["evaluated_on"] == {"models": "validation", "test": f"test: {tmp_path / 'test.jsonl'}"}


def test_report_names_the_set_of_each_table(tmp_path):
    from expo.report import write_report
    from tests.test_report import _metrics

    base = {**_metrics("base", [2, 1, 0, 0]), "split": "validation"}
    base["test"] = {**_metrics("base", [1, 1, 1, 0]), "split": "test", "source": "math500.jsonl"}
    html = write_report(tmp_path, {"base": base}, title="t").read_text()
    assert 'id="accuracy"' in html and 'id="test_accuracy"' in html
    assert "Test set: accuracy by level (math500.jsonl)" in html and "validation split" in html
    assert (tmp_path / "test_accuracy_by_level.png").is_file()
    plain = write_report(tmp_path / "plain", {"base": _metrics("base", [2, 1, 0, 0])}, title="t").read_text()
    assert 'id="test_accuracy"' not in plain and "validation split" not in plain
