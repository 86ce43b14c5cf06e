"""The strict config loader: defaults that run, YAML + --set overrides, one clear error per bad key."""

import pytest

from expo.config import ExpoConfig, flatten, load_config, merge_overrides, to_dict
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
