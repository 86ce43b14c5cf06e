"""Security checks that no other test file makes: a planted secret is written nowhere in a
whole run folder (MLflow store, artifacts, KFP outputs, checkpoints, report, logs), credential-looking
config values never reach the MLflow store, and the shipped configs keep the unsafe loading options off.

Covered elsewhere and only named here (docs/reliability.md lists them): the compiled pipeline YAML
(test_pipeline_compile.py::test_no_secret_value_in_compiled_yaml), trust_remote_code and pickle weights
at load time (test_modeling.py), the run name escaping the run folder (test_config.py), the image user
(test_dockerfile.py) and pod security contexts (test_manifests.py).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from expo.config import ModelConfig, load_config
from tests.test_reliability_pipeline import PLANTED, SECRET_ENV, killed_and_resumed_run

ROOT = Path(__file__).resolve().parent.parent


def files_containing(root: Path, value: str) -> list[Path]:
    """Every file under `root` whose bytes hold `value` (UTF-8 or UTF-16, as some stores write)."""
    needles = (value.encode("utf-8"), value.encode("utf-16-le"))
    return [path for path in sorted(root.rglob("*"))
            if path.is_file() and not path.is_symlink() and any(n in path.read_bytes() for n in needles)]


def test_the_scan_finds_a_planted_value_anywhere(tmp_path: Path) -> None:
    """The scanner itself: a value inside a nested file and inside a SQLite row is found."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "log.txt").write_text(f"token={PLANTED}\n")
    (tmp_path / "clean.txt").write_text("nothing here")
    db = sqlite3.connect(tmp_path / "store.db")
    db.execute("create table params (key text, value text)")
    db.execute("insert into params values (?, ?)", ("password", PLANTED))
    db.commit()
    db.close()
    assert files_containing(tmp_path, PLANTED) == [tmp_path / "a" / "b" / "log.txt", tmp_path / "store.db"]


@pytest.mark.fault
@pytest.mark.timeout(3600)  # two smoke pipelines; the default 600 s is per test
def test_planted_secret_is_nowhere_in_the_run_folder_or_logs(tmp_path_factory) -> None:
    """`expo run` with credentials in its environment (MLflow password, object-store key, HF token, KFP
    token), killed once and run again: no file of the run folder and no line it printed holds them."""
    run = killed_and_resumed_run(tmp_path_factory)
    assert set(SECRET_ENV) == {"MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN",
                               "KF_PIPELINES_TOKEN"}
    assert run.rc_after == 0
    # The folder holds what is worth scanning: the MLflow store, KFP outputs, checkpoints and the report.
    for part in ("mlflow.db", "kfp", "workspace/checkpoints", "report.html", "summary.json"):
        assert (run.out / part).exists(), part
    assert files_containing(run.out, PLANTED) == []
    for log in run.logs:
        assert log.stat().st_size > 0 and PLANTED not in log.read_text(errors="replace")


def test_credential_config_values_never_reach_the_mlflow_store(sqlite_store: str, tmp_path: Path) -> None:
    """Config values that look like credentials (by key, or userinfo in a URI) are redacted in MLflow
    params and in the logged config.yaml: nothing in the database or the artifact folder holds them."""
    from expo import tracking
    from expo.config import TrackingConfig

    cfg = TrackingConfig(tracking_uri=sqlite_store)
    config = {"name": "sec", "tracking": {"tracking_uri": f"https://user:{PLANTED}@mlflow.example"},
              "object_store": {"secret_access_key": PLANTED, "api_key": PLANTED, "endpoint": "s3.example"}}
    with tracking.stage_run("security-key", "prepare_data", cfg) as run:
        params = tracking.log_config(config)
    assert params["object_store.endpoint"] == "s3.example"  # ordinary values are kept
    assert params["object_store.api_key"] == tracking.REDACTED
    assert params["tracking.tracking_uri"] == "https://mlflow.example"
    assert list(tmp_path.glob(f"mlartifacts/**/{run.run_id}/**/config.yaml"))  # the YAML was logged
    assert files_containing(tmp_path, PLANTED) == []  # mlflow.db and mlartifacts/ live in tmp_path


def test_unsafe_loading_is_off_by_default_and_in_every_shipped_config() -> None:
    """trust_remote_code runs code from a model repository; pickle weights run code when unpickled. Both
    stay off unless a user's config turns them on (load_model then warns / allows: test_modeling.py)."""
    assert ModelConfig().trust_remote_code is False
    assert ModelConfig().allow_pickle_weights is False
    shipped = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "expo" / "toy" / "defaults.yaml"]
    assert len(shipped) > 5
    for path in shipped:
        model = load_config(path).model
        assert not model.trust_remote_code and not model.allow_pickle_weights, path
        assert "trust_remote_code" not in (yaml.safe_load(path.read_text()) or {}).get("model", {}), path


def test_a_password_in_the_tracking_uri_is_never_printed(mlflow_server: str, unique_name: str, capfd) -> None:
    """MLflow prints "View run <name> at: <tracking URI>/#/..." when a run ends, userinfo included;
    expo.tracking turns that off, so a credential in MLFLOW_TRACKING_URI stays out of task logs."""
    from expo import tracking
    from expo.config import TrackingConfig

    host = mlflow_server.removeprefix("http://")
    cfg = TrackingConfig(tracking_uri=f"http://user:{PLANTED}@{host}", experiment=unique_name)
    with tracking.stage_run(f"key-{unique_name}", "prepare_data", cfg) as run:
        tracking.log_config({"name": "x"})
    tracking.close_parent(f"key-{unique_name}", "FINISHED", cfg)
    printed = capfd.readouterr()
    assert run.run_id and PLANTED not in printed.out + printed.err
