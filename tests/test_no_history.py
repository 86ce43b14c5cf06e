"""The product speaks of itself, not of how it was built: no tracked text file refers to the project's
development history by number (an issue, a session, a turn, a numbered superseded design, a stop).
Such numbers point to nothing a reader can look up; git keeps the history.

Each hit is reported as file:line with the matched words. Lines that must name a number of this kind
for a defensible reason are listed in ALLOWED below, each with its reason.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cfg"}
TEXT_NAMES = {"Makefile", "Dockerfile"}

# One pattern per kind of reference. Each needs a number right after the word (optionally "#"), so
# "this issue", "a session-scoped fixture" or "the stop flag" pass, and \b keeps "tissue 7" out.
HISTORY = re.compile(
    r"""
    \bissues?\s*\#?\s*\d+            # issue 20, issue #20, issues 16-19, Issue 16:
    | \bsessions?\s+\d+              # session 7, in session 5, sessions 5 and 6
    | \bturns?\s+\#?\d+\b            # turn 3
    | \bdesigns?\s+\#?\d+\b          # design 5, designs 1 to 5, Design 3's
    | \bstops?\s+\#?\d+\b            # stop 23
    """,
    re.IGNORECASE | re.VERBOSE,
)

# Text removed from a line before it is checked, each with why it may name a number.
ALLOWED = [
    # A third-party project's issue or pull request, by its full URL: a reader can open it, and
    # the number belongs to that project, not to this one's history.
    re.compile(r"https?://(?:www\.)?(?:github|gitlab)\.com/\S+/(?:issues|pull|merge_requests)/\d+"),
]

# Files skipped as a whole, each with why.
SKIPPED_FILES = {
    # This test: it must spell out the references it looks for, to show that it finds them.
    "tests/test_no_history.py",
}


def _is_text_path(path: str) -> bool:
    name = Path(path).name
    return name in TEXT_NAMES or Path(path).suffix in TEXT_SUFFIXES


def tracked_text_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    paths = [p for p in out.decode().split("\0") if p]
    return sorted(
        p for p in paths
        if _is_text_path(p) and not p.startswith(".git/") and "/.git/" not in p and p not in SKIPPED_FILES
    )


def history_references(text: str) -> list[tuple[int, str]]:
    """(line number, matched words) for every reference to development history in `text`."""
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        for allowed in ALLOWED:
            line = allowed.sub(" ", line)
        for match in HISTORY.finditer(line):
            hits.append((number, match.group(0)))
    return hits


def _read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_development_history_in_tracked_text_files():
    files = tracked_text_files()
    assert len(files) > 50, files  # the listing works
    problems = []
    for rel in files:
        path = ROOT / rel
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        text = _read_text(path)
        if text is None:
            continue
        problems += [f"{rel}:{n}: {words!r}" for n, words in history_references(text)]
    assert not problems, "references to development history (say what the code does instead):\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    "line",
    [
        "Before issue 7 we did X.",
        "see issue #20",
        "issues 16-19 added this",
        "Issue 16: explanations were rejected",
        "measured in session 6",
        "as in turn 3",
        "design 5's hidden-160 model",
        "the designs 1 to 5",
        "stop 23",
    ],
)
def test_a_planted_reference_is_found(line):
    assert history_references("ok line\n" + line + "\n") == [(2, HISTORY.search(line).group(0))]


@pytest.mark.parametrize(
    "line",
    [
        "this issue is known",
        "a tissue 7 cm wide",
        "a session-scoped fixture",
        "the stop flag; stop_descendants(2)",
        "each design choice",
        "upstream: https://github.com/kubeflow/pipelines/issues/12345",
        "KEP-12862, the Kubeflow enhancement proposal",
        "return 0",
    ],
)
def test_ordinary_words_pass(line):
    assert history_references(line) == []


def test_the_whole_scan_flags_a_planted_file(tmp_path):
    planted = tmp_path / "notes.md"
    planted.write_text("# Notes\n\nBefore issue 7 the loader did X.\n")
    assert history_references(planted.read_text()) == [(3, "issue 7")]
