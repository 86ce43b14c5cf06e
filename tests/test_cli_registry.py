"""`expo models` and `expo promote` end to end through the CLI dispatcher, against the session's real
MLflow server (URI from --tracking-uri and from $MLFLOW_TRACKING_URI) and against the SQLite store of a
run folder found with no setting at all (what a user has after `expo run`)."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from expo import registry as R
from expo import tracking as T
from expo.cli import main
from expo.cli.registered_models import format_table
from expo.config import RegisterConfig, TrackingConfig

pytestmark = pytest.mark.usefixtures("no_tracking_env", "only_registry_commands")


@pytest.fixture
def only_registry_commands(monkeypatch):
    """The real dispatcher (`main`), building only these two sub-commands: the others import heavy
    stages (and may be unfinished) that these tests do not need."""
    import expo.cli

    keep = {name: expo.cli.COMMANDS[name] for name in ("models", "promote")}
    monkeypatch.setattr(expo.cli, "COMMANDS", keep)


@pytest.fixture
def two_versions(mlflow_server, make_model_dir, unique_name):
    track = TrackingConfig(tracking_uri=mlflow_server, experiment=unique_name)
    with T.stage_run(T.pipeline_key({"cli": unique_name}), "register", track) as run:
        pass
    for seed, value in ((80, 0.25), (81, 0.5)):
        R.log_and_register(make_model_dir(seed), unique_name, RegisterConfig(), {"expo.arm": f"arm{seed}"},
                           {"hardest_level_pass@1": value}, run.run_id, tracking=track)
    R.gate_and_promote(unique_name, 1, RegisterConfig(), tracking=track)
    return unique_name


def test_models_lists_versions_aliases_and_metrics(mlflow_server, two_versions, capsys):
    assert main(["models", two_versions, "--tracking-uri", mlflow_server]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["version", "aliases", "arm", "gate", "hardest_level_pass_at_1", "created"]
    assert lines[1].split()[:5] == ["2", "candidate", "arm81", "-", "0.5000"]
    assert lines[2].split()[:5] == ["1", "champion", "arm80", "promoted", "0.2500"]
    assert lines[3] == f"store: {mlflow_server} (--tracking-uri)"
    assert max(map(len, lines[:3])) <= 100


def test_models_wide_and_json_show_everything(mlflow_server, two_versions, capsys):
    import json

    assert main(["models", two_versions, "--tracking-uri", mlflow_server, "--wide"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[-3:] == ["created", "run_id", "fingerprint"]
    assert main(["models", two_versions, "--tracking-uri", mlflow_server, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == [2, 1]
    assert rows[0]["aliases"] == ["candidate"] and rows[1]["aliases"] == ["champion"]  # lists, not text
    assert rows[0]["hardest_level_pass_at_1"] == 0.5 and len(rows[0]["run_id"]) == 32


def test_after_a_local_run_the_run_folders_store_is_found_and_no_store_is_created(
        tmp_path, monkeypatch, _sqlite_template, make_model_dir, unique_name, capsys):
    """`expo run` leaves expo-runs/mlflow.db (shared by the run folders there) and expo-runs/<name>/
    expo-run.json naming it; from the working folder, with no variable set, `expo models` lists the
    version and `expo promote` moves an alias; ./mlflow.db never appears."""
    import shutil

    run_dir = tmp_path / "expo-runs" / "expo-embedded"
    run_dir.mkdir(parents=True)
    shutil.copy2(_sqlite_template, run_dir.parent / "mlflow.db")
    uri = f"sqlite:///{run_dir.parent / 'mlflow.db'}"
    (run_dir / "expo-run.json").write_text(f'{{"tracking_uri": "{uri}"}}')
    track = TrackingConfig(tracking_uri=uri, experiment=unique_name)
    with T.stage_run(T.pipeline_key({"cli": unique_name}), "register", track) as run:
        pass
    metrics = {"hardest_level_pass@1": 0.25, **{f"level{lv}_{k}": 0.5 for lv in range(1, 6)
                                                for k in ("pass@1", "pass@k")}}
    info = R.log_and_register(make_model_dir(90), unique_name, RegisterConfig(), {"expo.arm": "exp-grpo"},
                              metrics, run.run_id, tracking=track)
    R.gate_and_promote(unique_name, info.version, RegisterConfig(), tracking=track)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exported it
    monkeypatch.chdir(tmp_path)

    assert main(["models", unique_name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["1", "candidate,champion", "exp-grpo", "promoted"]
    assert max(map(len, lines[:-1])) <= 100  # 11 metrics do not fit: the table says so
    assert lines[-2].startswith("(") and "--wide or --json" in lines[-2]
    assert lines[-1] == f"store: {uri} (last run expo-runs/expo-embedded)"
    assert main(["promote", unique_name, "1", "--alias", "staging"]) == 0
    assert capsys.readouterr().out.strip() == f"{unique_name}@staging -> version 1 (was no version)"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlflow.db.lock").exists()

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no run folder below, no ./mlflow.db: one line, no store
    assert main(["models", unique_name]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("expo models: error: no tracking store found") and len(err.splitlines()) == 1
    assert not (tmp_path / "elsewhere" / "mlflow.db").exists()


def test_promote_via_env_uri_records_user_and_reason(mlflow_server, two_versions, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("USER", "carol")
    assert main(["promote", two_versions, "2", "--reason", "wins on level 5"]) == 0
    assert capsys.readouterr().out.strip() == f"{two_versions}@champion -> version 2 (was version 1)"
    client = MlflowClient(mlflow_server)
    assert client.get_registered_model(two_versions).aliases["champion"] == "2"
    tags = client.get_model_version(two_versions, "2").tags
    assert tags["expo.promoted.champion.by"] == "carol"
    assert tags["expo.promoted.champion.reason"] == "wins on level 5"
    assert main(["promote", two_versions, "1", "--alias", "staging"]) == 0
    assert client.get_registered_model(two_versions).aliases["staging"] == "1"


def test_history_shows_who_moved_which_alias_when_and_why(mlflow_server, two_versions, capsys,
                                                           monkeypatch):
    import json

    monkeypatch.setenv("USER", "carol")
    assert main(["promote", two_versions, "2", "--reason", "wins on level 5", "--tracking-uri",
                 mlflow_server]) == 0
    capsys.readouterr()
    assert main(["models", two_versions, "--history", "--tracking-uri", mlflow_server]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["when", "alias", "version", "was", "by", "decision", "why"]
    newest, gate = lines[1].split(), lines[2].split()
    assert newest[1:] == ["champion", "2", "1", "carol", "promoted", "wins", "on", "level", "5"]
    assert time.strptime(newest[0], "%Y-%m-%dT%H:%M:%SZ")
    # the gate promoted version 1 when nobody held the alias: its metric, the values, the margin
    assert gate[1:] == ["champion", "1", "-", "gate", "promoted", "hardest_level_pass@1", "0.25", "vs", "-",
                        "(margin", "0.0)"]
    assert lines[3] == f"store: {mlflow_server} (--tracking-uri)"

    assert main(["models", two_versions, "--history", "--json", "--tracking-uri", mlflow_server]) == 0
    events = json.loads(capsys.readouterr().out)
    assert events[0] == {"at": newest[0], "alias": "champion", "version": 2, "from_version": 1, "by": "carol",
                         "decision": "promoted", "reason": "wins on level 5"}
    assert main(["models", two_versions, "--history", "--wide", "--tracking-uri", mlflow_server]) == 2
    assert "--history lists promotion records" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["promote", "{name}", "7"], "no version 7 of registered model"),
    (["models", "{name}-absent"], "no registered model"),
])
def test_bad_input_is_one_line_and_exit_2(mlflow_server, two_versions, capsys, argv, message):
    argv = [a.format(name=two_versions) for a in argv] + ["--tracking-uri", mlflow_server]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_format_table_aligns_and_marks_missing():
    rows = [{"version": 2, "aliases": "", "arm": "grpo", "gate": "", "m": None, "created": "c", "run_id": "r"},
            {"version": 1, "aliases": "champion", "arm": "exp-grpo", "gate": "promoted", "m": 0.123456,
             "created": "c", "run_id": "r"}]
    lines = format_table(rows).splitlines()
    assert lines[1].split() == ["2", "-", "grpo", "-", "-", "c"]  # empty and None cells are "-"
    assert lines[2].split() == ["1", "champion", "exp-grpo", "promoted", "0.1235", "c"]
    assert lines[0].index("arm") == lines[2].index("exp-grpo")  # columns aligned
    assert format_table(rows, wide=True).splitlines()[2].split()[-3:] == ["c", "r", "-"]  # --wide: run id too
    assert format_table([]) == "(no versions)"
    assert format_table([{**rows[1], "aliases": ["candidate", "champion"]}]).splitlines()[1].split()[1] == \
        "candidate,champion"  # a list of aliases is one cell


def test_format_table_fits_the_width_hardest_level_first():
    row = {"version": 1, "aliases": "candidate,champion", "arm": "exp-grpo", "gate": "already-champion",
           **{f"level{lv}_pass_at_1": 0.5 for lv in range(1, 6)}, "hardest_level_pass_at_1": 0.25,
           "created": "2026-12-01 12:00", "run_id": "0123456789abcdef0123456789abcdef"}
    lines = format_table([row]).splitlines()
    assert max(map(len, lines)) <= 100
    assert lines[0].split()[4] == "hardest_level_pass_at_1"  # the gate's metric is kept first
    shown = len(lines[0].split()) - 5  # fixed 4 + created
    assert lines[-1] == f"({6 - shown} more metric columns: --wide or --json)"
    assert len(format_table([row], wide=True).splitlines()[0].split()) == 4 + 6 + 3
