"""Every pointer to a page leads somewhere: Markdown links in README.md and docs/, every `docs/...` path
named in a tracked file, `expo --help` and each command's help, the error classes' pages, and the config
files' headers. The README stays under 150 lines."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path

import pytest

from expo import errors
from expo.cli import COMMANDS, DOCS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_MENTION = re.compile(r"\b(docs/[\w.-]+\.(?:md|json|png))(?:, section ([\w` -]+))?")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(page: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")]


def _problems(text: str, base: Path) -> list[str]:
    found = []
    for target in _LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        page = (base / path).resolve() if path else None
        if page is not None and not page.exists():
            found.append(f"{target}: no such file")
        elif anchor and page is not None and page.suffix == ".md" and \
                anchor not in {_slug(h) for h in _headings(page)}:
            found.append(f"{target}: no heading with anchor #{anchor}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_of_a_page_resolves(page):
    assert _problems(page.read_text(encoding="utf-8"), page.parent) == []


def test_a_broken_link_is_caught():
    assert _problems("see [x](no-such-page.md) and [y](cluster.md#no-such-part)", ROOT / "docs") == [
        "no-such-page.md: no such file", "cluster.md#no-such-part: no heading with anchor #no-such-part"]


def _mention_problems(text: str) -> list[str]:
    found = []
    for path, section in _MENTION.findall(text):
        page = ROOT / path
        if not page.exists():
            found.append(f"{path} does not exist")
        elif section and not any(section.strip("` ") in h.replace("`", "") for h in _headings(page)):
            found.append(f"{path} has no section {section!r}")
    return found


def test_every_docs_path_named_in_a_tracked_file_exists():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    missing = []
    for name in tracked.split():
        path = ROOT / name
        if name == "tests/test_docs_links.py":  # it names missing pages on purpose, to show they are caught
            continue
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".sh", ".toml"} and path.name != "Makefile":
            continue
        if not path.is_file():
            continue
        missing += [f"{name}: {p}" for p in _mention_problems(path.read_text(encoding="utf-8", errors="replace"))]
    assert missing == []
    assert _mention_problems("see docs/no-such.md and docs/cluster.md, section Nowhere") == [
        "docs/no-such.md does not exist", "docs/cluster.md has no section 'Nowhere'"]


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(argv)
    return " ".join(out.getvalue().split())


def test_expo_help_and_every_command_help_point_to_pages_that_exist():
    assert "docs/getting-started.md" in _help(["--help"]) and "docs/configuration.md" in _help(["--help"])
    assert set(DOCS) == set(COMMANDS)
    for command in COMMANDS:
        text = _help([command, "--help"])
        assert f"Docs: {' '.join(DOCS[command].split())}" in text, command
        assert _mention_problems(DOCS[command]) == [], command
    assert build_parser().epilog and _mention_problems(build_parser().epilog) == []


def test_every_error_class_points_to_a_page_that_exists():
    classes = [errors.ConfigError, errors.DataError, errors.ModelError, errors.TrackingError]
    for cls in classes:
        assert cls.docs and _mention_problems(cls.docs) == [], cls.__name__


def test_a_config_error_on_the_command_line_names_the_reference(capsys):
    assert main(["compile", "--set", "train.stepz=3", "--output", "/tmp/never-written.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("(see docs/configuration.md)"), err


@pytest.mark.parametrize("config", [*sorted((ROOT / "configs").glob("*.yaml")),
                                    ROOT / "expo" / "toy" / "defaults.yaml", ROOT / "expo" / "toy" / "smoke.yaml"],
                         ids=lambda p: p.name)
def test_every_config_header_points_to_the_reference(config):
    header = "\n".join(line for line in config.read_text(encoding="utf-8").splitlines()
                       if line.startswith("#")).split("\nname:")[0]
    assert "docs/configuration.md" in header
    assert _mention_problems(header) == []


def test_the_readme_is_under_150_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < 150, f"README.md has {lines} lines"
