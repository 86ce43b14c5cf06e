"""The pipeline's runtime parameters: what users change between runs, typed and documented.

Kubeflow users expect a compiled pipeline to take parameters (the KFP UI's "Create run" form, `kfp.Client`
arguments, `expo submit --param steps=200`) instead of a recompile per setting. Each parameter overrides
exactly one config key; the config file's value is its default. The compiled tasks carry their config
sections with these keys taken out (`strip`), plus a `params` text of `key=value` lines holding only the
parameters of the sections they read (`stage_params`), so a task's cache key still covers what it reads
and nothing else: changing `gate_margin` re-runs report and register, never training.

    values = defaults(cfg)                       # {"steps": 50, "expo_beta": 0.04, ...}
    text = template(stage_params(("train",)), values)   # "train.steps=50\ntrain.expo_beta=0.04\n..."
    apply(config_dict, text)                     # the same keys set in a config dict, typed

The pipeline builds `template` from KFP channels, so the values are filled in by KFP at run time; `apply`
converts them back by each parameter's type (KFP renders an integer as "50" or "50.0", a list as JSON).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from expo.config import ExpoConfig, parse_number, to_dict
from expo.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One root parameter of the compiled pipeline."""

    name: str  # the KFP parameter name (a Python identifier)
    key: str  # the dotted config key it overrides
    type: type  # str, int, float or list
    doc: str

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]


PARAMETERS: tuple[Param, ...] = (
    Param("model_source", "model.source", str,
          "starting policy: hub id, folder, .gguf file, or builtin:tiny (the embedded default)"),
    Param("data_source", "data.source", str,
          "training problems: hub id, folder, .jsonl/.parquet/.csv file or builtin:<name>"),
    Param("test_source", "data.test_source", str,
          "test set apart from the training data, evaluated by level for base and every arm ('' = none)"),
    Param("arms", "train.arms", list, "algorithms trained side by side: grpo, exp-grpo, grpo-sft, exp-dpo, sdft"),
    Param("steps", "train.steps", int, "optimizer steps per arm"),
    Param("expo_beta", "train.expo_beta", float, "weight of the self-explanation NLL term of exp-grpo"),
    Param("expo_beta_schedule", "train.expo_beta_schedule", str,
          "expo_beta over training: constant, linear or cosine (decay to 0)"),
    Param("learning_rate", "train.learning_rate", float,
          "optimizer learning rate (an arm with train.arm_overrides.<arm>.learning_rate keeps its own)"),
    Param("num_generations", "train.num_generations", int, "rollouts per prompt (the GRPO group size G)"),
    Param("eval_samples", "evaluate.samples", int, "samples per question at evaluation (pass@k up to it)"),
    Param("model_name", "register.model_name", str, "MLflow registered model name"),
    Param("gate_margin", "register.gate_margin", float,
          "champion moves only when the candidate beats it by more than this"),
)
BY_NAME = {p.name: p for p in PARAMETERS}
BY_KEY = {p.key: p for p in PARAMETERS}
# Drives the ParallelFor over arms only: each train task gets its own arm as an input, so adding an arm
# must not change the cache key of the arms already trained.
LOOP_ONLY = ("train.arms",)


def _get(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node[part]
    return node


def defaults(cfg: ExpoConfig) -> dict[str, Any]:
    """Every parameter's value in `cfg` (the compiled pipeline's defaults)."""
    data = to_dict(cfg)
    out = {p.name: copy.deepcopy(_get(data, p.key)) for p in PARAMETERS}
    for p in PARAMETERS:
        if p.type is str and (out[p.name] is None or "\n" in str(out[p.name])):
            raise ConfigError(f"config key '{p.key}': a pipeline parameter must be one line of text")
    return out


def stage_params(sections: Iterable[str]) -> list[Param]:
    """The parameters a task reading `sections` receives (never the loop-only ones)."""
    wanted = set(sections)
    return [p for p in PARAMETERS if p.section in wanted and p.key not in LOOP_ONLY]


def template(params: Iterable[Param], values: Mapping[str, Any]) -> str:
    """`key=value` lines; `values` may hold KFP channels (formatted into placeholders KFP fills in)."""
    return "\n".join(f"{p.key}={_render(values[p.name])}" for p in params)


def _render(value: Any) -> str:
    if isinstance(value, (list, tuple)):  # a literal list (KFP renders a list channel as JSON itself)
        return json.dumps(list(value))
    return f"{value}"


def parse(text: str) -> dict[str, Any]:
    """`key=value` lines -> {key: typed value}; one clear error naming the line or key otherwise."""
    out: dict[str, Any] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        key, sep, raw = line.partition("=")
        key = key.strip()
        if not sep or key not in BY_KEY:
            known = ", ".join(p.key for p in PARAMETERS)
            raise ConfigError(f"pipeline parameter line {line[:80]!r}: expected key=value with a key "
                              f"of: {known}")
        out[key] = convert(BY_KEY[key], raw)
    return out


def convert(param: Param, raw: Any) -> Any:
    """A parameter value from KFP or the command line, as its config key's type."""
    where = f"pipeline parameter '{param.name}' ({param.key})"
    if param.type is str:
        return str(raw)
    if param.type is list:
        value = yaml.safe_load(raw) if isinstance(raw, str) else raw
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list such as [grpo, exp-grpo], got {raw!r}")
        return value
    number = parse_number(raw)  # the config loader's reading: `1e-4` as in a YAML file or --set
    if number is None:
        raise ConfigError(f"{where}: expected a number, got {raw!r}")
    if param.type is int:
        if not number.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        return int(number)
    return number


def apply(data: dict[str, Any], text: str) -> dict[str, Any]:
    """A copy of config dict `data` with the parameter lines of `text` set in it."""
    out = copy.deepcopy(data)
    for key, value in parse(text).items():
        node = out
        *sections, leaf = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def strip(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of config dict `data` without the parameterised keys: what a compiled task carries, so
    its config text does not change when only a parameter's value does."""
    out = copy.deepcopy(data)
    for p in PARAMETERS:
        *sections, leaf = p.key.split(".")
        node = out
        for part in sections:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def run_key(static: str, values: Mapping[str, Any]) -> str:
    """The digest that names a run's record: the config without its parameters (`static`) and every
    parameter's value, canonical (so "50" from KFP and 50 from a config give the same key)."""
    typed = {p.key: convert(p, values[p.name]) for p in PARAMETERS}
    text = json.dumps({"static": static, "params": typed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_key_text(static: str, values: Mapping[str, Any]) -> str:
    """The text form of `run_key`'s inputs that a task receives (a KFP placeholder per parameter)."""
    return f"{static}\n{template(PARAMETERS, values)}"


def run_key_from_text(text: str) -> str:
    """`run_key` of what `run_key_text` produced, after KFP filled the values in."""
    static, _, lines = text.partition("\n")
    if not lines:
        return static  # a plain key (tests, old callers)
    parsed = parse(lines)
    values = {p.name: parsed[p.key] for p in PARAMETERS if p.key in parsed}
    missing = [p.name for p in PARAMETERS if p.name not in values]
    if missing:
        raise ConfigError(f"run key text lacks parameter(s) {', '.join(missing)}")
    return run_key(static, values)


def parse_cli(items: Iterable[str]) -> dict[str, Any]:
    """`--param NAME=VALUE` (NAME a parameter name or its config key) -> {name: typed value}."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        param = BY_NAME.get(name) or BY_KEY.get(name)
        if not sep or param is None:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE with NAME one of "
                              f"{', '.join(BY_NAME)} (or its config key)")
        out[param.name] = convert(param, raw)
    return out


def docstring() -> str:
    """The pipeline function's docstring: KFP turns its Args into the parameters' descriptions."""
    lines = ["ExPO: self-explanation-guided RL with GRPO baselines, verifier-based evaluation and gated "
             "MLflow registration.", "", "Args:"]
    lines += [f"    {p.name}: {p.doc} (config key {p.key})." for p in PARAMETERS]
    return "\n".join(lines)


__all__ = ["PARAMETERS", "Param", "apply", "convert", "defaults", "docstring", "parse", "parse_cli",
           "run_key", "run_key_from_text", "run_key_text", "stage_params", "strip", "template"]
