"""expo.io: atomic writes leave the usual file mode and nothing half-written; JSON and JSONL round-trip."""

import os
import stat

import pytest

from expo.io import atomic_write_text, read_json, read_jsonl, write_json, write_jsonl


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "hello\n")
    assert path.read_text() == "hello\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600
    assert os.listdir(path.parent) == ["out.txt"]  # no temporary file left beside it


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old\n")
    with pytest.raises(TypeError):
        atomic_write_text(path, b"not text")  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_json_and_jsonl_round_trip(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1.5, None]})
    assert read_json(tmp_path / "a.json") == {"a": [1.5, None], "b": 1}
    rows = [{"id": "x", "text": "é"}, {"id": "y", "text": ""}]
    assert write_jsonl(tmp_path / "r.jsonl", rows) == 2
    assert read_jsonl(tmp_path / "r.jsonl") == rows
