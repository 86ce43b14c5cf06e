"""Shared pytest fixtures. Each block names its owner; keep blocks small and import from helper modules."""

# --- MLflow: a session-scoped real server and per-test SQLite stores ------------------------------
from tests.mlflow_server import (  # noqa: F401
    _sqlite_template,
    make_model_dir,
    mlflow_server,
    no_tracking_env,
    sqlite_store,
    unique_name,
)


def pytest_collection_finish(session):  # start the MLflow server early when a selected test needs it
    from tests.mlflow_server import start_early

    start_early(session.items)
# --- end MLflow --------------------------------------------------------------------------------------

# --- Real tokenizers and the real SmolLM2 chat model --------------------------------------------------
from tests.realmodel import llama3_tokenizer, smollm2_dir, smollm2_tokenizer  # noqa: E402, F401
# --- end real model ----------------------------------------------------------------------------------
