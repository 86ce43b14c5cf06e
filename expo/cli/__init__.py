"""The `expo` command: one sub-command per module in this package.

Each sub-command module exposes `add_arguments(parser)` and `run(args) -> int`; its one-line help is
its entry in `COMMANDS`.
These modules import nothing heavy at the top: each imports its stage (torch, mlflow, kfp) inside
`run`, so `expo --help` stays fast and one stage's dependencies cost nothing to the others.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from expo import __version__
from expo.errors import ExpoError

_PACKAGE = Path(__file__).resolve().parent.parent
# Library warnings are logged under the name logging.captureWarnings uses; with no handler configured
# (every command but `expo run`, which sends logging to its log file, and `expo train`) they are
# dropped instead of reaching logging's last-resort handler on stderr.
logging.getLogger("py.warnings").addHandler(logging.NullHandler())

# command name -> (module, one-line help): `expo model` is cli/prepare_model.py, `expo models`
# cli/registered_models.py. Order is the order `expo --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("expo.cli.run",
            "run the whole pipeline locally through kfp.local (embedded default with no arguments)"),
    "compile": ("expo.cli.compile", "compile the pipeline to KFP IR YAML"),
    "submit": ("expo.cli.submit", "compile and submit the pipeline to a Kubeflow Pipelines endpoint"),
    "plan": ("expo.cli.plan", "will it fit? each stage's GPUs and estimated peak memory per GPU and per pod"),
    "data": ("expo.cli.data", "prepare a data set: load, extract answers, dedupe, split"),
    "model": ("expo.cli.prepare_model",
              "prepare the starting model (a path, a hub id, or the embedded tiny one)"),
    "explain": ("expo.cli.explain", "sample and verify self-explanations of the known answers"),
    "train": ("expo.cli.train", "train one arm: ExP-GRPO, GRPO, GRPO + expert-CoT SFT or ExP-DPO"),
    "evaluate": ("expo.cli.evaluate", "verifier-based accuracy, pass@k by level, and the report"),
    "models": ("expo.cli.registered_models", "list a registered model's versions, aliases and key metrics"),
    "promote": ("expo.cli.promote", "move a registry alias (champion by default) to a model version"),
}


# command name -> the pages its --help points to (tests/test_docs_links.py checks that they exist).
DOCS: dict[str, str] = {
    "run": "docs/getting-started.md; every config key and its default: docs/configuration.md",
    "compile": "docs/cluster.md; the run parameters: docs/configuration.md",
    "submit": "docs/cluster.md",
    "plan": "docs/cluster.md, section Will it fit",
    "data": "docs/configuration.md, section data",
    "model": "docs/real-model.md",
    "explain": "docs/explanations.md",
    "train": "docs/concepts.md",
    "evaluate": "docs/concepts.md",
    "models": "docs/getting-started.md, section The registry",
    "promote": "docs/getting-started.md, section The registry",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expo",
        description="ExPO post-training pipeline: self-explanation-guided RL on Kubeflow and MLflow.",
        epilog="Run 'expo COMMAND --help' for the options of one command. Start with README.md and "
               "docs/getting-started.md; every config key: docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"expo-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text, epilog=f"Docs: {DOCS[name]}.")
        cmd.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(cmd)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and repeatable `--set key=value`, shared by every pipeline command."""
    parser.add_argument("--config", metavar="FILE",
                        help="YAML config; every field has a default that runs. Pipeline commands (run, "
                             "compile, submit) without it use the embedded default (expo/toy/defaults.yaml)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config key, e.g. --set train.expo_beta=0.04 (repeatable; "
                             "values are YAML: --set train.arms=[grpo,exp-grpo])")


@contextlib.contextmanager
def _library_warnings_to_log() -> Iterator[None]:
    """Warnings raised by other packages (kfp's FutureWarning on every client, MLflow's notices) go to
    logging, not to the terminal, where a command prints its own lines and an error is one line.
    Warnings of this package are shown as before."""
    log = logging.getLogger("py.warnings")
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def route(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
            if Path(filename).resolve().is_relative_to(_PACKAGE):
                shown(message, category, filename, lineno, file, line)
            else:
                log.warning("%s", warnings.formatwarning(message, category, filename, lineno, line).strip())

        warnings.showwarning = route
        yield


def _reader_gone() -> int:
    """stdout's reader closed the pipe (`expo compile ... | head -1`): stop quietly with the status of a
    command ended by SIGPIPE. stdout is pointed at /dev/null, as Python's `signal` documentation
    recommends, so the interpreter's own flush at exit has nothing left to fail on."""
    with contextlib.suppress(OSError, ValueError):  # a replaced stdout (tests) has no descriptor
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        with _library_warnings_to_log():
            code = int(importlib.import_module(args._module).run(args) or 0)
        sys.stdout.flush()  # a reader gone early (`| head -1`) is met here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except ExpoError as exc:
        see = f" (see {exc.docs})" if exc.docs and "docs/" not in str(exc) else ""
        print(f"expo {args.command}: error: {exc}{see}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # expo.processes.Interrupted says what was stopped
        detail = f" {exc}" if str(exc) else ""
        print(f"expo {args.command}: interrupted{detail}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
