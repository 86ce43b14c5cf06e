"""The strict config loader: defaults that run, YAML + --set overrides, one clear error per bad key."""

import dataclasses
import types
from typing import Union, get_args, get_origin, get_type_hints

import pytest
import yaml

from expo import params as P
from expo.config import ExpoConfig, flatten, from_dict, load_config, merge_overrides, parse_number, to_dict
from expo.errors import ConfigError


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, ExpoConfig)
    assert cfg.train.arms == ["grpo", "exp-grpo"]
    assert cfg.train.expo_beta == 0.04  # the paper's best
    assert cfg.explain.mode == "online"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 7\n  arms: [exp-grpo]\ndata:\n  levels: [4, 5]\n")
    cfg = load_config(path, ["train.steps=9", "train.expo_beta=0.5", "evaluate.greedy=false"])
    assert cfg.train.steps == 9  # --set wins over the file
    assert cfg.train.arms == ["exp-grpo"]
    assert cfg.data.levels == [4, 5]
    assert cfg.train.expo_beta == 0.5 and cfg.evaluate.greedy is False


def test_int_accepted_where_float_expected():
    assert load_config(None, ["train.expo_beta=1"]).train.expo_beta == 1.0


@pytest.mark.parametrize("raw, steps", [("1e3", 1000), ("2.0", 2), ("1.0e+2", 100)])
def test_a_whole_number_in_any_spelling_is_an_integer(tmp_path, raw, steps):
    assert load_config(None, [f"train.steps={raw}"]).train.steps == steps
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  steps: {raw}\n")  # YAML reads 1e3 as text, 1.0e+2 as a float
    assert load_config(path).train.steps == steps


@pytest.mark.parametrize("override, key", [
    ("train.foo=1", "train.foo"),                        # unknown key in a section
    ("nosuch.steps=1", "nosuch"),                        # unknown section
    ("train.steps=ten", "train.steps"),                  # wrong type
    ("train.steps=1.5", "train.steps"),                  # float where an int is needed
    ("train.steps=true", "train.steps"),                 # bool is not an int
    ("train.expo_beta=-0.1", "train.expo_beta"),         # out of range
    ("train.num_generations=1", "train.num_generations"),  # GRPO needs a group
    ("train.arms=[grpo,ppo]", "train.arms"),             # unknown algorithm
    ("train.expo_beta_schedule=step", "train.expo_beta_schedule"),  # unknown schedule
    ("generation.backend=tpu", "generation.backend"),    # not one of the literals
    ("data.levels=[0]", "data.levels"),                  # levels are 1..5
    ("evaluate.greedy=maybe", "evaluate.greedy"),        # not a bool
    ("explain.keep_per_question=9", "explain.keep_per_question"),  # more kept than sampled
    ("name=../../etc", "name"),                          # would escape the run folder
    ("name=", "name"),                                   # empty run name
    ("explain.cache_dir=/etc/x", "explain.cache_dir"),   # absolute: outside the run folder
    ("explain.cache_dir=../x", "explain.cache_dir"),     # escapes the workspace
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(ConfigError, match="not a section"):
        merge_overrides({"name": "x"}, ["name.sub=1"])


def test_round_trip_and_flatten():
    cfg = load_config(None, ["name=demo"])
    data = to_dict(cfg)
    assert load_config(None, []).name == "expo"
    flat = flatten(data)
    assert flat["name"] == "demo" and flat["train.steps"] == cfg.train.steps


def _float_keys(cls: type = ExpoConfig, at: str = "") -> list[str]:
    """The dotted key of every float field of the config dataclasses, `float | None` included; a
    mapping of sections (train.arm_overrides) is reached through one example entry."""
    keys = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{at}{f.name}"
        options = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        if float in options:
            keys.append(key)
        elif dataclasses.is_dataclass(tp):
            keys += _float_keys(tp, f"{key}.")
        elif get_origin(tp) is dict and dataclasses.is_dataclass(get_args(tp)[1]):
            keys += _float_keys(get_args(tp)[1], f"{key}.grpo.")
    return keys


FLOAT_KEYS = _float_keys()


def test_the_float_keys_are_found():
    assert {"train.learning_rate", "data.eval_fraction", "train.epsilon_high",
            "train.arm_overrides.grpo.learning_rate", "tracking.backoff_s"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_takes_the_exponent_form(tmp_path, key):
    """`1e-4` (no dot) is a string to YAML 1.1; each float key reads it as 0.0001 from a file and from
    --set, and a pipeline parameter reads it the same way."""
    assert yaml.safe_load("x: 1e-4")["x"] == "1e-4"  # what the loader is handed
    *sections, leaf = key.split(".")
    text = "".join(f"{'  ' * depth}{part}:\n" for depth, part in enumerate(sections))
    (tmp_path / "c.yaml").write_text(text + f"{'  ' * len(sections)}{leaf}: 1e-4\n")

    def value(cfg):
        node = to_dict(cfg)
        for part in key.split("."):
            node = node[part]
        return node

    assert value(load_config(tmp_path / "c.yaml")) == 1e-4
    assert value(load_config(None, [f"{key}=1e-4"])) == 1e-4
    param = P.BY_KEY.get(key)
    if param is not None:
        assert P.parse_cli([f"{param.name}=1e-4"]) == {param.name: 1e-4}


@pytest.mark.parametrize("raw", ["1e-4", "1E-4", "+1e-4", ".5e-3", "2.5e-5", "1e+2", " 1e-4 "])
def test_number_text_is_a_number(raw):
    assert parse_number(raw) == float(raw)


@pytest.mark.parametrize("raw", ["ten", "1e", "e-4", "1e-4x", "nan", "inf", "", True, [1]])
def test_anything_else_is_not_a_number(raw):
    assert parse_number(raw) is None
    with pytest.raises(ConfigError, match="'train.learning_rate': expected a number"):
        from_dict(ExpoConfig, {"train": {"learning_rate": raw}})


@pytest.mark.parametrize("override, hint", [
    ("train.stepz=1", "(did you mean 'steps'?)"),                  # a typo: the key it meant
    ("trian.steps=1", "(did you mean 'train'?)"),                  # a section's name too
    ("train.arm_overrides.grpo.learning_rat=1e-4", "(did you mean 'learning_rate'?)"),
    ("train.zzz=1", "(known in 'train': acceptance_floor, "),      # like nothing: the section's keys
])
def test_unknown_key_suggests_the_closest(override, hint):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert hint in str(err.value)


@pytest.mark.parametrize(("cpu", "memory", "expected"), [
    ("64", "68719476736", ("64", "68719476736")),  # numbers, as YAML reads `train_cpu: 64`
    ("0.5", "128Gi", ("0.5", "128Gi")),
    ("'500m'", "'64G'", ("500m", "64G")),  # quantities with units stay text
])
def test_a_cpu_or_memory_quantity_may_be_written_as_a_number(cpu, memory, expected):
    cfg = load_config(None, [f"cluster.train_cpu={cpu}", f"cluster.evaluate_memory={memory}"])
    assert (cfg.cluster.train_cpu, cfg.cluster.evaluate_memory) == expected
