"""The README's command table against its own examples and the parser: every option an `expo` example
in the README uses (shell blocks and inline code) is in that command's row of the table, and every
option a row lists is one the command accepts."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from expo.cli import build_parser
from tests.docs_commands import ROOT, commands

README = (ROOT / "README.md").read_text(encoding="utf-8")
_ROW = re.compile(r"^\| `expo (\w+)[^|]*?(?:\\\|[^|]*?)*` \|", re.M)  # `\|` inside a cell is a pipe


def table() -> dict[str, str]:
    """command -> the first cell of its row in the "## Commands" table."""
    section = README.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(0) for m in _ROW.finditer(section)}


def examples() -> list[list[str]]:
    """The argv of every `expo` command the README shows outside the table."""
    found = [c.argv for c in commands(README, "README.md") if c.argv[:1] == ["expo"]]
    prose = "\n".join(line for line in README.splitlines() if not line.startswith("|"))
    found += [shlex.split(span) for span in re.findall(r"`(expo [a-z][^`]*)`", prose)]
    return found


def _options(argv: list[str]) -> set[str]:
    return {word.split("=", 1)[0] for word in argv if word.startswith("--")}


def test_the_table_and_the_examples_are_found():
    assert {"run", "compile", "submit", "data", "models", "promote"} <= set(table())
    assert {argv[1] for argv in examples()} >= {"run", "compile", "submit", "models", "promote"}


@pytest.mark.parametrize("argv", examples(), ids=" ".join)
def test_every_option_an_example_uses_is_in_the_table(argv):
    row = table()[argv[1]]
    missing = sorted(_options(argv) - _options(row.replace("[", " ").replace("]", " ").split()))
    assert not missing, f"README's command table lacks {missing} for `expo {argv[1]}`"


@pytest.mark.parametrize("command", sorted(table()))
def test_every_option_in_the_table_is_accepted(command):
    commands_action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sub = commands_action.choices[command]
    accepted = {option for action in sub._actions for option in action.option_strings}
    listed = _options(table()[command].replace("[", " ").replace("]", " ").split())
    assert listed <= accepted, f"`expo {command}` does not take {sorted(listed - accepted)}"
