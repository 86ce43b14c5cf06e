"""A config built from only some of its sections, where reading an absent section is an error.

Why: each pipeline step gets only the config sections its stage reads (expo.stages.STAGE_SECTIONS),
so that a training setting does not enter the data step's cache key. The dataclasses would fill every
absent section with its defaults, and library code that read one (say `cfg.evaluate.samples` in the
train step) would silently run on the defaults instead of the pipeline's values. Here an absent
section is a `MissingSection`: reading any of its keys raises one ConfigError naming the section,
and the fix is to add it to the stage's entry in STAGE_SECTIONS.

    cfg = partial_config({"name": "x", "data": {...}})   # cfg.data is real, cfg.train is missing
    cfg.train.steps                                      # ConfigError: section 'train' ... not given
    given_dict(cfg)                                      # {"name": "x", "data": {...}} (no 'train')
"""

from __future__ import annotations

import dataclasses
from typing import Any

from expo.config import ExpoConfig, from_dict, to_dict
from expo.errors import ConfigError

SECTIONS = tuple(f.name for f in dataclasses.fields(ExpoConfig) if f.name != "name")  # all dataclasses


class MissingSection:
    """Stands for a config section this process was not given: reading any key of it raises."""

    def __init__(self, section: str, given: tuple[str, ...]) -> None:
        self._section = section
        self._given = given

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):  # copy, pickle and dataclass probes, and our own fields mid-copy
            raise AttributeError(key)
        raise ConfigError(f"config section '{self._section}' was not given to this stage (it has "
                          f"{', '.join(self._given) or 'none'}), yet '{self._section}.{key}' was read; "
                          f"add '{self._section}' to the stage's entry in expo.stages.STAGE_SECTIONS")

    def __repr__(self) -> str:
        return f"MissingSection({self._section!r})"


def partial_config(data: dict[str, Any]) -> ExpoConfig:
    """The config of `data` (strict and validated, like a YAML file), with every section that `data`
    does not hold replaced by a MissingSection."""
    cfg = from_dict(ExpoConfig, data)
    cfg.validate()  # the absent sections still hold their defaults here, which validate
    given = tuple(name for name in SECTIONS if name in data)
    for name in SECTIONS:
        if name not in data:
            setattr(cfg, name, MissingSection(name, given))
    return cfg


def missing(cfg: ExpoConfig) -> list[str]:
    """The sections of `cfg` that are MissingSection."""
    return [name for name in SECTIONS if isinstance(getattr(cfg, name), MissingSection)]


def given_dict(cfg: ExpoConfig) -> dict[str, Any]:
    """`cfg` as plain data without its missing sections (what partial_config rebuilds it from)."""
    absent = missing(cfg)
    data: dict[str, Any] = {"name": cfg.name}
    data.update({name: to_dict(getattr(cfg, name)) for name in SECTIONS if name not in absent})
    return data


__all__ = ["MissingSection", "SECTIONS", "given_dict", "missing", "partial_config"]
