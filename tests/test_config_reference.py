"""docs/configuration.md is what expo/config_reference.py generates from the config dataclasses: every key
of every section (found here by walking the dataclasses on their own, so a generator that skipped one
fails), each with a meaning, and the pipeline parameters marked."""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from expo import config_reference
from expo.config import ExpoConfig
from expo.params import PARAMETERS

PAGE = config_reference.PAGE


def _nested(tp: Any) -> tuple[type | None, str]:
    """The dataclass inside a field's type and how its keys are written: (cls, "" | "[]" | ".<arm>")."""
    if dataclasses.is_dataclass(tp):
        return tp, ""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            found = _nested(arg)
            if found[0]:
                return found
    if origin is list and dataclasses.is_dataclass(get_args(tp)[0]):
        return get_args(tp)[0], "[]"
    if origin is dict and dataclasses.is_dataclass(get_args(tp)[1]):
        return get_args(tp)[1], ".<arm>"
    return None, ""


def every_key(cls: type = ExpoConfig, prefix: str = "") -> list[str]:
    keys = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        inner, how = _nested(hints[f.name])
        if inner is not None and how == "" and cls is ExpoConfig:
            keys += every_key(inner, f"{name}.")  # a section
            continue
        keys.append(name)
        if inner is not None:
            keys += every_key(inner, f"{name}{how}.")
    return keys


def rows() -> dict[str, list[str]]:
    """key -> the cells of its row in the committed page."""
    out = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([^`]+)` \|", line)
        if m:
            out[m.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    return out


def test_the_page_is_up_to_date():
    assert PAGE.is_file(), "docs/configuration.md is missing: run `make config-reference`"
    assert PAGE.read_text(encoding="utf-8") == config_reference.render(), (
        "docs/configuration.md is out of date with expo/config.py: run `make config-reference`")


def test_every_key_of_every_section_has_a_row_with_a_meaning():
    keys = every_key()
    assert len(keys) > 100 and "train.arm_overrides.<arm>.learning_rate" in keys and "data.sources[].level" in keys
    table = rows()
    assert sorted(set(keys) - set(table)) == []
    assert sorted(set(table) - set(keys)) == []
    blank = [k for k in keys if not table[k][4]]
    assert blank == [], f"no meaning for {blank}: write a comment on or above the field in expo/config.py"


def test_pipeline_parameters_are_marked_and_only_they():
    table = rows()
    marked = {k: cells[3].strip("`") for k, cells in table.items() if cells[3]}
    assert marked == {p.key: p.name for p in PARAMETERS}


def test_defaults_and_types_come_from_the_dataclass():
    table = rows()
    assert table["train.steps"][1:3] == ["int", "`50`"]
    assert table["train.loss_type"][2] == "`dapo`"
    assert table["train.steps"][5] == ""  # the embedded default also trains 50 steps
    assert table["train.learning_rate"][5] == "`0.002`"  # expo/toy/defaults.yaml sets it
    assert "`train`" in next(line for line in PAGE.read_text().splitlines()
                             if line.startswith("Read by:") and "`report`" in line)


def test_a_stale_page_fails_the_check_and_names_the_command(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text(config_reference.render().replace("`train.steps`", "`train.stepz`"))
    monkeypatch.setattr(config_reference, "PAGE", stale)
    monkeypatch.setattr(config_reference, "undocumented", lambda: [])  # this test is about staleness alone
    assert config_reference.main(["--check"]) == 1
    assert "run `make config-reference`" in capsys.readouterr().err
    stale.write_text(config_reference.render())
    assert config_reference.main(["--check"]) == 0


def test_a_field_without_a_comment_is_reported(monkeypatch):
    real = config_reference.field_docs

    def without_steps(cls):
        docs = real(cls)
        return {k: ("" if k == "steps" and cls.__name__ == "TrainConfig" else v) for k, v in docs.items()}

    monkeypatch.setattr(config_reference, "field_docs", without_steps)
    assert "train.steps" in config_reference.undocumented()
    assert config_reference.main(["--check"]) == 1


def test_the_defaults_other_pages_quote_are_the_dataclass_defaults():
    """docs/concepts.md's table of the settings that matter quotes defaults: they must be the code's."""
    defaults = {k.name: k.default for k in config_reference.all_keys()}
    text = (PAGE.parent / "concepts.md").read_text(encoding="utf-8")
    quoted = re.findall(r"^\| `([a-z_]+\.[a-z_.]+)` \| (`[^`]*`) \|", text, re.M)
    assert len(quoted) >= 15
    wrong = {key: (value, defaults.get(key)) for key, value in quoted if defaults.get(key) != value}
    assert wrong == {}, f"docs/concepts.md quotes defaults that differ from expo/config.py: {wrong}"
