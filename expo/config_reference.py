"""docs/configuration.md, generated from the config dataclasses so the reference cannot drift from the code.

Every key of every section: its type and default (from the dataclass), its meaning (the comment on or
right above the field in expo/config.py), which pipeline stages read its section (expo.stages), whether
it is a run parameter of the compiled pipeline (expo.params) and, where the embedded default
(expo/toy/defaults.yaml, what `expo run` uses without --config) sets it otherwise, that value.

    make config-reference            # or: .venv/bin/python -m expo.config_reference
    .venv/bin/python -m expo.config_reference --check   # exit 1 when docs/configuration.md is stale

tests/test_config_reference.py fails when the committed page is not what `render()` gives.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import sys
import tokenize
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from expo import config as config_module
from expo.config import ArmOverrides, DataSourceConfig, ExpoConfig

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"
REGENERATE = "make config-reference"

# Sections no pipeline stage receives as config, with who reads them instead.
OTHER_READERS = {
    "name": "every stage (run name, MLflow run and pipeline name)",
    "tracking": "every stage (MLflow) and `expo run`",
    "cluster": "`expo compile` / `submit` / `plan` (pod resources, GPUs)",
}


@dataclasses.dataclass(frozen=True)
class Key:
    """One documented config key."""

    name: str  # dotted, e.g. "train.steps" or "train.arm_overrides.<arm>.learning_rate"
    type: str
    default: str
    meaning: str
    parameter: str  # the compiled pipeline's parameter name, "" when none
    embedded: str  # the embedded default's value where it differs, else ""


def _comments() -> dict[int, str]:
    """Line number -> the text of the comment on that line of expo/config.py."""
    source = Path(config_module.__file__).read_text(encoding="utf-8")
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}


def field_docs(cls: type) -> dict[str, str]:
    """field -> its comment: the block of comment lines right above it, then the comment on its line."""
    source = Path(config_module.__file__).read_text(encoding="utf-8")
    lines = source.splitlines()
    comments = _comments()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs: dict[str, str] = {}
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        above: list[str] = []
        line = item.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        inline = [comments[n] for n in range(item.lineno, (item.end_lineno or item.lineno) + 1) if n in comments
                  and not lines[n - 1].strip().startswith("#")]
        docs[item.target.id] = " ".join(above + inline).strip()
    return docs


def type_name(tp: Any) -> str:
    """A type as a reader writes the value: `int`, `"a" | "b"`, `list of int`, `float or null`."""
    origin = get_origin(tp)
    if origin is Literal:
        return " \\| ".join(f'"{a}"' for a in get_args(tp))
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        text = " or ".join(type_name(a) for a in options)
        return f"{text} or null" if type(None) in get_args(tp) else text
    if origin is list:
        return f"list of {type_name(get_args(tp)[0])}"
    if origin is dict:
        key, value = get_args(tp)
        return f"mapping {type_name(key)} -> {type_name(value)}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _value(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return f"`{text}`" if text != "''" else '`""`'


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _readers() -> dict[str, list[str]]:
    from expo.stages import STAGE_SECTIONS

    readers: dict[str, list[str]] = {}
    for stage, sections in STAGE_SECTIONS.items():
        for section in sections:
            readers.setdefault(section, []).append(stage)
    return readers


def _embedded() -> dict[str, Any]:
    from expo.config import EMBEDDED_PRESET, flatten

    data = yaml.safe_load(EMBEDDED_PRESET.read_text(encoding="utf-8")) or {}
    flat = flatten(data)
    overrides = (data.get("train") or {}).get("arm_overrides")
    if overrides:  # a mapping keyed by arm: shown whole on its own row, not flattened under arm names
        flat["train.arm_overrides"] = overrides
    return flat


def section_keys(cls: type, prefix: str) -> Iterator[Key]:
    """Every key of dataclass `cls` under `prefix`, nested entries (data.sources, train.arm_overrides)
    after their parent key."""
    from expo.params import BY_KEY

    hints = get_type_hints(cls)
    docs = field_docs(cls)
    embedded = _embedded()
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        meaning = docs.get(f.name, "")
        if cls is ArmOverrides and not meaning:
            meaning = f"this arm's `train.{f.name}` (unset: the train section's)"
        default = _default(f)
        differs = name in embedded and embedded[name] != (dataclasses.asdict(default)
                                                          if dataclasses.is_dataclass(default) else default)
        param = BY_KEY.get(name)
        yield Key(name, type_name(hints[f.name]), _value(default), meaning, param.name if param else "",
                  _value(embedded[name]) if differs else "")
        if f.name == "sources" and cls is config_module.DataConfig:
            yield from section_keys(DataSourceConfig, f"{name}[].")
        if f.name == "arm_overrides":
            yield from section_keys(ArmOverrides, f"{name}.<arm>.")


def sections() -> list[tuple[str, type | None]]:
    """(section name, its dataclass) in the config's order; top-level scalars under "name"."""
    hints = get_type_hints(ExpoConfig)
    return [(f.name, hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None)
            for f in dataclasses.fields(ExpoConfig)]


def all_keys() -> list[Key]:
    keys: list[Key] = []
    top = field_docs(ExpoConfig)
    for name, cls in sections():
        if cls is None:
            f = next(f for f in dataclasses.fields(ExpoConfig) if f.name == name)
            embedded = _embedded().get(name)
            keys.append(Key(name, type_name(get_type_hints(ExpoConfig)[name]), _value(f.default), top[name], "",
                            _value(embedded) if embedded not in (None, f.default) else ""))
        else:
            keys.extend(section_keys(cls, f"{name}."))
    return keys


def _cell(text: str) -> str:
    """Table-safe text: pipes escaped (unless already), and outside `code` spans `<` as an entity, so
    `builtin:<name>` is not swallowed as an HTML tag."""
    if "\\|" not in text:
        text = text.replace("|", "\\|")
    parts = text.replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def render() -> str:
    """The whole page."""
    readers = _readers()
    keys = all_keys()
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated from expo/config.py by `{REGENERATE}` (expo/config_reference.py); do not edit. -->",
        "",
        "A config is YAML with one section per stage; every key has a default that runs, and an unknown key "
        "or a bad value stops the run with one line naming the key. Precedence: the dataclass default, then "
        "the config file (`--config`; without one, `expo run` and the other pipeline commands use the "
        "embedded default, `expo/toy/defaults.yaml`, shown in the last column where it differs), then "
        "`--set key=value` (the value is YAML). On a compiled pipeline the keys with a **parameter** name "
        "can also be set per run (`expo submit --param NAME=VALUE`, the KFP UI's run form) without a "
        "recompile.",
        "",
        "Read by: the pipeline stages that receive the section; a stage's cache key covers exactly those "
        "sections, so a change re-runs that stage and what follows it.",
        "",
    ]
    for name, cls in sections():
        section_keys_ = [k for k in keys if k.name == name or k.name.startswith(f"{name}.")]
        stages = readers.get(name)
        reader = ", ".join(f"`{s}`" for s in stages) if stages else ""
        extra = OTHER_READERS.get(name, "")
        who = "; ".join(t for t in (reader, extra) if t)
        out += [f"## `{name}`", ""]
        if cls is not None and cls.__doc__:
            out += [" ".join(cls.__doc__.split()), ""]
        out += [f"Read by: {who}.", "",
                "| key | type | default | parameter | meaning | embedded default |",
                "|---|---|---|---|---|---|"]
        for k in section_keys_:
            param = f"`{k.parameter}`" if k.parameter else ""
            out.append(f"| `{k.name}` | {_cell(k.type)} | {_cell(k.default)} | {param} | {_cell(k.meaning)} | "
                       f"{_cell(k.embedded)} |")
        out.append("")
    return "\n".join(out)


def undocumented() -> list[str]:
    """Keys with no meaning: a field of expo/config.py without a comment."""
    return [k.name for k in all_keys() if not k.meaning]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/configuration.md from expo/config.py.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page is stale")
    args = parser.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"expo/config.py: no comment for {', '.join(missing)} (write one on or above each field)",
              file=sys.stderr)
        return 1
    text = render()
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
        if current != text:
            print(f"docs/configuration.md is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)} ({len(all_keys())} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
