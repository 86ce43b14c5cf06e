"""`expo models` and `expo promote` end to end through the CLI dispatcher, against the session's real
MLflow server (URI from --tracking-uri and from $MLFLOW_TRACKING_URI)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from expo import registry as R
from expo import tracking as T
from expo.cli import main
from expo.cli.models import format_table
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
    assert lines[0].split() == ["version", "aliases", "arm", "gate", "hardest_level_pass_at_1", "created",
                                "run_id"]
    assert lines[1].split()[:5] == ["2", "candidate", "arm81", "-", "0.5000"]
    assert lines[2].split()[:5] == ["1", "champion", "arm80", "promoted", "0.2500"]


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
    assert lines[1].split() == ["2", "-", "grpo", "-", "-", "c", "r"]  # empty and None cells are "-"
    assert lines[2].split() == ["1", "champion", "exp-grpo", "promoted", "0.1235", "c", "r"]
    assert lines[0].index("arm") == lines[2].index("exp-grpo")  # columns aligned
    assert format_table([]) == "(no versions)"
