"""Tests for `expo data` through `expo.cli.main`: flags over config, summary, one-line errors."""

from __future__ import annotations

import json

import pytest

import expo.cli
from expo.io import read_json, read_jsonl


@pytest.fixture(autouse=True)
def only_data_command(monkeypatch):
    # build_parser imports every sub-command; keep these tests independent of the other stages' modules.
    monkeypatch.setattr(expo.cli, "COMMANDS", {"data": expo.cli.COMMANDS["data"]})


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ROWS = [{"problem": f"What is {i} * 3?", "solution": f"\\boxed{{{3 * i}}}", "level": f"Level {i % 5 + 1}",
         "type": "Prealgebra"} for i in range(30)]


def test_data_writes_outputs_and_prints_summary(tmp_path, capsys):
    src = write_rows(tmp_path / "m.jsonl", ROWS)
    rc = expo.cli.main(["data", "--source", src, "--output", str(tmp_path / "out"), "--levels", "4,5",
                        "--eval-fraction", "0.25", "--seed", "2", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0
    stats = read_json(tmp_path / "out" / "stats.json")
    assert stats["rows_out"] == 12 and stats["skipped"] == {"filtered_level": 18}
    assert stats["eval"] == 4  # 6 rows per level, round(6 * 0.25) = 2 each
    assert out.strip() == f"12 of 30 rows kept (train 8, eval 4, 18 dropped) -> {tmp_path / 'out'}"
    assert "filtered by level" in err
    assert {r["level"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")} == {4, 5}


def test_flags_override_config_and_set(tmp_path, capsys):
    src = write_rows(tmp_path / "m.jsonl", ROWS)
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  source: {src}\n  eval_fraction: 0.5\n  max_rows: 20\n")
    rc = expo.cli.main(["data", "--config", str(config), "--set", "data.max_rows=10",
                        "--eval-fraction", "0.1", "--output", str(tmp_path / "out")])
    assert rc == 0
    stats = read_json(tmp_path / "out" / "stats.json")
    assert stats["rows_out"] == 10  # --set beat the file
    assert stats["eval"] < 5  # --eval-fraction 0.1 beat the file's 0.5


def test_custom_columns_flag(tmp_path):
    src = write_rows(tmp_path / "c.jsonl", [{"prompt": "Two plus two?", "target": 4}])
    rc = expo.cli.main(["data", "--source", src, "--output", str(tmp_path / "out"), "--schema", "custom",
                        "--column", "question=prompt", "--column", "answer=target"])
    assert rc == 0
    assert read_jsonl(tmp_path / "out" / "train.jsonl")[0]["answer"] == "4"


def _one_line_error(rc, capsys):
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("expo data: error: ")
    return err.strip()


def test_only_bad_rows_is_one_line_and_nonzero(tmp_path, capsys):
    src = write_rows(tmp_path / "bad.jsonl", [{"problem": f"q{i}", "solution": "no box"} for i in range(4)])
    rc = expo.cli.main(["data", "--source", src, "--output", str(tmp_path / "out")])
    assert _one_line_error(rc, capsys).endswith(
        f"no usable rows in {src}: 4 no extractable answer (see docs/configuration.md, section data)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rows, fraction, warned", [
    (ROWS[:1], "0.2", True),    # one row: nothing to hold out
    (ROWS[:5], "0.2", True),    # five rows, each its own level: still one per level
    (ROWS[:10], "0.2", False),  # two per level: one of each held out
    (ROWS[:1], "0", False),     # no validation split asked for: nothing to say
])
def test_an_empty_validation_split_is_one_warning(tmp_path, capsys, rows, fraction, warned):
    src = write_rows(tmp_path / "few.jsonl", rows)
    rc = expo.cli.main(["data", "--source", src, "--output", str(tmp_path / "out"), "--eval-fraction",
                        fraction, "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0 and out.startswith(f"{len(rows)} of {len(rows)} rows kept")
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == ([f"expo data: warning: the validation split (eval.jsonl) is empty: {len(rows)} "
                         f"row{'s' if len(rows) > 1 else ''} kept, and a level needs at least 2 to hold "
                         f"one out (data.eval_fraction {float(fraction)})"] if warned else [])


def test_malformed_file_names_file_and_line(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"problem": "a", "solution": "\\\\boxed{1}"}\n{broken\n')
    rc = expo.cli.main(["data", "--source", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "out")])
    assert "m.jsonl line 2: not valid JSON" in _one_line_error(rc, capsys)


def test_out_of_range_level_is_a_config_error(tmp_path, capsys):
    rc = expo.cli.main(["data", "--source", "builtin:math-sample", "--output", str(tmp_path / "o"),
                        "--levels", "7"])
    assert "config key 'data.levels'" in _one_line_error(rc, capsys)


def test_bad_flag_values_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        expo.cli.main(["data", "--output", str(tmp_path), "--levels", "four"])
    assert info.value.code == 2 and "expected levels like 4,5" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        expo.cli.main(["data", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for flag in ("--source", "--output", "--config", "--set", "--schema", "--column", "--levels",
                 "--eval-fraction", "--seed", "--max-rows", "--hub-config", "--hub-split", "--no-progress"):
        assert flag in out
    assert "builtin:math-sample" in out and "save_to_disk" in out


def _ladder_config(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", [{"input": f"a {i}?", "target": float(i)} for i in range(10)])
    b = write_rows(tmp_path / "b.jsonl",
                   [{"question": f"b {i}?", "answer": f"#### {i}.0"} for i in range(10)])
    config = tmp_path / "ladder.yaml"
    config.write_text("data:\n  eval_fraction: 0.2\n  sources:\n"
                      f"    - {{source: {a}, columns: {{question: input, answer: target}}, level: 1,"
                      " max_rows: 5}\n"
                      f"    - {{source: {b}, schema: gsm8k, level: 2}}\n")
    return config


def test_config_with_sources(tmp_path, capsys):
    rc = expo.cli.main(["data", "--config", str(_ladder_config(tmp_path)), "--output", str(tmp_path / "out"),
                        "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0 and out.strip().startswith("15 of 20 rows kept (train 12, eval 3, 5 dropped)")
    assert "data.sources[0]  level 1" in err and "data.sources[1]  level 2" in err
    stats = read_json(tmp_path / "out" / "stats.json")
    assert stats["levels"] == {"1": {"train": 4, "eval": 1}, "2": {"train": 8, "eval": 2}}
    rows = read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(tmp_path / "out" / "eval.jsonl")
    assert {r["answer"] for r in rows if r["level"] == 2} == {str(i) for i in range(10)}  # "#### 3.0" -> 3


def test_source_flag_replaces_the_config_sources(tmp_path):
    src = write_rows(tmp_path / "m.jsonl", ROWS)
    rc = expo.cli.main(["data", "--config", str(_ladder_config(tmp_path)), "--source", src,
                        "--output", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    assert read_json(tmp_path / "out" / "stats.json")["sources"][0]["key"] == "data.source"


def test_source_beside_sources_in_a_config_is_one_line(tmp_path, capsys):
    config = _ladder_config(tmp_path)
    config.write_text(config.read_text() + "  source: x.jsonl\n")
    rc = expo.cli.main(["data", "--config", str(config), "--output", str(tmp_path / "out")])
    assert "config key 'data.sources': cannot be combined with 'data.source'" in _one_line_error(rc, capsys)
