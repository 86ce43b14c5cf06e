"""Fuzzing the config loader (bad input): random nested dicts, random `--set` strings and
random config file bytes (non-UTF-8 included) give either a valid ExpoConfig or exactly one
ConfigError line naming a key; never another exception type.

Why: every stage and the CLI trust `load_config`; a TypeError or KeyError escaping it would print a
traceback instead of the one-line message the CLI promises (exit 2).
"""

from __future__ import annotations

import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expo.config import ExpoConfig, from_dict, load_config, to_dict
from expo.errors import ConfigError

# Real section and key names, so the fuzzer reaches type and range checks, not only "unknown key".
_DEFAULTS = to_dict(ExpoConfig())
SECTION_KEYS = {name: list(value) for name, value in _DEFAULTS.items() if isinstance(value, dict)}
KNOWN = sorted(SECTION_KEYS) + ["name"]
DOTTED = [f"{s}.{k}" for s, keys in SECTION_KEYS.items() for k in keys] + ["name"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.binary(max_size=10))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.none()),
                                                 inner, max_size=4)), max_leaves=12)
keys = st.one_of(st.sampled_from(KNOWN), st.text(max_size=12), st.integers(), st.none(), st.booleans())
sections = st.dictionaries(st.one_of(st.sampled_from(sorted({k for ks in SECTION_KEYS.values() for k in ks})),
                                     st.text(max_size=8), st.integers()), values, max_size=5)
configs = st.dictionaries(keys, st.one_of(sections, values), max_size=5)

override_values = st.one_of(
    st.text(max_size=25),
    st.sampled_from(["1", "-1", "0", "1.5", "true", "nan", ".inf", "[]", "[grpo, ppo]", "{a: 1}", "null",
                     "~", "'x'", "[unclosed", "{", "&a [*a]", "!!python/object:os.system ''", "1e400",
                     "../../etc", "\x00", "\udcff"]))
override_keys = st.one_of(st.sampled_from(DOTTED), st.text(max_size=20),
                          st.sampled_from(DOTTED).map(lambda k: k + ".sub"),
                          st.sampled_from(DOTTED).map(lambda k: "." + k))
overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", override_keys, override_values),
                               st.text(max_size=30)), max_size=4)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _assert_one_clear_line(err: ConfigError) -> None:
    message = str(err)
    assert message and "\n" not in message, message
    # It names where the problem is: a config key, a --set key or the config file.
    assert re.search(r"config key '|unknown config key '|--set |config file ", message), message


@FUZZ
@given(configs)
def test_random_config_dicts_are_valid_or_one_config_error(data) -> None:
    try:
        cfg = from_dict(ExpoConfig, data)
        cfg.validate()
    except ConfigError as err:
        _assert_one_clear_line(err)
    else:
        assert isinstance(cfg, ExpoConfig)


@FUZZ
@given(overrides)
def test_random_set_overrides_are_valid_or_one_config_error(items) -> None:
    try:
        cfg = load_config(None, items)
    except ConfigError as err:
        _assert_one_clear_line(err)
    else:
        assert isinstance(cfg, ExpoConfig)


yaml_texts = st.one_of(
    st.binary(max_size=200),  # non-UTF-8 bytes included
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.dictionaries(st.sampled_from(KNOWN), st.dictionaries(st.text(max_size=8), scalars.filter(
        lambda v: not isinstance(v, bytes)), max_size=3), max_size=3).map(
        lambda d: yaml.safe_dump(d).encode()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_texts)
def test_random_config_files_are_valid_or_one_config_error(tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as err:
        _assert_one_clear_line(err)


def test_the_fuzzer_reaches_each_kind_of_error() -> None:
    """Guard against a fuzzer that only ever hits one branch: each kind names its key."""
    for data, key in [({"train": {"steps": "x"}}, "train.steps"), ({"train": {"nope": 1}}, "train.nope"),
                      ({1: {}}, "1"), ({"train": {"steps": -1}}, "train.steps"),
                      ({"data": [1]}, "data"), ({"train": {"arms": "grpo"}}, "train.arms")]:
        try:
            cfg = from_dict(ExpoConfig, data)
            cfg.validate()
        except ConfigError as err:
            assert key in str(err)
            _assert_one_clear_line(err)
        else:
            raise AssertionError(f"{data} was accepted")
