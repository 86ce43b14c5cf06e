"""Every figure of the results pages is rendered from a JSON file a command wrote (bench/results_pages.py):
each block is what its file gives, each file is shown somewhere and names its command, commit and
machine, and no table of a results page lives outside a block (a table typed by hand would drift)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from benchkit import load_bench

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PAGES = ["docs/embedded-default.md", "docs/smollm2-recipes.md", "docs/benchmarks.md"]


pages = load_bench("results_pages")


@pytest.mark.parametrize("page", pages.PAGES, ids=lambda p: p.name)
def test_every_block_shows_what_its_file_holds(page):
    text = page.read_text(encoding="utf-8")
    assert pages.rewrite(text) == text, (
        f"{page.name}: a results block differs from its JSON file: run `.venv/bin/python bench/results_pages.py`")


def test_every_results_file_is_shown_and_says_where_it_came_from():
    shown = {m.group("name") for page in pages.PAGES for m in pages.BLOCK.finditer(page.read_text())}
    files = {p.stem for p in pages.RESULTS.glob("*.json")}
    assert files and files <= shown, f"results files no page shows: {sorted(files - shown)}"
    assert shown <= files, f"blocks without a results file: {sorted(shown - files)}"
    for name in files:
        numbers = json.loads((pages.RESULTS / f"{name}.json").read_text())
        for key in ("command", "commit", "machine"):
            assert numbers.get(key), f"docs/results/{name}.json has no {key}"
        assert re.match(r"[0-9a-f]{7}\b", numbers["commit"]), numbers["commit"]


def _tables_outside_blocks(text: str) -> list[str]:
    for pattern in (pages.BLOCK, re.compile(r"<!-- make-run:begin.*?<!-- make-run:end -->", re.S)):
        text = pattern.sub("", text)
    return [line for line in text.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("page", RESULTS_PAGES)
def test_a_results_page_has_no_table_outside_its_blocks(page):
    assert _tables_outside_blocks((ROOT / page).read_text(encoding="utf-8")) == []


def test_the_readme_figures_table_is_a_rendered_block():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = readme.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rest = readme.replace(commands, "")
    assert _tables_outside_blocks(rest) == []
    assert "<!-- make-run:begin" in readme


def test_a_changed_figure_is_caught():
    page = ROOT / "docs" / "smollm2-recipes.md"
    text = page.read_text(encoding="utf-8")
    numbers = json.loads((pages.RESULTS / "smollm2-135m-ladder.json").read_text())
    figure = f"| {numbers['explanations']['all']['acceptance']} % |"
    assert figure in text
    assert pages.rewrite(text.replace(figure, "| 99.9 % |", 1)) == text


def test_the_run_reference_is_the_seeds_spread():
    """expo/toy/reference.yaml (what `make run` compares itself with) holds the seeds file's range."""
    seeds = json.loads((pages.RESULTS / "embedded-default-seeds.json").read_text())
    level = str(seeds["level"])
    reference = yaml.safe_load((ROOT / "expo" / "toy" / "reference.yaml").read_text())
    assert reference["level"] == level
    for model, (lo, hi) in reference["models"].items():
        values = [s["results"][model][level][0] for s in seeds["seeds"].values()]
        assert [lo, hi] == [min(values), max(values)], model


def test_toy_sweep_adds_a_seed_that_renders(tmp_path, monkeypatch):
    sweep = load_bench("toy_sweep")
    levels = {str(lv): (50.0 - 10 * lv, 60.0 - 10 * lv) for lv in range(1, 6)}
    report = {"seed": 3, "results": {"base": levels, "grpo": levels, "exp-grpo": levels}, "threads": 1, "k": 8,
              "questions_per_level": 80, "acceptance": {str(lv): 90.0 for lv in range(1, 6)},
              "truncated_percent": {"base": 0.0, "grpo": 1.5, "exp-grpo": 0.0}}
    out = tmp_path / "seeds.json"
    monkeypatch.setattr(sys, "argv", ["toy_sweep.py", "--seed", "3", "--out", "/tmp/x", "--json", str(out)])
    sweep.add_to_results(out, report)
    numbers = json.loads(out.read_text())
    text = "\n".join(pages.embedded_seeds(numbers))
    assert "| 3 | 0.0 / 10.0 | 0.0 / 10.0 | 0.0 / 10.0 | +0.0 | +0.0 | 1.5 % |" in text
    assert "bench/toy_sweep.py --seed 3" in text and numbers["commit"] in text
