"""report.md stands alone in the run folder: `expo run` copies the images it links beside it, so every
relative link resolves there; both reports say where each section's numbers come from. (The real run
folder of a kfp.local run is checked in tests/test_local_run.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from expo.report import SOURCES, image_links, write_report
from pipelines.local_run import copy_report_images
from tests.test_report import EXPLAIN_STATS, IN_DIST, _metrics, _training


def assert_links_resolve(report_md: Path) -> list[str]:
    """Every image link of report_md names a PNG file beside it; returns the links."""
    links = image_links(report_md.read_text(encoding="utf-8"))
    assert links
    for name in links:
        target = report_md.parent / name
        assert target.is_file() and target.read_bytes().startswith(b"\x89PNG"), name
    return links


@pytest.mark.parametrize("markdown, links", [
    ("![a](x.png)\n\ntext ![b c](sub/y.png) and [not an image](z.png)", ["x.png", "sub/y.png"]),
    ("![remote](https://example.com/a.png) ![abs](/etc/a.png) ![data](data:image/png;base64,AAAA)", []),
])
def test_image_links(markdown, links):
    assert image_links(markdown) == links


def test_report_md_copied_into_another_folder_keeps_its_images(tmp_path):
    """What `expo run` does: the report step writes into its own output folder, the run folder gets
    report.md, and the images come along."""
    step_out, run_folder = tmp_path / "kfp" / "report" / "summary", tmp_path / "run"
    evaluations = {"base": _metrics("base", [2, 1, 0, 0]), "exp-grpo": _metrics("exp-grpo", [4, 3, 2, 1])}
    write_report(step_out, evaluations,
                 training=_training(), explanation_stats=EXPLAIN_STATS, in_distribution=IN_DIST, title="t")
    run_folder.mkdir()
    (run_folder / "report.md").write_bytes((step_out / "report.md").read_bytes())
    with pytest.raises(AssertionError):
        assert_links_resolve(run_folder / "report.md")  # the Markdown alone: its images are elsewhere
    copied = copy_report_images(run_folder / "report.md", tmp_path / "nowhere", step_out)
    assert copied == assert_links_resolve(run_folder / "report.md")
    assert copied == ["accuracy_by_level.png", "pass_at_k.png", "training_curves.png", "step_time.png",
                      "explanations.png"]
    assert copy_report_images(run_folder / "report.md", run_folder) == []  # already there: nothing to do


def test_both_reports_say_where_each_number_comes_from(tmp_path):
    write_report(tmp_path, {"base": _metrics("base", [2, 1, 0, 0]), "grpo": _metrics("grpo", [2, 2, 1, 0])},
                 training=_training(), explanation_stats=EXPLAIN_STATS, in_distribution=IN_DIST, title="t")
    html, md = (tmp_path / "report.html").read_text(), (tmp_path / "report.md").read_text()
    for section, text in SOURCES.items():
        assert text in md, section
        assert text.replace("'", "&#x27;") in html, section  # escaped as all user-visible text
    # each note sits right under its section's heading (or its explanation), before the table
    lines = [line for line in md.splitlines() if line]
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert any(line.startswith("Source: each evaluate step's metrics.json") for line in lines[:first_table])
