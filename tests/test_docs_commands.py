"""Every shell command of README.md and docs/*.md matches the code (tests/docs_commands.py says how each
is checked), a deliberately broken command is caught, and the README's `make run` figures are the ones
bench/readme_numbers.py rendered from docs/make-run.json (measured, not typed)."""

from __future__ import annotations

import json

import pytest

from benchkit import load_bench
from tests.docs_commands import DOCS, ROOT, blocks, commands, problems

pytestmark = pytest.mark.usefixtures("no_tracking_env")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_command_matches_the_code(doc):
    assert problems(doc.read_text(encoding="utf-8"), doc.name) == []


def test_the_docs_have_commands_to_check():
    """The extraction finds the commands (a checker that finds none would pass anything)."""
    found = {doc.name: commands(doc.read_text(encoding="utf-8"), doc.name) for doc in DOCS}
    programs = {c.argv[0] for cmds in found.values() for c in cmds}
    assert {"make", "expo", ".venv/bin/expo", "kubectl"} <= programs
    readme = [" ".join(c.argv) for c in found["README.md"]]
    assert "expo compile --config configs/qwen2.5-3b-math.yaml --output expo.yaml" in readme
    # a continuation line is one command; a comment is dropped
    assert any(c.startswith("expo run --set train.arms=[grpo,exp-grpo,sdft]") and "steps=100" in c
               for c in readme)
    assert "make run" in readme


BROKEN = [
    # (what the docs say, what the check must report). The first two are the README's old cluster lines.
    ("expo compile --config configs/qwen2.5-3b-math-exp-grpo.yaml --output expo.yaml",
     "configs/qwen2.5-3b-math-exp-grpo.yaml does not exist"),
    ("expo models expo-qwen2.5-3b-math", "no config registers a model named 'expo-qwen2.5-3b-math'"),
    ("expo run --set train.stepz=5", "does not compile"),  # an unknown config key
    ("expo submit --hots https://kfp.example.com", "rejected by the argument parser"),
    (".venv/bin/expo promote expo-tiny", "rejected by the argument parser"),  # VERSION missing
    ("make rum", "no make target 'rum'"),
    ("nice .venv/bin/python bench/no_such_bench.py --out /tmp/x", "bench/no_such_bench.py does not exist"),
    (".venv/bin/python bench/hint_wording.py --out /tmp/h --wordings 3",
     "hint_wording.py has no option --wordings"),
    ("cd manifests/overlays\nkubectl apply -k no-such-overlay", "no-such-overlay does not exist"),
    ("OVERLAY=nowhere; kubectl apply -k manifests/overlays/$OVERLAY",
     "manifests/overlays/nowhere does not exist"),
]


@pytest.mark.parametrize("command, expected", BROKEN, ids=[b[0].split()[0] + "-" + str(i) for i, b in
                                                           enumerate(BROKEN)])
def test_a_broken_command_fails(command, expected):
    found = problems(f"text\n\n```bash\n{command}   # a comment\n```\n", "BROKEN.md")
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith(f"BROKEN.md:{4 + command.count(chr(10))}: ")  # names the file and line


def test_the_fixed_versions_pass():
    fixed = ("expo compile --config configs/qwen2.5-3b-math.yaml --output expo.yaml\n"
             "expo models qwen2.5-3b-math-expo\n.venv/bin/expo promote expo-tiny 2 --alias staging\n"
             "make run ARGS=--verbose\nkubectl apply -k manifests/trainer-runtime")
    assert problems(f"```bash\n{fixed}\n```\n", "FIXED.md") == []


def test_only_shell_blocks_are_commands():
    text = "```\nexpo nonsense\n```\n```yaml\nname: x\n```\n```sh\nmake run\n```\n"
    assert [t for _, t in blocks(text)] == ["make run\n"]


def test_readme_make_run_figures_are_rendered_from_the_measurement():
    """docs/make-run.json is what bench/readme_numbers.py measured and the README block is its rendering;
    before a measurement exists the block must be empty (no figure typed by hand)."""
    import re

    bench = load_bench("readme_numbers")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.findall(re.escape(bench.BEGIN) + r".*?" + re.escape(bench.END), readme, re.S)
    assert len(found) == 1, "README.md needs exactly one make-run block"
    numbers_file = ROOT / "docs" / "make-run.json"
    if not numbers_file.is_file():
        assert found[0] == f"{bench.BEGIN}\n{bench.END}"
        return
    numbers = json.loads(numbers_file.read_text())
    assert found[0] == bench.render(numbers)
    assert set(numbers["pass_at_1_k_percent"]) == {"base", "grpo", "exp-grpo"}
    assert len(numbers["acceptance_by_level_percent"]) == numbers["level"]


def test_the_readme_block_renders_every_measured_figure():
    """render() on a hand-made measurement: each figure lands in the text (so none is left typed)."""
    bench = load_bench("readme_numbers")
    numbers = {"cold_s": 427.3, "cached_s": 4.8, "peak_rss_gb": 1.49, "lines_printed": 52, "level": 5,
               "k": 8,
               "pass_at_1_k_percent": {"base": [1.2, 2.5], "grpo": [4.8, 6.2], "exp-grpo": [21.2, 40.0]},
               "acceptance_by_level_percent": [100.0, 90.0, 84.7, 76.2, 67.5], "cores": 2,
               "commit": "abc1234",
               "date": "2026-12-01"}
    text = " ".join(bench.render(numbers).split())
    for figure in ("7 min 7 s", "1.49 GB", "52 lines", "4.8 s", "level 5", "pass@8", "| base | GRPO | ExP-GRPO |",
                   "| 1.2 / 2.5 | 4.8 / 6.2 | 21.2 / 40.0 |", "100.0, 90.0, 84.7, 76.2, 67.5 %", "abc1234",
                   "2-core", "2026-12-01"):
        assert figure in text, figure
