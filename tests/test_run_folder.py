"""expo.run_folder: which tracking store `expo models` / `expo promote` use, in which order, and that a
store that is not there is an error rather than a new empty file."""

from __future__ import annotations

import json
import os
import time

import pytest

from expo.errors import TrackingError
from expo.run_folder import RUN_RECORD, find_tracking_uri, last_run

pytestmark = pytest.mark.usefixtures("no_tracking_env")


def _run(root, name, uri=None, db=True, age_s=0.0):
    """A run folder under root/expo-runs with a mlflow.db and/or an expo-run.json, aged by age_s."""
    folder = root / "expo-runs" / name
    folder.mkdir(parents=True)
    marks = []
    if db:
        (folder / "mlflow.db").write_bytes(b"")
        marks.append(folder / "mlflow.db")
    if uri is not None:
        (folder / RUN_RECORD).write_text(json.dumps({"tracking_uri": uri}))
        marks.append(folder / RUN_RECORD)
    for mark in marks:
        stamp = time.time() - age_s
        os.utime(mark, (stamp, stamp))
    return folder


def test_the_newest_run_folder_wins_and_its_record_names_the_store(tmp_path):
    old = _run(tmp_path, "old", age_s=100)
    new = _run(tmp_path, "new", uri=f"sqlite:///{tmp_path / 'expo-runs' / 'new' / 'mlflow.db'}")
    assert last_run(tmp_path / "expo-runs") == new
    uri, why = find_tracking_uri(cwd=tmp_path)
    assert uri == f"sqlite:///{new / 'mlflow.db'}" and why == "last run expo-runs/new"
    # --run picks another folder; one without a record falls back to its own mlflow.db
    assert find_tracking_uri(run=str(old), cwd=tmp_path) == (f"sqlite:///{(old / 'mlflow.db').resolve()}",
                                                             f"run folder {old}")


@pytest.mark.parametrize("how, expected_why", [
    ({"tracking_uri": "http://127.0.0.1:5000"}, "--tracking-uri"),  # explicit beats everything
    ({"env": "http://mlflow:5000"}, "$MLFLOW_TRACKING_URI"),  # the environment beats the last run
])
def test_explicit_and_environment_uris_come_first(tmp_path, monkeypatch, how, expected_why):
    _run(tmp_path, "r1")
    if "env" in how:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", how["env"])
    uri, why = find_tracking_uri(how.get("tracking_uri", ""), cwd=tmp_path)
    assert why == expected_why and uri.startswith("http://")


def test_a_recorded_server_uri_is_used_as_it_is(tmp_path):
    _run(tmp_path, "r1", uri="http://mlflow.example:5000", db=False)
    assert find_tracking_uri(cwd=tmp_path) == ("http://mlflow.example:5000", "last run expo-runs/r1")


@pytest.mark.parametrize("setup, kwargs, message", [
    (None, {}, "no tracking store found"),  # nothing anywhere
    ("empty-run", {"run": "{tmp}/expo-runs/x"}, "has no expo-run.json and no mlflow.db"),
    ("gone-db", {}, "does not exist"),  # the record names a store that was deleted
    (None, {"tracking_uri": "sqlite:///{tmp}/nope/mlflow.db"}, "does not exist"),
])
def test_a_missing_store_is_an_error_and_nothing_is_created(tmp_path, setup, kwargs, message):
    if setup == "empty-run":
        (tmp_path / "expo-runs" / "x").mkdir(parents=True)
    elif setup == "gone-db":
        _run(tmp_path, "r1", uri=f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}", db=False)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    kwargs = {k: v.format(tmp=tmp_path) for k, v in kwargs.items()}
    with pytest.raises(TrackingError, match=message) as err:
        find_tracking_uri(cwd=tmp_path, **kwargs)
    assert "\n" not in str(err.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_mlflow_db_in_the_folder_is_the_last_resort(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    db = (tmp_path / "mlflow.db").resolve()
    assert find_tracking_uri(cwd=tmp_path) == (f"sqlite:///{db}", "./mlflow.db")
