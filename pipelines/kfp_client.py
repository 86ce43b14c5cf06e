"""The Kubeflow Pipelines client side of `expo submit`: compile the pipeline and start a run on an
endpoint (the CLI command is expo/cli/submit.py; a TrainJob from inside a task is
expo/cluster/submit_trainjob.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from expo.config import ExpoConfig, from_dict, to_dict
from expo.errors import ExpoError
from pipelines.expo_pipeline import compile_pipeline


def submit(cfg: ExpoConfig, host: str, namespace: str | None = None, experiment: str = "expo",
           run_name: str | None = None, token_env: str = "KF_PIPELINES_TOKEN",
           cache: bool = True, service_account: str | None = None,
           arguments: dict[str, Any] | None = None) -> tuple[str, str]:
    """Compile `cfg`'s pipeline and start a run; returns (run id, run URL). The token is read from
    `token_env` (never from the config, so it cannot land in the compiled YAML or in MLflow).
    `arguments` set root parameters of this run (expo.params names: {"steps": 200}); the others keep
    the config's values, which are the compiled defaults. They are checked against the config first."""
    import kfp

    arguments = dict(arguments or {})
    _check_arguments(cfg, arguments)

    token = os.environ.get(token_env) or None
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg, Path(tmp) / "pipeline.yaml")
        try:
            client = kfp.Client(host=host, existing_token=token, namespace=namespace)
            run = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name or cfg.name, experiment_name=experiment,
                namespace=namespace, enable_caching=cache, service_account=service_account)
        except Exception as exc:  # the client raises many types (HTTP, auth, connection)
            raise ExpoError(f"could not submit to {host}: {_reason(exc)}") from None
    return run.run_id, f"{host.rstrip('/')}/#/runs/details/{run.run_id}"


def _reason(exc: BaseException) -> str:
    """Why the client failed, in words a user acts on: the socket's own ("Connection refused", "Name or
    service not known") when it could not connect, found through urllib3's wrappers (whose message
    repeats the pool, the URL and the retry count), else the first line of the client's message."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.strerror:
            return node.strerror
        reason = getattr(node, "reason", None)  # urllib3's MaxRetryError keeps its cause here
        node = node.__cause__ or node.__context__ or (reason if isinstance(reason, BaseException) else None)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_arguments(cfg: ExpoConfig, arguments: dict[str, Any]) -> None:
    """A bad parameter value fails here with the config's own error, not in a pod an hour later."""
    from expo import params

    lines = params.template([params.BY_NAME[name] for name in arguments], arguments)
    from_dict(ExpoConfig, params.apply(to_dict(cfg), lines)).validate()
