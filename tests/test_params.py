"""Runtime pipeline parameters (expo.params): the compiled pipeline's typed root parameters, each task
receiving only the parameters of the sections it reads, values converted back from what KFP renders,
and `expo submit --param` changing one without a recompile (against the fake KFP API of test_submit)."""

from __future__ import annotations

import pytest
import yaml

from expo import params as P
from expo.cli import main
from expo.config import load_config, load_pipeline_config, to_dict
from expo.errors import ConfigError
from expo.stages import STAGE_SECTIONS
from tests.test_submit import fake_kfp  # noqa: F401  (the fixture)

KFP_TYPES = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", list: "LIST"}


def _compile(tmp_path, *overrides: str) -> dict:
    out = tmp_path / "p.yaml"
    args = ["compile", "--output", str(out)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    text = out.read_text()
    # Every parameter in a task's text became a KFP placeholder (a List[str] annotation, for one,
    # left `{{channel:...typing.List[str]...}}` behind, which KFP never fills in).
    assert "{{channel:" not in text
    return next(yaml.safe_load_all(text))


def _tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def _constant(task: dict, name: str) -> str:
    return task["inputs"]["parameters"][name]["runtimeValue"]["constant"]


def test_compiled_pipeline_has_typed_documented_root_parameters(tmp_path, capsys):
    spec = _compile(tmp_path)
    roots = spec["root"]["inputDefinitions"]["parameters"]
    assert len(roots) >= 8
    cfg = load_pipeline_config(None)
    for p in P.PARAMETERS:
        assert roots[p.name]["parameterType"] == KFP_TYPES[p.type], p.name
        assert roots[p.name]["defaultValue"] == P.defaults(cfg)[p.name], p.name  # the config's value
        assert p.key in roots[p.name]["description"]
    assert "steps" in capsys.readouterr().out  # `expo compile` lists them


def test_each_task_gets_only_the_parameters_of_its_sections(tmp_path):
    tasks = _tasks(_compile(tmp_path))
    expected = {  # task -> config keys in its params text (hand-listed from STAGE_SECTIONS)
        "prepare-data": {"data.source", "data.test_source"},
        "prepare-model": {"model.source"},
        "evaluate": {"model.source", "evaluate.samples"},
        "generate-explanations": {"model.source"},
        "train": {"model.source", "train.steps", "train.expo_beta", "train.expo_beta_schedule",
                  "train.learning_rate", "train.num_generations"},  # not train.arms: the loop's own
        "register": {"model.source", "train.steps", "train.expo_beta", "train.expo_beta_schedule",
                     "train.learning_rate", "train.num_generations", "register.model_name",
                     "register.gate_margin"},
    }
    for name, keys in expected.items():
        text = _constant(tasks[name], "params")
        assert {line.split("=", 1)[0] for line in text.splitlines()} == keys, name
        # each value is a placeholder KFP fills in from a root parameter, not a baked value
        assert all("{{$.inputs.parameters['pipelinechannel--" in line for line in text.splitlines()), name
        config = yaml.safe_load(_constant(tasks[name], "config"))
        for key in keys:  # the parameterised keys are out of the baked config text
            section, leaf = key.split(".")
            assert leaf not in config.get(section, {}), (name, key)
    assert set(STAGE_SECTIONS) >= {"prepare_data", "train", "register"}


def test_a_parameter_value_changes_only_the_defaults(tmp_path):
    """Two configs that differ only in parameter values compile to the same tasks: a run with the
    changed value hits the same cache entries for every task that does not read it."""
    a = _compile(tmp_path, "train.steps=7", "register.gate_margin=0.5")
    b = _compile(tmp_path, "train.steps=9")
    assert _tasks(a) == _tasks(b) and a["components"] == b["components"]
    roots_a = a["root"]["inputDefinitions"]["parameters"]
    roots_b = b["root"]["inputDefinitions"]["parameters"]
    assert (roots_a["steps"]["defaultValue"], roots_b["steps"]["defaultValue"]) == (7, 9)
    assert (roots_a["gate_margin"]["defaultValue"], roots_b["gate_margin"]["defaultValue"]) == (0.5, 0.0)


@pytest.mark.parametrize("key, raw, value", [
    ("train.steps", "50", 50),
    ("train.steps", "50.0", 50),  # KFP may render an integer parameter as a float
    ("train.expo_beta", "0.04", 0.04),
    ("train.expo_beta", "1", 1.0),
    ("train.arms", '["grpo", "exp-grpo"]', ["grpo", "exp-grpo"]),  # KFP renders a list as JSON
    ("train.arms", "[grpo]", ["grpo"]),  # the --set spelling
    ("model.source", "a/b: c", "a/b: c"),  # a string is taken as it is, never parsed as YAML
    ("data.test_source", "", ""),
])
def test_values_convert_back_to_their_config_type(key, raw, value):
    assert P.parse(f"{key}={raw}") == {key: value}


@pytest.mark.parametrize("text, match", [
    ("train.steps=2.5", "expected an integer"),
    ("train.expo_beta=abc", "expected a number"),
    ("train.arms=grpo", "expected a list"),
    ("train.kl_beta=0.1", "expected key=value with a key of"),  # not a parameter
    ("no equals sign", "expected key=value"),
])
def test_bad_values_name_the_parameter(text, match):
    with pytest.raises(ConfigError, match=match):
        P.parse(text)


def test_apply_strip_and_run_key():
    cfg = load_config(None, ["train.steps=3"])
    data = to_dict(cfg)
    stripped = P.strip(data)
    assert "steps" not in stripped["train"] and "source" not in stripped["model"]
    assert "kl_beta" in stripped["train"]  # not a parameter: stays baked
    values = P.defaults(cfg)
    assert P.apply(stripped, P.template(P.PARAMETERS, values)) == data  # strip + apply = identity
    rendered = {**values, "steps": "3.0", "expo_beta": "0.04"}  # as KFP may render them
    assert P.run_key("s", rendered) == P.run_key("s", values) != P.run_key("s", {**values, "steps": 4})
    assert P.run_key_from_text(P.run_key_text("s", values)) == P.run_key("s", values)
    assert P.run_key_from_text("plain-key") == "plain-key"


def test_submit_with_a_changed_parameter(fake_kfp, capsys):  # noqa: F811
    host, calls = fake_kfp
    rc = main(["submit", "--host", host, "--param", "steps=7", "--param", "train.expo_beta=0.1",
               "--param", "arms=[grpo]"])
    assert rc == 0, capsys.readouterr().err
    body = next(c for c in calls if c[1] == "/apis/v2beta1/runs")[3]
    assert body["runtime_config"]["parameters"] == {"steps": 7, "expo_beta": 0.1, "arms": ["grpo"]}
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["root"]["inputDefinitions"]["parameters"]["steps"]["defaultValue"] == \
        load_pipeline_config(None).train.steps  # the package is the same: no recompile per value
    assert "steps" not in yaml.safe_load(_constant(_tasks(spec)["train"], "config"))["train"]


@pytest.mark.parametrize("param, match", [
    ("stepz=3", "expected NAME=VALUE with NAME one of"),
    ("steps=0", "config key 'train.steps': must be positive"),  # checked before anything is sent
    ("arms=[nope]", "unknown algorithm 'nope'"),
])
def test_submit_bad_parameter_is_one_clear_line(fake_kfp, capsys, param, match):  # noqa: F811
    host, calls = fake_kfp
    assert main(["submit", "--host", host, "--param", param]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert not any(c[1] == "/apis/v2beta1/runs" for c in calls)
