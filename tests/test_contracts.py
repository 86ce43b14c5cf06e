"""The unwritten contracts, written: the library never imports kfp, a stage reads only the config
sections it was given, and the stage names live in one place (expo.stages.STAGE_SECTIONS)."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import components
from expo import stages
from expo.cluster.trainjob import worker_args
from expo.cluster.worker import load_config_json
from expo.config import ExpoConfig, load_config
from expo.errors import ConfigError
from expo.sections import SECTIONS, MissingSection, given_dict, missing, partial_config

ROOT = Path(__file__).resolve().parents[1]


def test_no_library_module_imports_kfp():
    """Static: no `import kfp` / `from kfp ...` anywhere under expo/, not even inside a function."""
    offenders = []
    for path in sorted((ROOT / "expo").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names
                          if n == "kfp" or n.startswith("kfp.")]
    assert offenders == []


def test_importing_expo_and_running_a_stage_never_imports_kfp(tmp_path):
    """At run time, in a fresh interpreter: the package, the CLI's table and a whole stage (prepare_data
    on the built-in data, with its MLflow run) load no kfp module."""
    script = f"""
import sys
import expo, expo.cli, expo.stages
from expo.config import load_pipeline_config
cfg = load_pipeline_config(None, ["data.builtin_per_level=4"])
metrics = expo.stages.prepare_data(expo.stages.stage_config_yaml(cfg, "prepare_data"), {str(tmp_path / "data")!r},
                                   params=expo.stages.stage_params_text(cfg, "prepare_data"))
assert metrics["rows_out"] > 0, metrics
print(sorted(m for m in sys.modules if m == "kfp" or m.startswith("kfp.")))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "EXPO_PIPELINE_RUN_ID": "contracts-test", "PYTHONPATH": str(ROOT)}
    env.pop("EXPO_WORKSPACE", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "data" / "train.jsonl").is_file()


# ---------------------------------------------------------------------------------------------
# A stage's config holds only its sections


@pytest.mark.parametrize("stage", list(stages.STAGE_SECTIONS))
def test_a_stage_config_has_its_sections_and_refuses_the_others(stage):
    cfg = load_config(None, ["train.steps=7"])
    loaded = stages.load_stage_config(stages.stage_config_yaml(cfg, stage))
    given = {"tracking", *stages.STAGE_SECTIONS[stage]}
    assert set(missing(loaded)) == set(SECTIONS) - given
    for section in given:  # the given sections hold the config's values
        assert getattr(loaded, section) == getattr(cfg, section), section
    for section in missing(loaded):
        with pytest.raises(ConfigError, match=f"config section '{section}' was not given to this stage"):
            getattr(getattr(loaded, section), "anything")


def test_reading_a_missing_section_names_it_and_the_fix():
    cfg = partial_config({"name": "x", "data": {"builtin_per_level": 3}})
    assert cfg.data.builtin_per_level == 3
    with pytest.raises(ConfigError) as info:
        cfg.train.steps  # noqa: B018
    assert str(info.value) == ("config section 'train' was not given to this stage (it has data), yet "
                               "'train.steps' was read; add 'train' to the stage's entry in "
                               "expo.stages.STAGE_SECTIONS")


def test_a_partial_config_copies_replaces_and_travels_to_the_workers(tmp_path):
    cfg = stages.load_stage_config(stages.stage_config_yaml(load_config(None, ["train.steps=7"]), "train"))
    assert missing(copy.deepcopy(cfg)) == missing(cfg)  # vLLM server mode copies the train config
    replaced = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=9))  # an arm's overrides
    assert replaced.train.steps == 9 and missing(replaced) == missing(cfg)
    assert "MissingSection('data')" in repr(cfg)
    data = given_dict(cfg)
    assert set(data) == {"name", "tracking", *stages.STAGE_SECTIONS["train"]}
    # The per-GPU workers get the same sections, and the same ones missing, as the train step itself.
    args = worker_args(cfg, "grpo", "/workspace/d", "/workspace/m", "/workspace/o", None)
    text = args[args.index("--config-json") + 1]
    assert json.loads(text) == data
    again = load_config_json(text)
    assert missing(again) == missing(cfg) and again.train == cfg.train


def test_a_full_config_misses_nothing():
    full = load_config(None, [])
    assert missing(stages.load_stage_config(json.dumps(given_dict(full)))) == []
    assert missing(partial_config(given_dict(full))) == []
    assert isinstance(partial_config({}).data, MissingSection)  # not even the tracking section given


# ---------------------------------------------------------------------------------------------
# One list of stage names


def test_every_stage_has_one_component_of_its_name():
    """components/ has exactly one component per stage, named as the stage (KFP's task names)."""
    assert sorted(components.__all__) == sorted(stages.STAGE_SECTIONS)
    assert all(callable(getattr(stages, stage)) for stage in stages.STAGE_SECTIONS)


def test_stage_sections_name_real_config_sections():
    fields = {f.name for f in dataclasses.fields(ExpoConfig)}
    for stage, sections in stages.STAGE_SECTIONS.items():
        assert set(sections) <= fields - {"name", "tracking"}, stage  # name and tracking: every stage's
