"""`expo submit`: compile the pipeline and start a run on a Kubeflow Pipelines endpoint."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from expo.cli import add_config_arguments

if TYPE_CHECKING:
    from expo.config import ExpoConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--host", required=True, metavar="URL",
                        help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    parser.add_argument("--namespace", metavar="NS", help="Kubeflow profile namespace (multi-user KFP)")
    parser.add_argument("--experiment", metavar="NAME", default="expo", help="KFP experiment (default: expo)")
    parser.add_argument("--run-name", metavar="NAME", help="display name of the run (default: config name)")
    parser.add_argument("--token-env", metavar="VAR", default="KF_PIPELINES_TOKEN",
                        help="environment variable holding a bearer token (default KF_PIPELINES_TOKEN); "
                             "without it, the kubeconfig's credentials are used")
    parser.add_argument("--service-account", metavar="NAME",
                        help="Kubernetes service account for the run's pods (manifests: expo-pipeline)")
    parser.add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    parser.add_argument("--param", dest="params", metavar="NAME=VALUE", action="append", default=[],
                        help="set a root parameter of this run without recompiling, e.g. --param steps=200 "
                             "or --param train.steps=200 (repeatable; `expo compile` lists them)")


def run(args: argparse.Namespace) -> int:
    from expo.cli.plan import preflight
    from expo.config import load_pipeline_config
    from expo.params import parse_cli
    from pipelines.kfp_client import submit

    cfg = load_pipeline_config(args.config, args.overrides)
    arguments = parse_cli(args.params)
    preflight(_as_run(cfg, arguments), "submit")  # refused before anything reaches the cluster
    run_id, url = submit(cfg, host=args.host, namespace=args.namespace, experiment=args.experiment,
                         run_name=args.run_name, token_env=args.token_env, cache=not args.no_cache,
                         service_account=args.service_account, arguments=arguments)
    print(f"submitted run {run_id}\n{url}")
    return 0


def _as_run(cfg: ExpoConfig, arguments: dict[str, Any]) -> ExpoConfig:
    """The config this run will see: `--param` values (a model source, arms, G) over the compiled ones."""
    from expo import params
    from expo.config import ExpoConfig, from_dict, to_dict

    if not arguments:
        return cfg
    lines = params.template([params.BY_NAME[name] for name in arguments], arguments)
    run_cfg = from_dict(ExpoConfig, params.apply(to_dict(cfg), lines))
    run_cfg.validate()
    return run_cfg
