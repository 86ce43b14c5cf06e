"""expo.artifacts: the model card, the one fingerprint of a model folder, and the required-table reader."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from expo.artifacts import (META_FILE, card_path, find_model_folder, fingerprint, hash_file, read_card, read_table,
                             write_card)
from expo.errors import DataError, ModelError
from expo.io import write_jsonl


def test_fingerprint_follows_content_not_location(make_model_dir, tmp_path):
    model_dir = make_model_dir(0)
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    assert fingerprint(copy) == fingerprint(model_dir)
    (copy / "README.md").write_text("notes")  # not a model file
    assert fingerprint(copy) == fingerprint(model_dir)
    assert fingerprint(make_model_dir(1)) != fingerprint(model_dir)  # other weights
    config = (copy / "config.json").read_text()
    (copy / "config.json").write_text(config.replace("\"rms_norm_eps\"", "\"rms_norm_eps\" ", 1))
    assert fingerprint(copy) != fingerprint(model_dir)
    with pytest.raises(ModelError, match="does not exist"):
        fingerprint(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no weight, config or tokenizer files"):
        fingerprint(tmp_path / "empty")


def test_fingerprint_ignores_checkpoints_and_the_card(make_model_dir, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(make_model_dir(0), a)
    fp = fingerprint(a)
    assert len(fp) == 64 and int(fp, 16) >= 0  # a full sha256, in hex
    (a / "checkpoints" / "checkpoint-1" / "extra.bin").write_bytes(b"y")
    assert fingerprint(a) == fp  # resumable training state is not the model
    assert fingerprint(make_model_dir(0, arm="grpo")) == fp  # the card differs only
    write_card(a, {"arm": "sft", "fingerprint": "anything"})
    assert fingerprint(a) == fp


def test_fingerprint_is_sha256_over_names_and_bytes(tmp_path):
    """Worked by hand on a folder of two files: name, NUL, bytes, NUL for each, sorted by name."""
    (tmp_path / "model.safetensors").write_bytes(b"w")
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    expected = hashlib.sha256(b"config.json\0{}\0model.safetensors\0w\0").hexdigest()
    assert fingerprint(tmp_path) == expected


def test_hash_file_streams_in_chunks_like_one_read(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 40_000  # 10 MB: more than two chunks
    path.write_bytes(data)
    assert hash_file(path).hexdigest() == hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256(b"prefix")
    assert hash_file(path, digest) is digest
    assert digest.hexdigest() == hashlib.sha256(b"prefix" + data).hexdigest()


def test_find_model_folder_takes_the_shallowest_config(tmp_path):
    nested = tmp_path / "art" / "model" / "weights"
    nested.mkdir(parents=True)
    (nested / "config.json").write_text("{}")
    assert find_model_folder(tmp_path / "art") == nested
    (tmp_path / "art" / "model" / "config.json").write_text("{}")  # one level up wins
    assert find_model_folder(tmp_path / "art") == tmp_path / "art" / "model"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="models:/x/1.*no config.json"):
        find_model_folder(tmp_path / "empty", "models:/x/1")


def test_model_card_round_trip(tmp_path):
    assert read_card(tmp_path) == {}  # no card: a hand-made or hub model
    write_card(tmp_path, {"base": "builtin:tiny", "arm": None})
    assert card_path(tmp_path) == tmp_path / META_FILE
    assert read_card(tmp_path) == {"base": "builtin:tiny", "arm": None}


@pytest.mark.parametrize("rows, kwargs, error", [
    (None, {}, r"data folder '.*' has no train\.jsonl$"),  # no file
    (None, {"hint": " (run the data stage first)"}, r"has no train\.jsonl \(run the data stage first\)"),
    (None, {"kind": "explanations"}, r"^explanations folder '.*' has no train\.jsonl"),
    ([], {"nonempty": True}, r"train\.jsonl has no rows"),
    ([{"id": "1", "question": "q"}], {"keys": ("id", "question", "answer")},
     r"train\.jsonl: row 1 lacks one of 'id', 'question', 'answer'"),
    ([{"id": "1", "answer": "a"}, {"answer": "b"}], {"keys": ("id",)}, r"row 2 lacks one of 'id'"),
])
def test_read_table_errors_name_the_folder_and_file(tmp_path, rows, kwargs, error):
    if rows is not None:
        write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=error):
        read_table(tmp_path, "train.jsonl", **kwargs)


@pytest.mark.parametrize("rows, kwargs", [
    ([], {}),  # an empty table is fine unless `nonempty`
    ([{"id": "1", "x": 2}], {"keys": ("id",)}),  # extra keys are fine
    ([{"x": 2}], {}),  # no keys asked for, none checked
])
def test_read_table_returns_the_rows(tmp_path, rows, kwargs):
    write_jsonl(tmp_path / "train.jsonl", rows)
    assert read_table(tmp_path, "train.jsonl", **kwargs) == rows
