"""expo.report: the HTML page renders, stands alone, escapes user text, has the expected table rows; the
Markdown twin references PNGs that exist; missing inputs drop their sections."""

from __future__ import annotations

import base64
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from expo.config import EvaluateConfig
from expo.evaluate import build_metrics
from expo.metrics import QuestionResult
from expo.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script>"


class PageParser(HTMLParser):
    """Collects <img> sources and each table's body rows (by table id)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.scripts = 0
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self._table = attrs.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _metrics(name: str, counts: list[int]) -> dict:
    """An evaluation of 4 questions (levels 1, 1, 2, 3), n = 4 samples each, c = counts."""
    levels = [1, 1, 2, 3]
    results = [QuestionResult(f"q{i}", lv, 4, c, greedy=c >= 2, tokens=[12] * 4, truncated=0)
               for i, (lv, c) in enumerate(zip(levels, counts))]
    samples = [{"reward": 1.0}] * 16
    return build_metrics(results, samples, name, f"models:/{name}/1", EvaluateConfig(samples=4))


def _training(steps: int = 5) -> dict[str, list[dict]]:
    arms = {}
    for arm, scale in (("grpo", 0.0), ("exp-grpo", 1.0)):
        # the trainer's keys (expo/train/grpo.py, metrics.py); time/step is the whole step
        arms[arm] = [{"step": s + 1, "reward": 0.1 * s, "frac_reward_zero_std": 1 - 0.1 * s,
                      "expo_nll": scale * (2.0 - 0.1 * s), "acceptance": 0.5 + 0.05 * s, "loss": 0.1,
                      "time/generation": 0.2, "time/backward": 0.1, "time/step": 0.4} for s in range(steps)]
    return arms


def _rates(questions, samples, passed, with_expl, solve_samples, solved):
    """One level of expo.explain's stats.json."""
    return {"questions": questions, "samples": samples, "passed": passed, "kept": passed,
            "acceptance_rate": passed / samples, "questions_with_explanation": with_expl,
            "coverage": with_expl / questions, "solve_samples": solve_samples, "solved": solved,
            "solve_rate": solved / solve_samples if solve_samples else None}


EXPLAIN_STATS = {**_rates(6, 24, 12, 5, 24, 6), "reject_reasons": {"wrong_answer": 9, "truncated": 3},
                 "by_level": {"1": _rates(2, 8, 8, 2, 8, 5),
                              "2": {**_rates(2, 8, 3, 2, 8, 1), "reject_reasons": {"wrong_answer": 5}},
                              "3": {**_rates(2, 8, 1, 1, 8, 0),
                                    "reject_reasons": {"wrong_answer": 4, "truncated": 3}}}}
IN_DIST = {"overall": {"explanation": {"count": 3, "mean": -1.2, "lo": -1.5, "hi": -0.9},
                       "expert": {"count": 2, "mean": -3.4, "lo": -4.0, "hi": -2.8}},
           "by_level": {"1": {"explanation": {"count": 3, "mean": -1.2, "lo": -1.5, "hi": -0.9},
                              "expert": {"count": 2, "mean": -3.4, "lo": -4.0, "hi": -2.8}}}}


def _check_images(page: PageParser, out: Path) -> None:
    assert page.images
    for src in page.images:
        if src.startswith("data:"):
            assert src.startswith("data:image/png;base64,")
            data = base64.b64decode(src.split(",", 1)[1], validate=True)  # raises on bad base64
            assert data.startswith(PNG_SIGNATURE)
        else:
            assert (out / src).is_file(), src


def test_full_report_renders_with_expected_tables(tmp_path):
    evaluations = {"base": _metrics("base", [2, 1, 0, 0]), EVIL: _metrics(EVIL, [4, 3, 2, 1])}
    path = write_report(tmp_path, evaluations, training=_training(), explanation_stats=EXPLAIN_STATS,
                        in_distribution=IN_DIST, title=f"Run {EVIL}")
    assert path == tmp_path / "report.html"
    text = path.read_text()
    page = PageParser()
    page.feed(text)
    assert page.scripts == 0 and EVIL not in text  # user text is escaped everywhere
    _check_images(page, tmp_path)

    rows = page.tables
    assert set(rows) == {"accuracy", "deltas", "pass_at_k", "training", "timing", "explanations",
                         "reject_reasons", "in_distribution", "newly_solved", "cost"}
    # most frequent reason first; levels without a reason count 0
    assert rows["reject_reasons"] == [["wrong_answer", "9", "0", "5", "4"], ["truncated", "3", "0", "0", "3"]]
    assert [(r[0], r[1]) for r in rows["accuracy"]] == [
        (name, lv) for name in ("base", EVIL) for lv in ("all", "1", "2", "3")]
    # base level 1: pass@1 = (2/4 + 1/4)/2 = 37.5%; greedy 1 of 2 (c >= 2 on q0 only)
    base_l1 = rows["accuracy"][1]
    assert base_l1[2] == "2" and base_l1[3].startswith("37.5% [") and base_l1[6].startswith("50.0% [")
    # deltas vs base on pass@1: q0 +2/4, q1 +2/4, q2 +2/4, q3 +1/4 -> all +43.75 pts; level 3 +25 pts
    assert [(r[0], r[1]) for r in rows["deltas"]] == [(EVIL, lv) for lv in ("all", "1", "2", "3")]
    assert rows["deltas"][0][3].startswith("+43.8 pts") and rows["deltas"][3][3].startswith("+25.0 pts")
    assert [r[0] for r in rows["pass_at_k"]] == ["base", EVIL]
    # base, c = 2, 1, 0, 0 of 4. pass@1: (1/2 + 1/4)/4; pass@2: (1 - C(2,2)/C(4,2) = 5/6, 1 - C(3,2)/C(4,2)
    # = 1/2)/4 = 33.3%; pass@3: (1, 1 - C(3,3)/C(4,3) = 3/4)/4 = 43.75%; pass@4: (1, 1)/4
    assert rows["pass_at_k"][0][1:] == ["18.8%", "33.3%", "43.8%", "50.0%"]
    assert [r[0] for r in rows["training"]] == ["grpo", "exp-grpo"]
    assert rows["training"][1][2:] == ["0.4", "1.6", "0.6", "0.7"]  # last step: reward, nll, zero-std, acc
    # phases 0.2 + 0.1 of a 0.4 s step: "other" is 0.1 s; generation is half the step
    assert [(r[0], r[1], r[2]) for r in rows["timing"]] == [
        (arm, ph, sec) for arm in ("grpo", "exp-grpo")
        for ph, sec in (("backward", "0.100"), ("generation", "0.200"), ("other", "0.100"))]
    assert {r[3] for r in rows["timing"] if r[1] == "generation"} == {"50.0%"}
    assert [r[0] for r in rows["explanations"]] == ["1", "2", "3", "all"]
    assert rows["explanations"][0][1:] == ["2", "8", "100.0%", "100.0%", "62.5%"]
    assert rows["explanations"][3][1:] == ["6", "24", "50.0%", "83.3%", "25.0%"]
    assert [r[0] for r in rows["in_distribution"]] == ["all", "1"]
    assert rows["in_distribution"][0][3] == "+2.200"

    md = (tmp_path / "report.md").read_text()
    assert EVIL not in md
    for png in ("accuracy_by_level.png", "pass_at_k.png", "training_curves.png", "step_time.png",
                "explanations.png"):
        assert f"]({png})" in md and (tmp_path / png).read_bytes().startswith(PNG_SIGNATURE)
    # every table row of the HTML is a Markdown row too (header + separator + body per table)
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table_lines) == sum(len(r) + 2 for r in rows.values())


def test_missing_sections_are_omitted(tmp_path):
    write_report(tmp_path, {"base": _metrics("base", [1, 1, 1, 1])}, title="one model")
    page = PageParser()
    page.feed((tmp_path / "report.html").read_text())
    assert set(page.tables) == {"accuracy", "pass_at_k"}  # one model: no deltas
    _check_images(page, tmp_path)
    assert not (tmp_path / "training_curves.png").exists()
    assert "Training" not in (tmp_path / "report.md").read_text()


def test_report_with_nothing_to_show(tmp_path):
    path = write_report(tmp_path, None, title="empty")
    assert "Nothing to report" in path.read_text() and (tmp_path / "report.md").is_file()


def test_training_without_known_keys_is_omitted(tmp_path):
    write_report(tmp_path, None, training={"grpo": [{"step": 1, "loss": 0.3}]}, title="t")
    page = PageParser()
    page.feed((tmp_path / "report.html").read_text())
    assert page.tables == {}


def test_dynamic_sampling_counts_per_step(tmp_path):
    """The group counts of train.filter_groups, step by step: shares of the generated groups turned
    back into counts (4 groups: 1/4 correct, 1/2 wrong, 1/4 mixed -> 1, 2, 1), and an arm that ran
    without the filter has no rows."""
    steps = [{"step": 1, "filter/groups": 4.0, "filter/share_correct": 0.25, "filter/share_wrong": 0.5,
              "filter/share_mixed": 0.25, "filter/dropped": 1.0, "filter/refill_rounds": 0.0},
             {"step": 2, "filter/groups": 8.0, "filter/share_correct": 0.5, "filter/share_wrong": 0.375,
              "filter/share_mixed": 0.125, "filter/dropped": 4.0, "filter/refill_rounds": 1.0}]
    write_report(tmp_path, None, training={"exp-grpo": steps, "grpo": [{"step": 1, "loss": 0.1}]}, title="t")
    page = PageParser()
    page.feed((tmp_path / "report.html").read_text())
    assert page.tables["group_filter"] == [  # body rows (columns: arm, step, groups generated,
        # all-correct, all-wrong, mixed, dropped, refill rounds)
        ["exp-grpo", "1", "4", "1", "2", "1", "1", "0"],
        ["exp-grpo", "2", "8", "4", "3", "1", "4", "1"],
    ]
    md = (tmp_path / "report.md").read_text()
    assert "Dynamic sampling, per step" in md
    assert "| arm | step | groups generated | all-correct | all-wrong | mixed | dropped | refill rounds |" in md


def test_dynamic_sampling_of_a_long_run_is_summed_over_windows(tmp_path):
    """25 steps -> windows of 3 steps (at most 10 rows): rows 1-3, 4-6, ..., 22-24, 25; each step made
    4 groups, 1 correct (dropped) and 3 wrong, with step k refilling k % 2 times."""
    steps = [{"step": k, "filter/groups": 4.0, "filter/share_correct": 0.25, "filter/share_wrong": 0.75,
              "filter/share_mixed": 0.0, "filter/dropped": 1.0, "filter/refill_rounds": float(k % 2)}
             for k in range(1, 26)]
    write_report(tmp_path, None, training={"exp-grpo": steps}, title="t")
    page = PageParser()
    page.feed((tmp_path / "report.html").read_text())
    rows = page.tables["group_filter"]
    assert len(rows) == 9
    assert rows[0] == ["exp-grpo", "1-3", "12", "3", "9", "0", "3", "2"]  # refills at steps 1 and 3
    assert rows[1] == ["exp-grpo", "4-6", "12", "3", "9", "0", "3", "1"]
    assert rows[-1] == ["exp-grpo", "25", "4", "1", "3", "0", "1", "1"]
    assert "summed over windows of steps" in (tmp_path / "report.md").read_text()


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium")
def test_report_renders_in_headless_chromium(tmp_path):
    path = write_report(tmp_path / "r", {"base": _metrics("base", [2, 1, 0, 0])}, training=_training(),
                        title="screenshot")
    shot = tmp_path / "shot.png"
    subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1200,2400", path.as_uri()],
                   check=True, timeout=120, capture_output=True)
    assert shot.read_bytes().startswith(PNG_SIGNATURE) and shot.stat().st_size > 10_000


HEADLINE = {"best_arm": "exp-grpo", "best_value": 0.208, "base_value": 0.002, "register": True,
            "metric": "hardest_level_pass@1", "margin": 0.0, "mlflow_run": "abc123", "experiment": "expo",
            "tracking_uri": "sqlite:///runs/mlflow.db"}


def test_the_report_leads_with_its_answer_and_the_register_step_completes_it(tmp_path):
    from expo.report import REGISTRATION_PENDING, complete_headline

    evaluations = {"base": _metrics("base", [2, 1, 0, 0]), "exp-grpo": _metrics("exp-grpo", [4, 3, 2, 1])}
    write_report(tmp_path, evaluations, training=_training(), headline=HEADLINE)
    md = (tmp_path / "report.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Headline"  # before any table
    head = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    assert "Best arm: exp-grpo, hardest_level_pass@1 20.8% vs base 0.2% (+20.6 points)." in head
    assert "Gate: passed" in head and "MLflow: parent run abc123 in experiment 'expo'" in head
    assert REGISTRATION_PENDING in head
    changed = complete_headline(tmp_path, "models:/expo-tiny/3 (aliases: candidate)")
    assert sorted(p.name for p in changed) == ["report.html", "report.md"]
    for name in ("report.md", "report.html"):
        text = (tmp_path / name).read_text()
        assert REGISTRATION_PENDING not in text and "Registered model: models:/expo-tiny/3" in text


def test_a_gate_that_fails_says_nothing_is_registered(tmp_path):
    from expo.report import REGISTRATION_PENDING

    write_report(tmp_path, {"base": _metrics("base", [2, 1, 0, 0])},
                 headline={**HEADLINE, "register": False, "best_value": 0.0})
    md = (tmp_path / "report.md").read_text()
    assert "Gate: not passed" in md and "nothing is registered" in md and REGISTRATION_PENDING not in md


def test_the_solve_rate_column_is_shown_only_when_it_was_measured(tmp_path):
    unmeasured = {**EXPLAIN_STATS, "solve_rate": None,
                  "by_level": {lv: {**s, "solve_rate": None, "solve_samples": 0}
                               for lv, s in EXPLAIN_STATS["by_level"].items()}}
    write_report(tmp_path, {"base": _metrics("base", [1, 1, 1, 1])}, explanation_stats=unmeasured)
    page = PageParser()
    page.feed((tmp_path / "report.html").read_text())
    assert all(len(row) == 5 for row in page.tables["explanations"])  # no all-"-" solve-rate column
    assert "explain.solve_rate_samples is 0" in (tmp_path / "report.md").read_text()


def test_every_plot_gives_an_arm_one_colour_and_the_curves_are_a_grid(tmp_path):
    from PIL import Image as PILImage

    from expo.report import model_colour

    assert len({model_colour(m) for m in ("base", "grpo", "exp-grpo", "grpo-sft", "exp-dpo")}) == 5
    assert model_colour("exp-grpo") == model_colour("exp-grpo")
    # an arm without one of the series must not shift the others' colours: plotted by name, not by turn
    training = _training()
    for row in training["grpo"]:
        row.pop("expo_nll")
    write_report(tmp_path, {"base": _metrics("base", [1, 1, 1, 1])}, training=training)
    width, height = PILImage.open(tmp_path / "training_curves.png").size
    assert width <= 1200 and width / height < 3  # rows of at most three panels, not a strip


def test_an_in_distribution_check_against_the_premise_is_explained(tmp_path):
    against = {"overall": {"explanation": {"count": 4, "mean": -0.72, "lo": -0.8, "hi": -0.6},
                           "expert": {"count": 4, "mean": -0.46, "lo": -0.5, "hi": -0.4}},
               "by_level": {}, "same_text": {"explanations": 4, "equal_to_expert": 2}}
    write_report(tmp_path, {"base": _metrics("base", [1, 1, 1, 1])}, in_distribution=against,
                 in_distribution_note="A task's own reason.")
    md = (tmp_path / "report.md").read_text()
    assert "score below expert solutions (-0.260 per token)" in md
    assert "2 of 4 compared explanations are the reference solution word for word" in md
    assert "A task's own reason." in md
    write_report(tmp_path, {"base": _metrics("base", [1, 1, 1, 1])}, in_distribution=IN_DIST)  # premise holds
    assert "score below" not in (tmp_path / "report.md").read_text()

